"""utils.ex05: the checks of notebook 05 accept right answers, enforce the task, and explain wrong
ones without giving the answer away."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from utils import ex05
from utils.exercises import NOT_YET, RIGHT, reset_tries, tries


@pytest.fixture(autouse=True)
def fresh_tries():
    reset_tries()


# Exercise 1


@pytest.mark.parametrize("answer", [12, 12.0, torch.tensor(12), np.int64(12)])
def test_exercise_1_right(answer, capsys):
    assert ex05.check_total_steps(answer)
    assert "is 12" in capsys.readouterr().out


@pytest.mark.parametrize("answer, words", [
    (9, "counts only full windows"),
    (3, "one epoch's full windows"),
    (4, "that is one epoch"),
    (39, "counts micro-batches"),
    (13, "micro-batches of one epoch"),
    (9.375, "not a whole number"),
    (20, "too far from 0"),
])
def test_exercise_1_mistakes_are_named_and_the_answer_is_withheld(answer, words, capsys):
    assert not ex05.check_total_steps(answer)
    out = capsys.readouterr().out
    assert words in " ".join(out.split()) and "12" not in out


@pytest.mark.parametrize("answer, words", [(..., "replace the ..."), ("12", "without quotes"),
                                           ([12], "a number"), (True, "a number")])
def test_exercise_1_placeholder_and_wrong_types(answer, words, capsys):
    assert not ex05.check_total_steps(answer)
    assert words in " ".join(capsys.readouterr().out.split())


def test_exercise_1_counts_with_torch_and_reveals_on_request(capsys):
    assert ex05._steps_of_window_loop(100, 8, 4, 3) == 12
    assert ex05._steps_of_window_loop(96, 8, 4, 1) == 3
    assert ex05._steps_of_window_loop(8, 8, 4, 2) == 2  # one micro-batch per epoch still steps
    assert not ex05.check_total_steps(7, reveal=True)
    assert "expected: 12" in capsys.readouterr().out


# Exercise 2


def window_loop(model, loss_fn, optimizer, micro_batches, gradient_accumulation_steps):  # the solution
    for start in range(0, len(micro_batches), gradient_accumulation_steps):
        window = micro_batches[start:start + gradient_accumulation_steps]
        for X, y in window:
            (loss_fn(model(X), y) / len(window)).backward()
        optimizer.step()
        optimizer.zero_grad()


def enumerate_loop(model, loss_fn, optimizer, micro_batches, k):
    n = len(micro_batches)
    for i, (X, y) in enumerate(micro_batches):
        (loss_fn(model(X), y) / min(k, n - i // k * k)).backward()
        if (i + 1) % k == 0 or i == n - 1:
            optimizer.step()
            optimizer.zero_grad()


def sum_over_samples(model, loss_fn, optimizer, micro_batches, k):
    for start in range(0, len(micro_batches), k):
        window = micro_batches[start:start + k]
        num_samples = sum(len(y) for _, y in window)
        for X, y in window:
            (torch.nn.MSELoss(reduction="sum")(model(X), y) / num_samples).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)


def zeroing_at_window_start(model, loss_fn, optimizer, micro_batches, k):
    for start in range(0, len(micro_batches), k):
        optimizer.zero_grad()
        window = micro_batches[start:start + k]
        for X, y in window:
            (loss_fn(model(X), y) / len(window)).backward()
        optimizer.step()
    optimizer.zero_grad()


def leaky(model, loss_fn, optimizer, micro_batches, k):
    for i, (X, y) in enumerate(micro_batches):
        (loss_fn(model(X), y) / k).backward()
        if (i + 1) % k == 0:
            optimizer.step()
            optimizer.zero_grad()


def last_window_divided_by_k(model, loss_fn, optimizer, micro_batches, k):
    for i, (X, y) in enumerate(micro_batches):
        (loss_fn(model(X), y) / k).backward()
        if (i + 1) % k == 0 or i == len(micro_batches) - 1:
            optimizer.step()
            optimizer.zero_grad()


def concatenated(model, loss_fn, optimizer, micro_batches, k):
    for start in range(0, len(micro_batches), k):
        X, y = (torch.cat(parts) for parts in zip(*micro_batches[start:start + k]))
        loss_fn(model(X), y).backward()
        optimizer.step()
        optimizer.zero_grad()


def summed_into_one_graph(model, loss_fn, optimizer, micro_batches, k):
    for start in range(0, len(micro_batches), k):
        window = micro_batches[start:start + k]
        sum(loss_fn(model(X), y) / len(window) for X, y in window).backward()
        optimizer.step()
        optimizer.zero_grad()


def own_optimizer(model, loss_fn, optimizer, micro_batches, k):
    window_loop(model, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1), micro_batches, k)


def no_division(model, loss_fn, optimizer, micro_batches, k):
    for start in range(0, len(micro_batches), k):
        for X, y in micro_batches[start:start + k]:
            loss_fn(model(X), y).backward()
        optimizer.step()
        optimizer.zero_grad()


def zero_grad_before_every_backward(model, loss_fn, optimizer, micro_batches, k):
    for i, (X, y) in enumerate(micro_batches):
        optimizer.zero_grad()
        (loss_fn(model(X), y) / k).backward()
        if (i + 1) % k == 0 or i == len(micro_batches) - 1:
            optimizer.step()


def step_every_micro_batch(model, loss_fn, optimizer, micro_batches, k):
    for X, y in micro_batches:
        (loss_fn(model(X), y) / k).backward()
        optimizer.step()
        optimizer.zero_grad()


def never_zero_grad(model, loss_fn, optimizer, micro_batches, k):
    for i, (X, y) in enumerate(micro_batches):
        (loss_fn(model(X), y) / k).backward()
        if (i + 1) % k == 0 or i == len(micro_batches) - 1:
            optimizer.step()


def backward_after_the_last_step(model, loss_fn, optimizer, micro_batches, k):
    window_loop(model, loss_fn, optimizer, micro_batches, k)
    loss_fn(model(micro_batches[0][0]), micro_batches[0][1]).backward()


def placeholder(model, loss_fn, optimizer, micro_batches, gradient_accumulation_steps):
    ...


@pytest.mark.parametrize("solution", [window_loop, enumerate_loop, sum_over_samples, zeroing_at_window_start])
def test_exercise_2_right(solution, capsys):
    assert ex05.check_accumulation_loop(solution)
    assert "windows of 4, 4 and 2" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, words", [
    (leaky, "never reaches optimizer.step()"),
    (last_window_divided_by_k, "divided as if it were full"),
    (concatenated, "its own forward pass"),
    (summed_into_one_graph, "3 backward() calls for 10 micro-batches"),
    (own_optimizer, "not through the optimizer you were given"),
    (no_division, "must be normalised"),
    (zero_grad_before_every_backward, "only the last micro-batch"),
    (step_every_micro_batch, "step() runs after every micro-batch"),
    (never_zero_grad, "leaks into the next"),
    (backward_after_the_last_step, "left in .grad after the last step"),
    (placeholder, "write the body of placeholder"),
    (lambda model, loss_fn, optimizer, micro_batches, k: [X for X, _ in micro_batches], "nothing was trained"),
])
def test_exercise_2_mistakes_are_named(mistake, words, capsys):
    assert not ex05.check_accumulation_loop(mistake)
    assert words in " ".join(capsys.readouterr().out.split())


def test_exercise_2_other_wrong_answers_get_a_direction_not_the_solution(capsys):
    def half_the_loss(model, loss_fn, optimizer, micro_batches, k):
        window_loop(model, lambda out, y: loss_fn(out, y) / 2, optimizer, micro_batches, k)

    assert not ex05.check_accumulation_loop(half_the_loss)
    out = capsys.readouterr().out
    assert "compare each step" in out and "len(window)" not in out and "expected:" not in out


@pytest.mark.parametrize("answer, words", [
    (..., "replace the ..."),
    (3, "pass its name"),
    (int, "the class int"),
    (lambda *args: 1 / 0, "it raised ZeroDivisionError"),
    (lambda model: model, "it raised TypeError"),
])
def test_exercise_2_bad_answers_get_a_verdict_not_a_traceback(answer, words, capsys):
    assert not ex05.check_accumulation_loop(answer)
    assert words in " ".join(capsys.readouterr().out.split())


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    ex05.check_accumulation_loop(window_loop)
    assert torch.equal(torch.rand(3), expected)


def one_graph_through_autograd_grad(model, loss_fn, optimizer, micro_batches, k):
    """Forbidden: one graph per window, its gradient set by hand (no backward() at all)."""
    for start in range(0, len(micro_batches), k):
        window = micro_batches[start:start + k]
        loss = sum(loss_fn(model(X), y) / len(window) for X, y in window)
        for param, grad in zip(model.parameters(), torch.autograd.grad(loss, list(model.parameters()))):
            param.grad = grad
        optimizer.step()
        optimizer.zero_grad()


def hard_coded_sizes(model, loss_fn, optimizer, micro_batches, gradient_accumulation_steps):
    """Right for 10 micro-batches and k = 4 only: the numbers of the exercise, not its arguments."""
    for start in range(0, 10, 4):
        window = micro_batches[start:start + 4]
        for X, y in window:
            (loss_fn(model(X), y) / len(window)).backward()
        optimizer.step()
        optimizer.zero_grad()


def test_exercise_2_a_window_without_backward_is_refused(capsys):
    assert not ex05.check_accumulation_loop(one_graph_through_autograd_grad)
    out = " ".join(capsys.readouterr().out.split())
    assert "no backward() for 10 micro-batches" in out and "Right" not in out


def test_exercise_2_a_loop_must_use_the_sizes_it_is_given(capsys):
    assert ex05._steps_of_window_loop(7 * ex05.SIZE, ex05.SIZE, 3, 1) == 3  # windows of 3, 3 and 1
    assert not ex05.check_accumulation_loop(hard_coded_sizes)
    out = " ".join(capsys.readouterr().out.split())
    assert "use the arguments" in out and "expected:" not in out
    for solution in (window_loop, enumerate_loop):
        assert ex05.check_accumulation_loop(solution)
    assert "of 3, 3 and 1" in " ".join(capsys.readouterr().out.split())


# Review: what a learner really writes


def split_micro_batches(model, loss_fn, optimizer, micro_batches, k):
    """Right numbers, but each micro-batch cut in two: two backward() calls where the task says one."""
    for start in range(0, len(micro_batches), k):
        window = micro_batches[start:start + k]
        for X, y in window:
            for X_half, y_half in zip(X.split(len(X) // 2), y.split(len(y) // 2)):
                (loss_fn(model(X_half), y_half) / (2 * len(window))).backward()
        optimizer.step()
        optimizer.zero_grad()


def backward_twice(model, loss_fn, optimizer, micro_batches, k):
    """Right numbers (half the loss, twice), but two backward() calls per micro-batch."""
    for start in range(0, len(micro_batches), k):
        window = micro_batches[start:start + k]
        for X, y in window:
            loss = loss_fn(model(X), y) / (2 * len(window))
            loss.backward(retain_graph=True)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def step_when_a_window_starts(model, loss_fn, optimizer, micro_batches, k):
    for i, (X, y) in enumerate(micro_batches):
        (loss_fn(model(X), y) / k).backward()
        if i % k == 0:
            optimizer.step()
            optimizer.zero_grad()


def zero_grad_before_step(model, loss_fn, optimizer, micro_batches, k):
    for start in range(0, len(micro_batches), k):
        window = micro_batches[start:start + k]
        for X, y in window:
            (loss_fn(model(X), y) / len(window)).backward()
        optimizer.zero_grad()
        optimizer.step()


def hard_coded_window(model, loss_fn, optimizer, micro_batches, gradient_accumulation_steps):
    for start in range(0, len(micro_batches), 4):
        window = micro_batches[start:start + 4]
        for X, y in window:
            (loss_fn(model(X), y) / len(window)).backward()
        optimizer.step()
        optimizer.zero_grad()


def hard_coded_divisors(model, loss_fn, optimizer, micro_batches, k):
    for i, (X, y) in enumerate(micro_batches):
        (loss_fn(model(X), y) / (2 if i >= 8 else 4)).backward()
        if (i + 1) % k == 0 or i == len(micro_batches) - 1:
            optimizer.step()
            optimizer.zero_grad()


def hard_coded_count(model, loss_fn, optimizer, micro_batches, k):
    for i in range(10):
        X, y = micro_batches[i]
        (loss_fn(model(X), y) / min(k, 10 - i // k * k)).backward()
        if (i + 1) % k == 0 or i == 9:
            optimizer.step()
            optimizer.zero_grad()


def skips_the_last_micro_batch(model, loss_fn, optimizer, micro_batches, k):
    window_loop(model, loss_fn, optimizer, micro_batches[:-1], k)


def lr_scaled_and_left_so(model, loss_fn, optimizer, micro_batches, k):
    """Right numbers with SGD, but the optimizer's lr is left changed for whoever uses it next."""
    lr = optimizer.param_groups[0]["lr"]
    for start in range(0, len(micro_batches), k):
        window = micro_batches[start:start + k]
        for X, y in window:
            loss_fn(model(X), y).backward()
        optimizer.param_groups[0]["lr"] = lr / len(window)
        optimizer.step()
        optimizer.zero_grad()


