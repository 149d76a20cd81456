"""Checks for the exercises of notebook 01 (gradients accumulate).

Each check works its expected answer out with torch, then prints a verdict.
"""

from __future__ import annotations

from typing import Any

import torch

from utils.data import make_regression
from utils.exercises import Verdict, call_learner_function, check_number, check_tensor, verdict


def _mse(w: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((X @ w - y) ** 2).mean()


def check_grad_after_three_calls(answer: Any) -> Verdict:
    """Exercise 1: `w = 2.0`, then `(w ** 3).backward()` three times. What is `w.grad`?"""
    w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    for _ in range(3):
        (w**3).backward()
    once = 3 * 2.0**2
    return check_number(
        answer,
        float(w.grad),
        what="w.grad after three backward() calls",
        hint="each backward() adds dL/dw = 3·w² once more",
        mistakes=[(once, f"{once:g} is one call's gradient; .grad keeps the sum"), (8.0, "8 is the loss w³")],
    )


def _batches() -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    data = make_regression(num_samples=12, num_features=3, seed=101, dtype=torch.float64)
    w = torch.linspace(-1.0, 1.0, 3, dtype=torch.float64).reshape(3, 1).requires_grad_()
    return w, [(data.X[:6], data.y[:6]), (data.X[6:], data.y[6:])]


def check_batch_gradient(batch_gradient: Any) -> Verdict:
    """Exercise 2: `batch_gradient(w, X, y)` returns dL/dw of this batch alone, using backward()."""
    what = "batch_gradient(w, X, y) returns this batch's gradient"
    w, batches = _batches()
    truths = [torch.autograd.grad(_mse(w, X, y), w)[0] for X, y in batches]
    w.grad = torch.full_like(w, 10.0)  # left over from an earlier batch
    stale = w.grad.clone()
    for (X, y), truth in zip(batches, truths):
        ok, result = call_learner_function(batch_gradient, w, X, y, what=what)
        if not ok:
            return result
        if not isinstance(result, torch.Tensor):
            return verdict(False, what, expected=f"a tensor of shape {tuple(w.shape)}", got=repr(result)[:60],
                           hint="return w.grad at the end of your function")
        got = result.detach().clone()
        if not torch.allclose(got, truth):
            if got.shape == truth.shape and torch.allclose(got, truth + stale):
                return verdict(False, what, expected=truth, got=got,
                               hint="that is this batch's gradient plus what .grad held before: clear w.grad "
                               "(w.grad = None) before backward()")
            return check_tensor(got, truth, what=what, hint="loss = ((X @ w - y) ** 2).mean(), then backward()")
        stale = got
    return verdict(True, what + ", whatever .grad held before")


def check_functional_gradient(functional_gradient: Any) -> Verdict:
    """Exercise 3: `functional_gradient(w, X, y)` returns dL/dw and leaves `w.grad` untouched."""
    what = "functional_gradient(w, X, y) returns the gradient and leaves w.grad alone"
    w, [(X, y), _] = _batches()
    truth = torch.autograd.grad(_mse(w, X, y), w)[0]
    w.grad = torch.full_like(w, 10.0)
    before = w.grad.clone()
    ok, result = call_learner_function(functional_gradient, w, X, y, what=what)
    if not ok:
        return result
    if isinstance(result, (tuple, list)) and len(result) == 1:
        result = result[0]  # torch.autograd.grad returns a tuple; accept it unpacked or not
    if w.grad is None or not torch.equal(w.grad, before):
        return verdict(False, what, expected="w.grad still holding 10.0 everywhere", got=describe_grad(w.grad),
                       hint="backward() writes .grad; torch.autograd.grad(loss, w) or torch.func.grad return it")
    return check_tensor(result, truth, what=what, hint="loss = ((X @ w - y) ** 2).mean()")


def describe_grad(grad: torch.Tensor | None) -> str:
    """Say what `.grad` holds, for a verdict."""
    return "None" if grad is None else f"changed to {grad.detach().flatten().tolist()}"
