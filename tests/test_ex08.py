"""utils.ex08: the checks run the learner's loop under the guard, accept mended loops and explain the rest.

Hints name the mistake, never the mended code; the guard's "Fix:" shows only once the answer
is revealed (third wrong try, or reveal=True). Exercise 3 wants real accumulation: one
backward() per micro-batch, not one big batch or one summed loss per window.
"""

import json
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import _global_optimizer_post_hooks

from utils import ex08
from utils.exercises import REVEAL_AFTER, reset_tries, tries

loss_fn = torch.nn.MSELoss()
K = ex08.GRADIENT_ACCUMULATION_STEPS
CHECKS = (ex08.check_no_stale_gradients, ex08.check_no_discarded_gradients, ex08.check_gradient_accumulation)


@pytest.fixture(autouse=True)
def fresh_tries():
    reset_tries()


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


def one_big_batch(model, optimizer, batches):  # the same gradient, without accumulating
    for i in range(0, len(batches), K):
        X = torch.cat([X for X, _ in batches[i:i + K]])
        y = torch.cat([y for _, y in batches[i:i + K]])
        optimizer.zero_grad()
        loss_fn(model(X), y).backward()
        optimizer.step()


def one_summed_loss(model, optimizer, batches):  # one graph for the whole window
    for i in range(0, len(batches), K):
        optimizer.zero_grad()
        sum(loss_fn(model(X), y) / K for X, y in batches[i:i + K]).backward()
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
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("✔ Right:") == 8
    assert "the guard stays silent over 8 steps" in out and "silent over 4 steps" in out


def test_the_lessons_buggy_loops_get_what_the_guard_saw_and_a_question(capsys):
    assert not ex08.check_no_stale_gradients(forgot_zero_grad)
    out = " ".join(capsys.readouterr().out.split())
    assert "got: StaleGradientWarning on 7 step(s); the first: step 2: optimizer.step() is about" in out
    assert "0.weight, 0.bias, 2.weight, 2.bias" in out
    assert "what in your loop empties .grad between one step and the next?" in out
    assert not ex08.check_no_discarded_gradients(zero_after_backward)
    out = " ".join(capsys.readouterr().out.split())
    assert "DiscardedGradientWarning on 8 step(s)" in out
    assert "what runs between loss.backward() and the optimizer.step() that should use it?" in out
    assert not ex08.check_gradient_accumulation(zero_in_window)
    out = " ".join(capsys.readouterr().out.split())
    assert "DiscardedGradientWarning on 4 step(s)" in out and "every micro-batch of its window" in out
    assert not ex08.check_no_stale_gradients(zero_after_backward)  # a "fix" that moves the bug
    assert "DiscardedGradientWarning" in capsys.readouterr().out


def test_hints_climb_and_the_fix_shows_only_when_revealed(capsys):
    outs = []
    for _ in range(3):
        assert not ex08.check_no_stale_gradients(forgot_zero_grad)
        outs.append(" ".join(capsys.readouterr().out.split()))
    for out in outs[:2]:  # no fix, no placement of zero_grad, before the third try
        assert "Fix" not in out and "expected:" not in out and "right after optimizer.step()" not in out
        assert "check_no_stale_gradients(train, reveal=True)" in out
    assert "the guard's diagnosis: Probably forgotten: optimizer.zero_grad()." in outs[1]
    assert "expected: the guard's fix: call optimizer.zero_grad() once per step" in outs[2]
    assert not ex08.check_no_discarded_gradients(zero_after_backward, reveal=True)
    assert "expected: the guard's fix: clear gradients right after optimizer.step()" in " ".join(
        capsys.readouterr().out.split())


@pytest.mark.parametrize("train", [one_big_batch, one_summed_loss])
def test_accumulation_means_one_backward_per_micro_batch(train, capsys):
    assert not ex08.check_gradient_accumulation(train)
    out = " ".join(capsys.readouterr().out.split())
    assert "wanted: one backward() per micro-batch got: 4 backward() calls for 8 micro-batches" in out
    assert "holds the activations of the whole window in memory at once" in out
    assert ex08.check_no_stale_gradients(zero_first)  # the counter is not in the way of others


