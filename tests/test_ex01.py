"""utils.ex01: the checks of notebook 01 accept right answers, enforce the task, and explain
wrong ones without giving the answer away."""

import pytest
import torch

from utils import ex01
from utils.exercises import reset_tries


@pytest.fixture(autouse=True)
def fresh_tries():
    reset_tries()


def batch_gradient(w, X, y):  # the solution
    w.grad = None
    ((X @ w - y) ** 2).mean().backward()
    return w.grad


def batch_gradient_zeroing_in_place(w, X, y):  # also right: zero_() keeps the buffer
    if w.grad is not None:
        w.grad.zero_()
    ((X @ w - y) ** 2).mean().backward()
    return w.grad


def batch_gradient_zeroing_always(w, X, y):  # fails on a fresh parameter: .grad is None
    w.grad.zero_()
    ((X @ w - y) ** 2).mean().backward()
    return w.grad


def batch_gradient_forgetting_to_clear(w, X, y):
    ((X @ w - y) ** 2).mean().backward()
    return w.grad


def batch_gradient_without_backward(w, X, y):  # the right numbers, not the task
    return torch.autograd.grad(((X @ w - y) ** 2).mean(), w)[0]


def batch_gradient_by_formula(w, X, y):
    return (2 * X.T @ (X @ w - y) / len(X)).detach()


def batch_gradient_twice(w, X, y):
    w.grad = None
    loss = ((X @ w - y) ** 2).mean()
    loss.backward(retain_graph=True)
    w.grad = None
    loss.backward()
    return w.grad


def functional_gradient(w, X, y):  # the solution
    return torch.autograd.grad(((X @ w - y) ** 2).mean(), w)[0]


def functional_gradient_with_func(w, X, y):
    return torch.func.grad(lambda v: ((X @ v - y) ** 2).mean())(w.detach())


def functional_gradient_using_backward(w, X, y):
    w.grad = None
    ((X @ w - y) ** 2).mean().backward()
    return w.grad


def functional_gradient_restoring_grad(w, X, y):  # backward(), then .grad put back: not the task
    saved = w.grad
    w.grad = None
    ((X @ w - y) ** 2).mean().backward()
    result, w.grad = w.grad, saved
    return result


def functional_gradient_on_a_copy(w, X, y):  # backward() on a copy: w.grad untouched, not the task
    v = w.detach().clone().requires_grad_()
    ((X @ v - y) ** 2).mean().backward()
    return v.grad


def functional_gradient_backward_with_inputs(w, X, y):
    v = w.detach().clone().requires_grad_()
    torch.autograd.backward(((X @ v - y) ** 2).mean(), inputs=[v])
    return v.grad


def test_exercise_1(capsys):
    assert ex01.check_grad_after_three_calls(36)
    capsys.readouterr()
    for wrong, words in [(12.0, "12 is one call's gradient"), (24, "what two calls leave"), (8, "the loss w³ itself"),
                         (1728, "add, they do not multiply"), (30, "too close to 0")]:
        reset_tries()
        assert not ex01.check_grad_after_three_calls(wrong)
        out = capsys.readouterr().out
        assert words in out and "36" not in out, out


def test_exercise_1_reveals_on_the_third_try_or_when_asked(capsys):
    for _ in range(2):
        ex01.check_grad_after_three_calls(12)
    assert "36" not in capsys.readouterr().out
    ex01.check_grad_after_three_calls(12)
    assert "expected: 36" in capsys.readouterr().out
    reset_tries()
    ex01.check_grad_after_three_calls(..., reveal=True)
    assert "expected: 36" in capsys.readouterr().out


@pytest.mark.parametrize("fn", [batch_gradient, batch_gradient_zeroing_in_place])
def test_exercise_2_right_answers(fn):
    assert ex01.check_batch_gradient(fn)


@pytest.mark.parametrize("fn, words", [
    (batch_gradient_zeroing_always, "w.grad is None until the first backward()"),
    (batch_gradient_forgetting_to_clear, "plus what .grad held before"),
    (batch_gradient_without_backward, "no backward() call"),
    (batch_gradient_by_formula, "no backward() call"),
    (batch_gradient_twice, "2 backward() calls"),
    (lambda w, X, y: w.grad, "no backward() call"),
    (lambda w, X, y: ((X @ w - y) ** 2).mean().backward(), "a tensor of shape (3, 1)"),
    (lambda w, X, y: 1 / 0, "it raised ZeroDivisionError"),
    (..., "replace the ..."),
    (batch_gradient(torch.zeros(3, 1, requires_grad=True), torch.ones(2, 3), torch.ones(2, 1)), "pass its name"),
])
def test_exercise_2_enforces_the_task(fn, words, capsys):
    assert not ex01.check_batch_gradient(fn)
    out = capsys.readouterr().out
    assert words in out and "expected:" not in out, out


def test_the_cells_unwritten_functions_are_no_try(capsys):
    def batch_gradient(w, X, y):
        ...  # your code here

    def functional_gradient(w, X, y):
        """Not written yet."""

    for _ in range(3):
        assert not ex01.check_batch_gradient(batch_gradient)
        assert not ex01.check_functional_gradient(functional_gradient)
    out = capsys.readouterr().out
    assert "write the body of batch_gradient" in out and "write the body of functional_gradient" in out
    assert "expected:" not in out and "answer:" not in out


def test_exercise_2_starts_from_a_fresh_parameter(capsys):
    seen = []

    def spy(w, X, y):
        seen.append(None if w.grad is None else w.grad.clone())
        return batch_gradient(w, X, y)

    assert ex01.check_batch_gradient(spy)
    assert seen[0] is None, "the first call must meet .grad = None"
    assert all(g is not None for g in seen[1:]), "later calls meet a .grad left over"


@pytest.mark.parametrize("fn", [functional_gradient, functional_gradient_with_func,
                                lambda w, X, y: torch.autograd.grad(((X @ w - y) ** 2).mean(), w)])
def test_exercise_3_right_answers(fn):
    assert ex01.check_functional_gradient(fn)


@pytest.mark.parametrize("fn, words", [
    (functional_gradient_using_backward, "backward() writes into .grad"),
    (functional_gradient_restoring_grad, "backward() called"),
    (lambda w, X, y: 1 / 0, "it raised ZeroDivisionError"),
    (lambda w, X, y: torch.zeros(3, 1), "the loss is ((X @ w - y) ** 2).mean()"),
    (functional_gradient_on_a_copy, "backward() on another tensor"),
    (functional_gradient_backward_with_inputs, "backward() on another tensor"),
])
def test_exercise_3_enforces_the_task(fn, words, capsys):
    assert not ex01.check_functional_gradient(fn)
    assert words in capsys.readouterr().out


def test_exercise_3_leaves_torch_as_it_was():
    original = torch.autograd.backward
    ex01.check_functional_gradient(functional_gradient_on_a_copy)
    ex01.check_functional_gradient(lambda w, X, y: 1 / 0)
    assert torch.autograd.backward is original


def test_a_wrong_shape_is_revealed_like_a_wrong_value(capsys):
    for _ in range(3):
        assert not ex01.check_functional_gradient(lambda w, X, y: torch.zeros(3))
    out = capsys.readouterr().out.split("✘")
    assert "expected:" not in out[1] + out[2] and "expected: tensor([" in out[3], out
