"""Checks for the exercises of notebook 08 (check your own loop).

Each check trains a fresh model with the learner's `train(model, optimizer, batches)` under
`ZeroGradGuard` and answers with the guard's verdict. A silent guard is not enough (a loop
that never calls backward() is silent too), so the check also counts the steps and compares
the trained weights with those of a reference loop it runs itself with torch.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

from utils.data import make_regression
from utils.exercises import Verdict, call_learner_function, verdict
from utils.guard import StaleGradientWarning, ZeroGradGuard

GRADIENT_ACCUMULATION_STEPS = 2  # the notebook's gradient_accumulation_steps
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def make_problem(seed: int = 60) -> tuple[torch.nn.Module, torch.optim.Optimizer, Batches]:
    """A fresh model, its SGD optimizer and 8 micro-batches of 4 samples, like notebook 08's."""
    data = make_regression(num_samples=16, num_features=3, seed=seed, dtype=torch.float64)
    batches = [(data.X[i : i + 4], data.y[i : i + 4]) for i in range(0, 16, 4)] * 2
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    return model, torch.optim.SGD(model.parameters(), lr=0.1), batches


def _reference(model: torch.nn.Module, batches: Batches, accumulate: int, divide: bool = True) -> list[torch.Tensor]:
    """Train a copy the right way (or, with divide=False, the way of a common mistake)."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for i, (X, y) in enumerate(batches):
        loss = torch.nn.functional.mse_loss(model(X), y)
        (loss / accumulate if divide else loss).backward()
        if (i + 1) % accumulate == 0:
            optimizer.step()
            optimizer.zero_grad()
    return [p.detach() for p in model.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, y, rtol=1e-9, atol=1e-12) for x, y in zip(a, b))


def _check_loop(train: Any, *, what: str, accumulate: int) -> Verdict:
    model, optimizer, batches = make_problem()
    initial = copy.deepcopy(model)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")  # the guard's findings are read below, not shown twice
        with ZeroGradGuard(optimizer, model=model) as guard:
            ok, result = call_learner_function(train, model, optimizer, batches, what=what)
    if not ok:
        return result
    if guard.findings:
        first = guard.findings[0]
        steps = len({f.step for f in guard.findings})
        hint = ("clear the gradients once per step, after optimizer.step() or before loss.backward()"
                if first.kind is StaleGradientWarning else
                "clear the gradients only after optimizer.step() (or before the first backward() of a step)")
        return verdict(False, what, expected="the guard silent on every step",
                       got=f"{first.kind.__name__} on {steps} step(s); the first: {first.message}", hint=hint)
    expected_steps = len(batches) // accumulate
    if guard.steps != expected_steps:
        if guard.steps == 0:
            hint = ("your function never called optimizer.step() on the optimizer it was given; "
                    "replace the ... with the mended loop")
        elif accumulate > 1 and guard.steps == len(batches):
            hint = "step once every gradient_accumulation_steps micro-batches, not after each one"
        else:
            hint = "one optimizer.step() per step: loop once over batches"
        return verdict(False, what, expected=f"{expected_steps} calls of optimizer.step()",
                       got=f"{guard.steps} call(s)", hint=hint)
    trained = [p.detach() for p in model.parameters()]
    if _same(trained, _reference(initial, batches, accumulate)):
        return verdict(True, f"{what}: the guard stays silent over {expected_steps} steps and the model "
                       "ends where the reference loop takes it")
    if accumulate > 1 and _same(trained, _reference(initial, batches, accumulate, divide=False)):
        hint = ("divide each micro-batch's loss by gradient_accumulation_steps, so the accumulated "
                "gradient is the mean over the window")
    else:
        hint = "compute loss_fn(model(X), y) for every (X, y) in batches, in order, and backward() it"
    return verdict(False, what, expected="the weights the reference loop reaches",
                   got="different weights (the guard was silent)", hint=hint)


def check_no_stale_gradients(train: Any) -> Verdict:
    """Exercise 1: mend `forgot_zero_grad` so that no step uses an earlier step's gradient."""
    return _check_loop(train, what="train(model, optimizer, batches) clears old gradients", accumulate=1)


def check_no_discarded_gradients(train: Any) -> Verdict:
    """Exercise 2: mend `zero_grad_after_backward` so that every step uses its batch's gradient."""
    return _check_loop(train, what="train(model, optimizer, batches) steps with its batch's gradient",
                       accumulate=1)


def check_gradient_accumulation(train: Any) -> Verdict:
    """Exercise 3: mend `zero_grad_in_window`: one step per GRADIENT_ACCUMULATION_STEPS micro-batches."""
    return _check_loop(train, what="train(model, optimizer, batches) accumulates over "
                       f"{GRADIENT_ACCUMULATION_STEPS} micro-batches per step",
                       accumulate=GRADIENT_ACCUMULATION_STEPS)