def test_silent_but_wrong_loops_are_caught_by_steps_or_weights(capsys):
    assert not ex08.check_gradient_accumulation(zero_first)
    out = " ".join(capsys.readouterr().out.split())
    assert "got: 8 calls of optimizer.step() for 8 micro-batches" in out
    assert "how many windows do the batches make?" in out and "expected" not in out
    assert not ex08.check_gradient_accumulation(accumulate_without_dividing)
    assert "the sum of its window's gradients, not their mean" in capsys.readouterr().out
    assert not ex08.check_no_stale_gradients(accumulate)
    assert "got: 4 calls of optimizer.step() for 8 micro-batches" in " ".join(capsys.readouterr().out.split())
    assert not ex08.check_no_stale_gradients(half_the_batches)
    assert "count the micro-batches your loop goes through" in capsys.readouterr().out
    assert not ex08.check_no_discarded_gradients(never_backward)
    assert "no backward() reached the model's weights" in capsys.readouterr().out
    assert not ex08.check_no_discarded_gradients(other_loss)
    out = " ".join(capsys.readouterr().out.split())
    assert "got: different weights (the guard was silent)" in out
    assert "does your loop compute loss_fn(model(X), y) for every (X, y) of batches, in order?" in out


def test_placeholders_bad_types_and_errors_get_a_verdict_not_a_traceback(capsys):
    for check in CHECKS:
        assert not check(placeholder)  # a function whose body is still ...: a verdict, not a pass
        out = " ".join(capsys.readouterr().out.split())
        assert "replace" in out and "..." in out
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


# -- review: a notebook's variable, clears by hand, a manual update ------------------------------------------
NOTEBOOK_CELL = '''
import torch
loss_fn = torch.nn.MSELoss()
gradient_accumulation_steps = 2

def follows_the_variable(model, optimizer, batches):
    for i, (X, y) in enumerate(batches):
        (loss_fn(model(X), y) / gradient_accumulation_steps).backward()
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()

def writes_the_number(model, optimizer, batches):
    for i, (X, y) in enumerate(batches):
        (loss_fn(model(X), y) / 2).backward()
        if (i + 1) % 2 == 0:
            optimizer.step()
            optimizer.zero_grad()

def divides_by_the_number(model, optimizer, batches):
    for i, (X, y) in enumerate(batches):
        (loss_fn(model(X), y) / 2).backward()
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()

def raises_with_four(model, optimizer, batches):
    if gradient_accumulation_steps == 4:
        raise RuntimeError("only 2")
    follows_the_variable(model, optimizer, batches)
'''


def notebook_namespace() -> dict:
    """Functions defined as in a notebook cell, beside the notebook's gradient_accumulation_steps = 2."""
    scope: dict = {}
    exec(compile(NOTEBOOK_CELL, "<notebook cell>", "exec"), scope)
    return scope


def test_exercise_3_runs_again_with_four_micro_batches_per_window_and_puts_the_variable_back(capsys):
    scope = notebook_namespace()
    assert ex08.check_gradient_accumulation(scope["follows_the_variable"])
    assert "✔ Right:" in capsys.readouterr().out
    assert not ex08.check_gradient_accumulation(scope["writes_the_number"])
    out = " ".join(capsys.readouterr().out.split())
    assert "and with gradient_accumulation_steps = 4" in out and "got: 4 calls" in out
    assert "does your loop use the variable gradient_accumulation_steps, or the number 2?" in out
    assert "✔" not in out  # one verdict, not a pass and then a failure
    assert not ex08.check_gradient_accumulation(scope["divides_by_the_number"])
    assert "What is each loss divided by, the variable or the number 2?" in " ".join(capsys.readouterr().out.split())
    assert not ex08.check_gradient_accumulation(scope["raises_with_four"])
    assert "raised" in capsys.readouterr().out
    assert scope["gradient_accumulation_steps"] == 2  # put back, even after an error