def gradients_divided_before_the_step(model, loss_fn, optimizer, micro_batches, k):  # also right
    for start in range(0, len(micro_batches), k):
        window = micro_batches[start:start + k]
        for X, y in window:
            loss_fn(model(X), y).backward()
        for p in model.parameters():
            p.grad /= len(window)
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("mistake, words, not_said", [
    (split_micro_batches, "one forward pass and one backward(), whole", "use the arguments"),
    (backward_twice, "20 backward() calls for 10 micro-batches", "use the arguments"),
    (step_when_a_window_starts, "when does your loop step?", "compare each step"),
    (zero_grad_before_step, "the parameters never moved", "compare each step"),
    (hard_coded_window, "use the argument, not the exercise's 4", "(len(micro_batches)"),
    (hard_coded_divisors, "or by a number written into your loop", "not the numbers 10 and 4"),
    (hard_coded_count, "here the check passes 7 micro-batches", "read the error"),
    (skips_the_last_micro_batch, "only 9 of the 10 micro-batches", "adding a window's losses"),
    (lr_scaled_and_left_so, "lr=0.05 after your epoch", "Right"),
])
def test_exercise_2_review_mistakes_are_named(mistake, words, not_said, capsys):
    assert not ex05.check_accumulation_loop(mistake)
    out = " ".join(capsys.readouterr().out.split())
    assert words in out and not_said not in out and "expected:" not in out


def test_exercise_2_gradients_divided_before_the_step_are_right(capsys):
    assert ex05.check_accumulation_loop(gradients_divided_before_the_step)


def test_the_exercise_cells_as_handed_out_spend_no_try(capsys):
    """Run All on the lesson as handed out: every check answers its `...`, and no try is counted."""
    notebook = json.loads((Path(__file__).parents[1] / "notebooks" /
                           "05-gradient-accumulation.ipynb").read_text())
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"
             and "ex05.check_" in "".join(c["source"])]
    assert len(cells) == 2
    for source in cells:
        exec(source, {"ex05": ex05})
    out = " ".join(capsys.readouterr().out.split())
    assert out.count(NOT_YET) == 2 and RIGHT not in out and "answer:" not in out
    assert [tries(check) for check in (ex05.check_total_steps, ex05.check_accumulation_loop)] == [0, 0]
