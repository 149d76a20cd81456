"""Checks for the exercises of notebook 02 (forgetting zero_grad).

Each check works its expected answer out with torch, then prints a verdict (utils.exercises:
hints first, the answer only after several tries or with `reveal=True`).
"""

from __future__ import annotations

from typing import Any

import torch

from utils.data import make_regression
from utils.exercises import (
    Verdict, as_number, call_learner_function, check_number, describe, exercise, show_pair, verdict,
)

NUM_STEPS = 20


def _third_grad(zero_grad: bool) -> tuple[float, list[float]]:
    """Exercise 1's loop: w = 0, loss (w - 3)², SGD lr=0.1; return .grad at step 3 and each step's own g."""
    w = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1)
    own = []
    for _ in range(3):
        if zero_grad:
            optimizer.zero_grad()
        before = 0.0 if w.grad is None else float(w.grad)
        ((w - 3) ** 2).backward()
        own.append(float(w.grad) - before)
        grad = float(w.grad)
        optimizer.step()
    return grad, own


@exercise
def check_grad_at_step_three(answer: Any) -> Verdict:
    """Exercise 1: without zero_grad, what does `w.grad` hold after the third backward()?"""
    grad, own = _third_grad(zero_grad=False)
    with_zero_grad, own_with = _third_grad(zero_grad=True)
    return check_number(
        answer,
        grad,
        what="w.grad after the third backward() without zero_grad",
        hint=["which w does each of the three backward() calls see, and what does .grad do with "
              "each gradient?", "add up the three gradients 2·(w - 3), each at the w that step "
              "started from; step() moves w by lr times what .grad holds"],
        mistakes=[
            (own[2], f"{own[2]:g} is the third step's own gradient; .grad still holds the first two as well"),
            (own[0], f"{own[0]:g} is the first gradient only; .grad adds one more at every backward()"),
            (own[0] + own[1], f"{own[0] + own[1]:g} is what .grad holds after the second backward(); "
             "one more to go"),
            (with_zero_grad, f"{with_zero_grad:g} is what a loop *with* zero_grad holds: one gradient only"),
            (sum(own_with), f"{sum(own_with):g} adds the gradients of the loop *with* zero_grad; without it, "
             "each step is longer (lr times the sum), so w moves further"),
            (3 * own[0], f"{3 * own[0]:g} assumes w never moved; step() moves it after every backward()"),
            (-grad, "right size, wrong sign: w is below 3, so the gradient 2·(w - 3) is negative"),
        ],
    )


def _problem() -> tuple[torch.Tensor, torch.Tensor]:
    data = make_regression(num_samples=16, num_features=1, seed=202, dtype=torch.float64)
    return data.X, data.y


def _fresh(optimizer_class: type, **options: Any) -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    model = torch.nn.Linear(1, 1, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(-1.0)
        model.bias.fill_(2.0)
    return model, optimizer_class(model.parameters(), **options)


def _reference(optimizer_class: type, zero_grad: bool, **options: Any) -> tuple[list[float], torch.Tensor]:
    """Losses and final (w, b) of the loop, with or without zero_grad() at its start."""
    X, y = _problem()
    model, optimizer = _fresh(optimizer_class, **options)
    losses = []
    for _ in range(NUM_STEPS):
        if zero_grad:
            optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, _params(model)


def _params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _as_losses(result: Any) -> list[float] | None:
    if isinstance(result, torch.Tensor):
        result = result.detach().flatten().tolist()
    if not isinstance(result, (list, tuple)):
        return None
    numbers = [as_number(value) for value in result]
    return None if any(n is None for n in numbers) else numbers


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-6, atol=1e-9)