def zero_in_place_after_backward(model, optimizer, batches):  # looks like masking: the guard lets it pass
    for X, y in batches:
        loss_fn(model(X), y).backward()
        for p in model.parameters():
            p.grad.zero_()
        optimizer.step()


def first_layer_none_after_backward(model, optimizer, batches):  # looks like freezing: the guard lets it pass
    for X, y in batches:
        optimizer.zero_grad()
        loss_fn(model(X), y).backward()
        for p in model[0].parameters():
            p.grad = None
        optimizer.step()


def update_by_hand(model, optimizer, batches):
    for X, y in batches:
        loss_fn(model(X), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
                p.grad = None


def test_clears_by_hand_the_guard_lets_pass_are_named_by_the_weights_that_never_moved(capsys):
    assert not ex08.check_no_discarded_gradients(zero_in_place_after_backward)
    out = " ".join(capsys.readouterr().out.split())
    assert "none of the weights moved, although backward() filled their .grad and the steps ran" in out
    assert not ex08.check_no_discarded_gradients(first_layer_none_after_backward)
    out = " ".join(capsys.readouterr().out.split())
    assert "0.weight, 0.bias never moved" in out and "what empties .grad" in out
    for out in (out,):
        assert "zero_grad()" not in out.split("hint:")[1]  # a question, not the mended code


def test_a_loop_that_never_steps_the_optimizer_is_told_so_first(capsys):
    assert not ex08.check_no_stale_gradients(update_by_hand)
    out = " ".join(capsys.readouterr().out.split())
    assert "got: no optimizer.step() on the optimizer it was given" in out
    assert "DiscardedGradientWarning" not in out


# -- review: the cells as handed out, one forward pass per micro-batch ------------------------------------
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "08-check-your-loop.ipynb"


def exercise_cells() -> list[str]:
    """The exercise cells of notebook 08 as handed out: a buggy loop to mend, then its check."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code" and "ex08.check_" in "".join(c["source"])]


def lesson_scope() -> dict:
    """What the lesson defines before its exercises: ex08, loss_fn, gradient_accumulation_steps."""
    return {"ex08": ex08, "torch": torch, "loss_fn": torch.nn.MSELoss(), "gradient_accumulation_steps": K}


def test_the_exercise_cells_as_handed_out_spend_no_try_and_reveal_nothing(capsys):
    """Run All on a fresh copy: each untouched buggy loop gets the guard's verdict, and no try is counted."""
    cells = exercise_cells()
    assert len(cells) == 3
    for _ in range(REVEAL_AFTER + 1):  # Run All, again and again: still no try, still nothing revealed
        for source in cells:
            exec(source, lesson_scope())
        out = " ".join(capsys.readouterr().out.split())
        assert out.count("✘ Not yet:") == 3 and "✔" not in out
        assert "expected:" not in out and "Fix" not in out and "right after optimizer.step()" not in out
    assert [tries(check) for check in CHECKS] == [0, 0, 0]
    assert "Stale" in out and "Discarded" in out, "the untouched loop still gets what the guard saw"


def test_a_mended_try_still_counts_after_the_cell_as_handed_out(capsys):
    cells = exercise_cells()
    exec(cells[0], lesson_scope())
    assert tries(ex08.check_no_stale_gradients) == 0
    assert not ex08.check_no_stale_gradients(zero_after_backward)  # mended, wrongly: a try
    assert tries(ex08.check_no_stale_gradients) == 1
    scope = lesson_scope()
    exec(cells[0].replace("        optimizer.step()", "        optimizer.step()\n        print(end='')"), scope)
    assert tries(ex08.check_no_stale_gradients) == 2, "a changed loop is a try, even one still buggy"
    capsys.readouterr()


def test_a_loop_with_other_names_and_a_loop_of_another_exercise_count_as_tries(capsys):
    scope = lesson_scope()
    exec("def renamed(net, opt, data):\n    for features, target in data:\n"
         "        error = loss_fn(net(features), target)\n        error.backward()\n        opt.step()\n", scope)
    assert not ex08.check_no_stale_gradients(scope["renamed"])
    assert tries(ex08.check_no_stale_gradients) == 1, "other names are a change: a try"
    exec(exercise_cells()[0].replace("ex08.check_no_stale_gradients(train)", ""), scope)
    assert not ex08.check_gradient_accumulation(scope["train"])
    assert tries(ex08.check_gradient_accumulation) == 1, "exercise 1's loop is no answer to exercise 3 as handed out"
    capsys.readouterr()


def forward_on_the_window_backward_on_halves(model, optimizer, batches):  # the window's activations at once
    for i in range(0, len(batches), K):
        X = torch.cat([X for X, _ in batches[i:i + K]])
        y = torch.cat([y for _, y in batches[i:i + K]])
        output = model(X)
        rows = len(X) // K
        for j in range(K):
            part = slice(j * rows, (j + 1) * rows)
            (loss_fn(output[part], y[part]) / K).backward(retain_graph=True)
        optimizer.step()
        optimizer.zero_grad()


def micro_batches_split_in_two(model, optimizer, batches):  # two forward passes and backward() per micro-batch
    for i, (X, y) in enumerate(batches):
        for half in (slice(0, len(X) // 2), slice(len(X) // 2, len(X))):
            (loss_fn(model(X[half]), y[half]) / (2 * K)).backward()
        if (i + 1) % K == 0:
            optimizer.step()
            optimizer.zero_grad()


def test_a_forward_pass_on_the_whole_window_is_refused_without_the_solution(capsys):
    assert not ex08.check_gradient_accumulation(forward_on_the_window_backward_on_halves)
    out = " ".join(capsys.readouterr().out.split())
    assert "got: forward passes on up to 8 samples, for micro-batches of 4" in out
    assert "keeps the activations of all 8 samples" in out
    assert "expected:" not in out and "model(X)" not in out.split("hint:")[1]
    assert not ex08.check_gradient_accumulation(forward_on_the_window_backward_on_halves)
    out = " ".join(capsys.readouterr().out.split())
    assert "goes through the model" in out.split("hint:")[1] and "model(X)" not in out.split("hint:")[1]
    assert not ex08.check_gradient_accumulation(micro_batches_split_in_two)
    out = " ".join(capsys.readouterr().out.split())
    assert "got: forward passes on as few as 2 samples" in out and "one forward pass and one backward()" in out


def each_loss_through_backward_twice(model, optimizer, batches):  # the same gradient, two backward() calls
    for i, (X, y) in enumerate(batches):
        loss = loss_fn(model(X), y) / (2 * K)
        loss.backward(retain_graph=True)
        loss.backward()
        if (i + 1) % K == 0:
            optimizer.step()
            optimizer.zero_grad()


def test_more_backward_calls_than_micro_batches_are_refused(capsys):
    assert not ex08.check_gradient_accumulation(each_loss_through_backward_twice)
    out = " ".join(capsys.readouterr().out.split())
    assert "got: 16 backward() calls for 8 micro-batches" in out and "more than once" in out


def test_a_name_the_lesson_defines_but_the_kernel_has_not_run_yet(capsys):
    scope = {"ex08": ex08, "gradient_accumulation_steps": K}  # the cell that defines loss_fn never ran
    exec(exercise_cells()[0], scope)
    out = " ".join(capsys.readouterr().out.split())
    assert "it raised NameError: name 'loss_fn' is not defined" in out
    assert "defined in a cell above that has not run yet" in out


def accumulate_then_evaluate_all(model, optimizer, batches):  # a forward pass on everything, under no_grad
    accumulate(model, optimizer, batches)
    with torch.no_grad():
        loss_fn(model(torch.cat([X for X, _ in batches])), torch.cat([y for _, y in batches]))


def test_a_forward_pass_under_no_grad_keeps_nothing_and_is_not_refused(capsys):
    assert ex08.check_gradient_accumulation(accumulate_then_evaluate_all)
