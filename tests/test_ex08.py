"""utils.ex08: the checks run the learner's loop under the guard, accept mended loops and explain the rest."""

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks

from utils import ex08

loss_fn = torch.nn.MSELoss()
K = ex08.GRADIENT_ACCUMULATION_STEPS


# -- right answers ---------------------------------------------------------------------------------
def zero_first(model, optimizer, batches):
    for X, y in batches:
        optimizer.zero_grad()
        loss_fn(model(X), y).backward()
        optimizer.step()


def zero_after_step_in_place(model, optimizer, batches):
    for X, y in batches:
        ((model(X) - y) ** 2).mean().backward()  # the same loss, written out
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)


def grad_none_by_hand(model, optimizer, batches):
    for X, y in batches:
        for p in model.parameters():
            p.grad = None
        loss_fn(model(X), y).backward()
        optimizer.step()


def accumulate(model, optimizer, batches):
    for i, (X, y) in enumerate(batches):
        (loss_fn(model(X), y) / K).backward()
        if (i + 1) % K == 0:
            optimizer.step()
            optimizer.zero_grad()


def accumulate_zero_at_window_start(model, optimizer, batches):
    for i, (X, y) in enumerate(batches):
        if i % K == 0:
            optimizer.zero_grad()
        (loss_fn(model(X), y) / K).backward()
        if (i + 1) % K == 0:
            optimizer.step()


# -- wrong answers ---------------------------------------------------------------------------------
def forgot_zero_grad(model, optimizer, batches):  # the lesson's exercise 1, as given
    for X, y in batches:
        loss_fn(model(X), y).backward()
        optimizer.step()


def zero_after_backward(model, optimizer, batches):  # the lesson's exercise 2, as given
    for X, y in batches:
        loss_fn(model(X), y).backward()
        optimizer.zero_grad()
        optimizer.step()


def zero_in_window(model, optimizer, batches):  # the lesson's exercise 3, as given
    for i, (X, y) in enumerate(batches):
        optimizer.zero_grad()
        (loss_fn(model(X), y) / K).backward()
        if (i + 1) % K == 0:
            optimizer.step()


def accumulate_without_dividing(model, optimizer, batches):
    for i, (X, y) in enumerate(batches):
        loss_fn(model(X), y).backward()
        if (i + 1) % K == 0:
            optimizer.step()
            optimizer.zero_grad()


def placeholder(model, optimizer, batches):
    ...


def never_backward(model, optimizer, batches):  # silent, but it learns nothing
    for _ in batches:
        optimizer.zero_grad()
        optimizer.step()


def own_optimizer(model, optimizer, batches):  # steps an optimizer the check does not watch
    mine = torch.optim.SGD(model.parameters(), lr=0.1)
    zero_first(model, mine, batches)


def half_the_batches(model, optimizer, batches):
    zero_first(model, optimizer, batches[::2])


def other_loss(model, optimizer, batches):
    for X, y in batches:
        optimizer.zero_grad()
        torch.nn.functional.l1_loss(model(X), y).backward()
        optimizer.step()


def test_right_answers_pass(capsys):
    for train in (zero_first, zero_after_step_in_place, grad_none_by_hand):
        assert ex08.check_no_stale_gradients(train)
        assert ex08.check_no_discarded_gradients(train)
    for train in (accumulate, accumulate_zero_at_window_start):
        assert ex08.check_gradient_accumulation(train)
    out = capsys.readouterr().out
    assert out.count("✔ Right:") == 8
    assert "the guard stays silent over 8 steps" in out and "silent over 4 steps" in out


def test_the_lessons_buggy_loops_get_the_guards_verdict(capsys):
    assert not ex08.check_no_stale_gradients(forgot_zero_grad)
    out = capsys.readouterr().out
    assert "got:      StaleGradientWarning on 7 step(s); the first: step 2: optimizer.step() is about" in out
    assert "0.weight, 0.bias, 2.weight, 2.bias" in out
    assert "hint:     clear the gradients once per step" in out
    assert not ex08.check_no_discarded_gradients(zero_after_backward)
    out = capsys.readouterr().out
    assert "DiscardedGradientWarning on 8 step(s)" in out
    assert "between loss.backward() and optimizer.step()" in out
    assert not ex08.check_gradient_accumulation(zero_in_window)
    out = capsys.readouterr().out
    assert "DiscardedGradientWarning on 4 step(s)" in out and "inside a gradient-accumulation window" in out
    assert not ex08.check_no_stale_gradients(zero_after_backward)  # a "fix" that moves the bug
    assert "DiscardedGradientWarning" in capsys.readouterr().out


def test_silent_but_wrong_loops_are_caught_by_steps_or_weights(capsys):
    assert not ex08.check_gradient_accumulation(zero_first)
    assert "step once every gradient_accumulation_steps micro-batches" in capsys.readouterr().out
    assert not ex08.check_gradient_accumulation(accumulate_without_dividing)
    assert "divide each micro-batch's loss by gradient_accumulation_steps" in capsys.readouterr().out
    assert not ex08.check_no_stale_gradients(accumulate)
    assert "expected: 8 calls of optimizer.step()\n   got:      4 call(s)" in capsys.readouterr().out
    assert not ex08.check_no_stale_gradients(half_the_batches)
    assert "one optimizer.step() per step" in capsys.readouterr().out
    for train in (never_backward, other_loss):
        assert not ex08.check_no_discarded_gradients(train)
        out = capsys.readouterr().out
        assert "got:      different weights (the guard was silent)" in out
        assert "compute loss_fn(model(X), y) for every (X, y) in batches" in out


def test_placeholders_bad_types_and_errors_get_a_verdict_not_a_traceback(capsys):
    for check in (ex08.check_no_stale_gradients, ex08.check_no_discarded_gradients,
                  ex08.check_gradient_accumulation):
        assert not check(placeholder)
        assert "replace the ... with the mended loop" in capsys.readouterr().out
        assert not check(...)
        assert "replace the ... with your answer" in capsys.readouterr().out
        assert not check(zero_first(*ex08.make_problem()))  # called instead of passed
        assert "pass its name, without calling it" in capsys.readouterr().out
        assert not check(lambda model, optimizer, batches: model(batches))
        assert "it raised" in capsys.readouterr().out
        assert not check(own_optimizer)
        assert "never called optimizer.step() on the optimizer it was given" in capsys.readouterr().out


def test_the_check_leaves_no_hook_and_no_warning_behind(recwarn):
    before = len(_global_optimizer_post_hooks)
    assert not ex08.check_no_stale_gradients(forgot_zero_grad)
    assert not ex08.check_gradient_accumulation(lambda model, optimizer, batches: 1 / 0)
    assert len(recwarn) == 0  # the guard's warnings became the verdict
    assert len(_global_optimizer_post_hooks) == before  # the guard was removed, even after an error


def test_make_problem_is_the_same_every_time():
    (m1, _, b1), (m2, _, b2) = ex08.make_problem(), ex08.make_problem()
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    assert len(b1) == 8 and all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(b1, b2))
    assert b1[0][0].dtype == torch.float64 and b1[0][0].shape == (4, 3)