def _counters(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[list[int], list[int]]:
    """Count the optimizer's step() calls and the backward() passes that reach the weight."""
    steps: list[int] = []
    backwards: list[int] = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    model.weight.register_post_accumulate_grad_hook(lambda _: backwards.append(1))
    return steps, backwards


@exercise
def check_train_loop(train_loop: Any) -> Verdict:
    """Exercise 2: `train_loop(model, optimizer, X, y, num_steps)` trains correctly and returns the losses."""
    what = "train_loop(model, optimizer, X, y, num_steps) trains and returns one loss per step"
    X, y = _problem()
    for optimizer_class, lr in ((torch.optim.SGD, 0.05), (torch.optim.Adam, 0.1)):
        name = optimizer_class.__name__
        right, right_params = _reference(optimizer_class, zero_grad=True, lr=lr)
        forgot, _ = _reference(optimizer_class, zero_grad=False, lr=lr)
        model, optimizer = _fresh(optimizer_class, lr=lr)
        steps, backwards = _counters(model, optimizer)
        start = _params(model)
        ok, result = call_learner_function(train_loop, model, optimizer, X, y, NUM_STEPS, what=what)
        if not ok:
            return result
        if result is None:
            return verdict(False, what, wanted=f"a list of {NUM_STEPS} losses", got="None",
                           hint="replace the ... with the loop, and return the list of losses (loss.item())")
        losses = _as_losses(result)
        if losses is None or len(losses) != NUM_STEPS:
            return verdict(False, what, wanted=f"a list of {NUM_STEPS} losses (floats)", got=describe(result),
                           hint="append loss.item() once per step and return the list")
        if len(steps) != NUM_STEPS or len(backwards) != NUM_STEPS:
            return verdict(False, what, wanted=f"{NUM_STEPS} calls each of backward() and of the given "
                           f"optimizer's step() ({name})",
                           got=f"{len(backwards)} backward() and {len(steps)} step() call(s)",
                           hint="one backward() and one optimizer.step() per iteration, on the model and "
                           "the optimizer the function receives")
        moved = not torch.equal(_params(model), start)
        if not moved and len(set(losses)) == 1:
            return verdict(False, what, wanted="the parameters to move", got="they never moved",
                           hint="what is in .grad at the moment step() reads it?")
        if _close(losses, forgot):
            return verdict(False, what, wanted=f"the losses of a loop that clears .grad ({name})",
                           got="the losses of a loop that never clears .grad",
                           hint="which call clears .grad, and where in the step may it go?")
        if not _close(losses, right) or not torch.allclose(_params(model), right_params, rtol=1e-6, atol=1e-9):
            return verdict(False, what, got=torch.tensor(losses[:4]), expected=torch.tensor(right[:4]),
                           hint=[f"with {name} the losses differ from a correct loop's: is the loss the mean "
                                 "squared error of model(X) and y, and is it recorded before or after its step?",
                                 f"with {name}: zero_grad(), loss = mse_loss(model(X), y), backward(), step(); "
                                 "one step per iteration, the loss appended before the next one"])
    return _check_other_num_steps(train_loop, what)


def _check_other_num_steps(train_loop: Any, what: str, num_steps: int = 3) -> Verdict:
    """Once right for NUM_STEPS: does the loop take the num_steps it is given?"""
    right, _ = _reference(torch.optim.SGD, zero_grad=True, lr=0.05)
    X, y = _problem()
    model, optimizer = _fresh(torch.optim.SGD, lr=0.05)
    steps, backwards = _counters(model, optimizer)
    ok, result = call_learner_function(train_loop, model, optimizer, X, y, num_steps, what=what)
    if not ok:
        return result
    losses = _as_losses(result)
    if len(steps) != num_steps or losses is None or not _close(losses, right[:num_steps]):
        return verdict(False, what + f", with num_steps={num_steps}",
                       got=f"{len(steps)} step() call(s) and " + (f"{len(losses)} losses" if losses is not None
                                                                  else describe(result)),
                       hint=f"right for num_steps={NUM_STEPS}, not for {num_steps}: use the argument "
                       "num_steps, not a number")
    return verdict(True, what + ", with SGD and with Adam")


def _sgd_run(zero_grad: bool, momentum: float, dampening: float) -> list[float]:
    return _reference(torch.optim.SGD, zero_grad, lr=0.05, momentum=momentum, dampening=dampening)[0]


@exercise
def check_momentum_settings(answer: Any) -> Verdict:
    """Exercise 3: which (momentum, dampening) make SGD in a correct loop retrace the loop without zero_grad?"""
    what = "SGD(momentum, dampening) in a correct loop retraces the loop without zero_grad"
    if answer is Ellipsis:
        return verdict(False, what, hint="replace the ... with a pair of numbers: (momentum, dampening)",
                       counts=False)
    pair = None
    if isinstance(answer, (tuple, list)) and len(answer) == 2:
        pair = [as_number(v) for v in answer]
    if pair is None or None in pair:
        return verdict(False, what, wanted="a pair of numbers (momentum, dampening)", got=describe(answer))
    momentum, dampening = pair
    forgot = _sgd_run(zero_grad=False, momentum=0.0, dampening=0.0)
    try:
        losses = _sgd_run(zero_grad=True, momentum=momentum, dampening=dampening)
    except (ValueError, RuntimeError) as error:
        return verdict(False, what, wanted="settings torch.optim.SGD accepts", got=f"SGD said: {error}")
    if _close(losses, forgot):
        return verdict(True, what + f": momentum={momentum:g}, dampening={dampening:g}")
    if momentum == 0:
        hint = "momentum=0 is plain SGD: it keeps no history, while .grad keeps all of it"
    elif momentum != momentum:  # NaN
        hint = "momentum=nan is not a number: pass two numbers, (momentum, dampening)"
    elif momentum > 1:
        hint = (f"momentum={momentum:g} multiplies the old sum by {momentum:g} every step, so the history "
                "grows. How much of the old sum does .grad keep?")
    elif momentum != 1:
        hint = (f"momentum={momentum:g} scales the old sum by {momentum:g} every step: friction. "
                "How much of the old sum does .grad keep?")
    else:
        hint = (f"dampening={dampening:g} scales each new gradient by (1 - dampening) = {1 - dampening:g}. "
                "How much of each new gradient does backward() add?")
    wanted, got = show_pair(forgot[:3], losses[:3])
    return verdict(False, what, wanted=f"the first losses of the loop without zero_grad, {wanted}",
                   got=f"the first losses with your settings, {got}", hint=hint,
                   expected="(momentum, dampening) = (1, 0)")
