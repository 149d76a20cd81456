"""Checks for the exercises of notebook 01 (gradients accumulate).

Each check works its expected answer out with torch, then prints a verdict (utils.exercises:
hints first, the answer only after several tries or with `reveal=True`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from utils.data import make_regression
from utils.exercises import (
    Verdict, call_learner_function, check_number, check_tensor, describe, exercise, verdict,
)

# Errors the exercise invites, and what each one means.
_ERRORS = [
    ("'NoneType' object has no attribute", "w.grad is None until the first backward(): there is "
     "nothing to zero yet. What can you set .grad to that works in both cases?"),
    ("backward through the graph a second time", "each call builds a new loss: call backward() on it "
     "once"),
]


@exercise
def check_grad_after_three_calls(answer: Any) -> Verdict:
    """Exercise 1: `w = 2.0`, then `(w ** 3).backward()` three times. What is `w.grad`?"""
    w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    once = torch.autograd.grad(w**3, w)[0].item()
    for _ in range(3):
        (w**3).backward()
    return check_number(
        answer,
        float(w.grad),
        what="w.grad after three backward() calls",
        hint=["what does one backward() put into .grad, and what does the next one do with it?",
              "one backward() gives dL/dw = 3·w²; each further call adds to what .grad holds"],
        mistakes=[
            (once, f"{once:g} is one call's gradient: what happens to it on the second call?"),
            (2 * once, f"{2 * once:g} is what two calls leave: count the backward() calls again"),
            (8.0, "8 is the loss w³ itself; .grad holds its derivative"),
            (once**3, "the calls add, they do not multiply"),
        ],
    )


def _mse(w: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((X @ w - y) ** 2).mean()


def _batches() -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    data = make_regression(num_samples=12, num_features=3, seed=101, dtype=torch.float64)
    w = torch.linspace(-1.0, 1.0, 3, dtype=torch.float64).reshape(3, 1).requires_grad_()
    return w, [(data.X[:6], data.y[:6]), (data.X[6:], data.y[6:])]


def _count_backward(w: torch.Tensor) -> list[int]:
    """A counter of the gradients backward() adds into w.grad (torch.autograd.grad adds none)."""
    calls: list[int] = []
    w.register_post_accumulate_grad_hook(lambda _: calls.append(1))
    return calls


@contextmanager
def _any_backward() -> Iterator[list[int]]:
    """Count every backward() in the block, on any tensor (a copy of w included); leave torch as it was."""
    calls: list[int] = []
    original = torch.autograd.backward

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    torch.autograd.backward = counted  # Tensor.backward() calls it too
    try:
        yield calls
    finally:
        torch.autograd.backward = original


@exercise
def check_batch_gradient(batch_gradient: Any) -> Verdict:
    """Exercise 2: `batch_gradient(w, X, y)` returns dL/dw of this batch alone, using backward()."""
    what = "batch_gradient(w, X, y) returns this batch's gradient"
    w, batches = _batches()
    calls = _count_backward(w)
    (X1, y1), (X2, y2) = batches
    truths = [torch.autograd.grad(_mse(w, X, y), w)[0] for X, y in batches]
    # A fresh w (.grad is None), the next batch (.grad holds the last one), then .grad left over.
    cases = [("a fresh w, whose .grad is None", None, X1, y1, truths[0]),
             ("the next batch", "keep", X2, y2, truths[1]),
             ("a w whose .grad held 10.0 everywhere", 10.0, X1, y1, truths[0])]
    for case, before, X, y, truth in cases:
        if before is None:
            w.grad = None
        elif before != "keep":
            w.grad = torch.full_like(w, before)
        stale = None if w.grad is None else w.grad.detach().clone()
        calls.clear()
        ok, result = call_learner_function(batch_gradient, w, X, y, what=what, errors=_ERRORS)
        if not ok:
            return result
        if not calls:
            return verdict(False, what, wanted=f"backward() called once, on {case}", got="no backward() call",
                           hint="the exercise is about what backward() does to w.grad: compute the loss "
                           "and call backward() on it")
        if len(calls) > 1:
            return verdict(False, what, wanted="one backward() per call", got=f"{len(calls)} backward() calls",
                           hint="each backward() adds once more: call it once on the batch's loss")
        if not isinstance(result, torch.Tensor):
            return verdict(False, what, wanted=f"a tensor of shape {tuple(w.shape)}", got=describe(result),
                           hint="what does backward() fill in? Return that at the end of your function")
        got = result.detach().clone()
        if stale is not None and got.shape == truth.shape and torch.allclose(got, truth + stale):
            return verdict(False, what + f", on {case}", got=got, expected=truth,
                           hint="that is this batch's gradient plus what .grad held before: "
                           "what must happen to the old .grad before backward()?")
        if not torch.allclose(got, truth):
            return check_tensor(got, truth, what=what + f", on {case}",
                                hint="the loss is ((X @ w - y) ** 2).mean() of this batch")
    return verdict(True, what + ": one backward() per batch, whatever .grad held before, None included")


@exercise
def check_functional_gradient(functional_gradient: Any) -> Verdict:
    """Exercise 3: `functional_gradient(w, X, y)` returns dL/dw and leaves `w.grad` untouched."""
    what = "functional_gradient(w, X, y) returns the gradient and leaves w.grad alone"
    w, [(X, y), _] = _batches()
    truth = torch.autograd.grad(_mse(w, X, y), w)[0]
    calls = _count_backward(w)
    w.grad = torch.full_like(w, 10.0)
    before = w.grad.clone()
    with _any_backward() as anywhere:
        ok, result = call_learner_function(functional_gradient, w, X, y, what=what)
    if not ok:
        return result
    if anywhere and not calls and w.grad is not None and torch.equal(w.grad, before):
        return verdict(False, what, wanted="no backward() at all", got="backward() on another tensor "
                       "(a copy of w?)", hint=["it leaves w.grad alone, but the exercise asks for a gradient "
                                               "returned, not stored: which functions return one?",
                                               "section 5, 'Gradients as return values', shows two"])
    if isinstance(result, (tuple, list)) and len(result) == 1:
        result = result[0]  # torch.autograd.grad returns a tuple; accept it unpacked or not
    if calls or w.grad is None or not torch.equal(w.grad, before):
        got = "backward() called" if calls else f"w.grad {describe_grad(w.grad)}"
        return verdict(False, what, wanted="w.grad still holding 10.0 everywhere, and no backward()", got=got,
                       hint=["backward() writes into .grad: which functions of this notebook return a "
                             "gradient instead?", "the section 'Gradients as return values' shows two: neither touches .grad"])
    return check_tensor(result, truth, what=what, hint="the loss is ((X @ w - y) ** 2).mean()")


def describe_grad(grad: torch.Tensor | None) -> str:
    """Say what `.grad` holds, for a verdict."""
    return "set to None" if grad is None else f"changed to {grad.detach().flatten().tolist()}"
