"""utils.ex01: the checks of notebook 01 accept right answers and explain wrong ones."""

import torch

from utils import ex01


def batch_gradient(w, X, y):  # the solution
    w.grad = None
    ((X @ w - y) ** 2).mean().backward()
    return w.grad


def batch_gradient_zeroing_in_place(w, X, y):  # also right: zero_() keeps the buffer
    if w.grad is not None:
        w.grad.zero_()
    ((X @ w - y) ** 2).mean().backward()
    return w.grad


def batch_gradient_forgetting_to_clear(w, X, y):
    ((X @ w - y) ** 2).mean().backward()
    return w.grad


def functional_gradient(w, X, y):  # the solution
    return torch.autograd.grad(((X @ w - y) ** 2).mean(), w)[0]


def functional_gradient_with_func(w, X, y):
    return torch.func.grad(lambda v: ((X @ v - y) ** 2).mean())(w.detach())


def functional_gradient_using_backward(w, X, y):
    w.grad = None
    ((X @ w - y) ** 2).mean().backward()
    return w.grad


def test_exercise_1(capsys):
    assert ex01.check_grad_after_three_calls(36)
    assert not ex01.check_grad_after_three_calls(12.0)
    assert "12 is one call's gradient" in capsys.readouterr().out
    assert not ex01.check_grad_after_three_calls("36")
    assert "expected: a number such as 36" in capsys.readouterr().out


def test_exercise_2(capsys):
    assert ex01.check_batch_gradient(batch_gradient)
    assert ex01.check_batch_gradient(batch_gradient_zeroing_in_place)
    capsys.readouterr()
    assert not ex01.check_batch_gradient(batch_gradient_forgetting_to_clear)
    assert "clear w.grad" in capsys.readouterr().out
    assert not ex01.check_batch_gradient(lambda w, X, y: None)
    assert "return w.grad" in capsys.readouterr().out
    assert not ex01.check_batch_gradient(batch_gradient(torch.zeros(3, 1, requires_grad=True),
                                                        torch.ones(2, 3), torch.ones(2, 1)))
    assert "pass its name" in capsys.readouterr().out


def test_exercise_3(capsys):
    assert ex01.check_functional_gradient(functional_gradient)
    assert ex01.check_functional_gradient(functional_gradient_with_func)
    assert ex01.check_functional_gradient(lambda w, X, y: torch.autograd.grad(((X @ w - y) ** 2).mean(), w))
    capsys.readouterr()
    assert not ex01.check_functional_gradient(functional_gradient_using_backward)
    assert "backward() writes .grad" in capsys.readouterr().out
    assert not ex01.check_functional_gradient(lambda w, X, y: 1 / 0)
    assert "it raised ZeroDivisionError" in capsys.readouterr().out
