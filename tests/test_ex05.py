"""utils.ex05: the checks of notebook 05 accept right answers and explain wrong ones."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils import ex05

# Exercise 1


@pytest.mark.parametrize("answer", [3, 3.0, torch.tensor(3), np.int64(3)])
def test_exercise_1_right(answer):
    assert ex05.check_optimizer_steps(answer)


@pytest.mark.parametrize("answer, words", [
    (12, "number of micro-batches"),
    (32, "effective batch"),
    (24, "counts micro-batches, not samples"),
    (7, "step() once per gradient_accumulation_steps"),
])
def test_exercise_1_common_mistakes(answer, words, capsys):
    assert not ex05.check_optimizer_steps(answer)
    assert words in capsys.readouterr().out


@pytest.mark.parametrize("answer, words", [(..., "replace the ..."), ("3", "expected: a number"),
                                           ([3], "expected: a number"), (True, "expected: a number")])
def test_exercise_1_placeholder_and_wrong_types(answer, words, capsys):
    assert not ex05.check_optimizer_steps(answer)
    assert words in capsys.readouterr().out


def test_exercise_1_counts_with_torch():
    assert ex05._count_steps(96, 8, 4) == 3
    assert ex05._count_steps(100, 8, 4) == 3  # a last partial window never steps
    assert ex05._count_steps(64, 8, 1) == 8


# Exercise 2


def train_with_accumulation(model, loss_fn, optimizer, micro_batches, gradient_accumulation_steps):
    for i, (X, y) in enumerate(micro_batches):
        (loss_fn(model(X), y) / gradient_accumulation_steps).backward()
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()


def zeroing_at_window_start(model, loss_fn, optimizer, micro_batches, gradient_accumulation_steps):
    for i, (X, y) in enumerate(micro_batches):
        if i % gradient_accumulation_steps == 0:
            optimizer.zero_grad(set_to_none=False)
        (loss_fn(model(X), y) / gradient_accumulation_steps).backward()
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()


def big_batches_by_hand(model, loss_fn, optimizer, micro_batches, gradient_accumulation_steps):
    k = gradient_accumulation_steps
    for start in range(0, len(micro_batches), k):
        X, y = (torch.cat(parts) for parts in zip(*micro_batches[start:start + k]))
        loss_fn(model(X), y).backward()
        optimizer.step()
        optimizer.zero_grad()


def no_division(model, loss_fn, optimizer, micro_batches, k):
    for i, (X, y) in enumerate(micro_batches):
        loss_fn(model(X), y).backward()
        if (i + 1) % k == 0:
            optimizer.step()
            optimizer.zero_grad()


def zero_grad_before_every_backward(model, loss_fn, optimizer, micro_batches, k):
    for i, (X, y) in enumerate(micro_batches):
        optimizer.zero_grad()
        (loss_fn(model(X), y) / k).backward()
        if (i + 1) % k == 0:
            optimizer.step()


def step_every_micro_batch(model, loss_fn, optimizer, micro_batches, k):
    for X, y in micro_batches:
        (loss_fn(model(X), y) / k).backward()
        optimizer.step()
        optimizer.zero_grad()


def never_zero_grad(model, loss_fn, optimizer, micro_batches, k):
    for i, (X, y) in enumerate(micro_batches):
        (loss_fn(model(X), y) / k).backward()
        if (i + 1) % k == 0:
            optimizer.step()


def only_backward(model, loss_fn, optimizer, micro_batches, k):
    for X, y in micro_batches:
        loss_fn(model(X), y).backward()


def placeholder(model, loss_fn, optimizer, micro_batches, gradient_accumulation_steps):
    ...


@pytest.mark.parametrize("solution", [train_with_accumulation, zeroing_at_window_start, big_batches_by_hand])
def test_exercise_2_right(solution, capsys):
    assert ex05.check_accumulation_loop(solution)
    assert "steps on batches of 16" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, words", [
    (no_division, "must be divided by gradient_accumulation_steps"),
    (zero_grad_before_every_backward, "only the last micro-batch reaches the step"),
    (step_every_micro_batch, "step() runs after every micro-batch"),
    (never_zero_grad, "leaks into the next"),
    (placeholder, "expected: the parameters to change"),
    (only_backward, "expected: the parameters to change"),
])
def test_exercise_2_common_mistakes(mistake, words, capsys):
    assert not ex05.check_accumulation_loop(mistake)
    assert words in capsys.readouterr().out


def test_exercise_2_other_wrong_answers_show_expected_and_got(capsys):
    def half_lr(model, loss_fn, optimizer, micro_batches, k):
        for group in optimizer.param_groups:
            group["lr"] /= 2
        train_with_accumulation(model, loss_fn, optimizer, micro_batches, k)

    assert not ex05.check_accumulation_loop(half_lr)
    out = capsys.readouterr().out
    assert "expected: tensor([" in out and "got:      tensor([" in out


@pytest.mark.parametrize("answer, words", [
    (..., "replace the ..."),
    (3, "pass its name"),
    (lambda *args: 1 / 0, "it raised ZeroDivisionError"),
    (lambda model: None, "it raised TypeError"),
])
def test_exercise_2_bad_answers_get_a_verdict_not_a_traceback(answer, words, capsys):
    assert not ex05.check_accumulation_loop(answer)
    assert words in capsys.readouterr().out


# Exercise 3


def sum_over_step_tokens(logits, labels, num_tokens_in_step):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / num_tokens_in_step


def by_mask(logits, labels, num_tokens_in_step):
    real = labels != -100
    return -F.log_softmax(logits, dim=-1)[real].gather(1, labels[real][:, None]).sum() / num_tokens_in_step


@pytest.mark.parametrize("solution", [sum_over_step_tokens, by_mask])
def test_exercise_3_right(solution):
    assert ex05.check_token_loss(solution)


@pytest.mark.parametrize("mistake, words", [
    (lambda lo, la, n: F.cross_entropy(lo.flatten(0, 1), la.flatten()) / 4, "the October 2024 bug"),
    (lambda lo, la, n: F.cross_entropy(lo.flatten(0, 1), la.flatten()), "each micro-batch's mean"),
    (lambda lo, la, n: F.cross_entropy(lo.flatten(0, 1), la.flatten(), reduction="sum"), "now divide it"),
    (lambda lo, la, n: F.cross_entropy(lo.flatten(0, 1), la.flatten(), reduction="sum") / la.numel(),
     "padding included"),
])
def test_exercise_3_common_mistakes(mistake, words, capsys):
    assert not ex05.check_token_loss(mistake)
    assert words in capsys.readouterr().out


@pytest.mark.parametrize("answer, words", [
    (..., "replace the ..."),
    ("loss", "pass its name"),
    (lambda lo, la, n: None, "got:      NoneType None"),
    (lambda lo, la, n: sum_over_step_tokens(lo, la, n).item(), "got:      float"),
    (lambda lo, la, n: sum_over_step_tokens(lo, la, n).detach(), "that backward() cannot use"),
    (lambda lo, la, n: lo.sum(dim=-1), "of shape (2, 10)"),
    (lambda lo, la, n: lo.sum() / 0.0 * 0.0 + 1 / 0, "it raised ZeroDivisionError"),
    (lambda lo, la: lo.sum(), "it raised TypeError"),
])
def test_exercise_3_bad_answers_get_a_verdict_not_a_traceback(answer, words, capsys):
    assert not ex05.check_token_loss(answer)
    assert words in capsys.readouterr().out


def test_exercise_3_other_wrong_answers_show_expected_and_got(capsys):
    assert not ex05.check_token_loss(lambda lo, la, n: lo.sum() / n)
    out = capsys.readouterr().out
    assert "expected: tensor([" in out and "got:      tensor([" in out


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    ex05.check_accumulation_loop(train_with_accumulation)
    ex05.check_token_loss(sum_over_step_tokens)
    assert torch.equal(torch.rand(3), expected)
