"""Checks for the exercises of notebook 03 (manual descent, `.data` and `set_to_none`).

Each check works its expected answer out with torch, then prints a verdict. A learner's
answer never raises here: a wrong type, a wrong value or a function that fails all get a
verdict with a hint.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from utils.data import make_regression
from utils.device import make_generator
from utils.exercises import Verdict, check_number, describe, verdict

# Exercise 3: optimizers not in the notebook's table, each with lr=0.1.
CANDIDATES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "Adagrad": partial(torch.optim.Adagrad, lr=0.1),
    "RMSprop": partial(torch.optim.RMSprop, lr=0.1),
    "RMSprop momentum=0.9": partial(torch.optim.RMSprop, lr=0.1, momentum=0.9),
    "Adamax": partial(torch.optim.Adamax, lr=0.1),
    "NAdam": partial(torch.optim.NAdam, lr=0.1),
}
# Why each candidate moves or stays, for the hints (the answer itself is computed).
WHY = {
    "Adagrad": "Adagrad divides this step's gradient by a running scale: a zero gradient "
    "gives a zero step",
    "RMSprop": "plain RMSprop divides this step's gradient by a running scale: a zero "
    "gradient gives a zero step",
    "RMSprop momentum=0.9": "RMSprop with momentum keeps a buffer of past steps that "
    "goes on pushing",
    "Adamax": "Adamax keeps a running mean of past gradients, like Adam's m",
    "NAdam": "NAdam keeps a running mean of past gradients, like Adam's m",
}

# The error messages of the old loop's failures, and what to do about each.
_FAILURES = [
    ("'NoneType' object has no attribute", "W.grad is None until the first backward(): "
     "clear it after the update (W.grad = None), not before the first backward()"),
    ("unsupported operand type(s)", "W = W - lr * W.grad makes a new tensor that is not "
     "a leaf, so its .grad stays None: update in place, W -= lr * W.grad"),
    ("only for scalar outputs", "reduce the loss to one number: "
     "((X @ W + b - y) ** 2).mean()"),
    ("leaf Variable that requires grad", "update W and b inside with torch.no_grad():"),
]


def _loss(W: torch.Tensor, b: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((X @ W + b - y) ** 2).mean()


def _problem() -> tuple[torch.Tensor, torch.Tensor, float, int]:
    data = make_regression(num_samples=24, num_features=4, seed=103, dtype=torch.float64)
    return data.X, data.y, 0.1, 5


def _zeros() -> tuple[torch.Tensor, torch.Tensor]:
    W = torch.zeros(4, 1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    return W, b


def _with_sgd(clear: bool) -> torch.Tensor:
    """W and b, flattened into one tensor, after SGD (clearing .grad each step, or not)."""
    X, y, lr, num_steps = _problem()
    W, b = _zeros()
    optimizer = torch.optim.SGD([W, b], lr=lr)
    for _ in range(num_steps):
        if clear:
            optimizer.zero_grad()
        _loss(W, b, X, y).backward()
        optimizer.step()
    return torch.cat([W.detach().flatten(), b.detach()])


def check_manual_loop(train_manually: Any) -> Verdict:
    """Exercise 1: `train_manually(W, b, X, y, lr, num_steps)` updates W and b as SGD would."""
    what = "train_manually(W, b, X, y, lr, num_steps) trains W and b like torch.optim.SGD"
    if train_manually is Ellipsis or not callable(train_manually):
        return verdict(False, what, expected="a function (pass its name, without calling it)",
                       got=describe(train_manually), hint="replace the ... with your function")
    X, y, lr, num_steps = _problem()
    W, b = _zeros()
    try:
        train_manually(W, b, X, y, lr, num_steps)
    except Exception as error:  # the learner's code: a verdict, never a traceback
        message = str(error)
        hint = next((h for key, h in _FAILURES if key in message), "read the error, mend, run again")
        return verdict(False, what, expected="your function to run",
                       got=f"it raised {type(error).__name__}: {message[:90]}", hint=hint)
    got = torch.cat([W.detach().flatten(), b.detach()])
    if torch.count_nonzero(got) == 0:
        return verdict(False, what, expected="W and b changed in place", got="W and b still all zeros",
                       hint="replace the ... with the loop; update W and b in place (W -= ...), "
                       "since W = W - ... inside the function leaves the caller's W alone")
    expected = _with_sgd(clear=True)
    if torch.allclose(got, expected):
        return verdict(True, what + ", with no optimizer")
    if torch.allclose(got, _with_sgd(clear=False)):
        return verdict(False, what, expected=expected, got=got,
                       hint="each step added its gradient to the last ones: clear W.grad and "
                       "b.grad every step (= None after the update)")
    return verdict(False, what, expected=expected, got=got,
                   hint=f"{num_steps} steps of: loss = ((X @ W + b - y) ** 2).mean(), backward(), "
                   "W -= lr * W.grad and b -= lr * b.grad under torch.no_grad(), then clear .grad")


def momentum_on_zeros(lr: float = 0.1, momentum: float = 0.9) -> float:
    """How far SGD with momentum moves a parameter in a step where its .grad holds zeros."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([p], lr=lr, momentum=momentum)
    (1.0 * p).sum().backward()  # step 1: gradient 1.0
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)  # step 2: zeros, p plays no part
    before = p.detach().clone()
    optimizer.step()
    return float((p.detach() - before).abs())


def check_momentum_on_zeros(answer: Any) -> Verdict:
    """Exercise 2: SGD(lr=0.1, momentum=0.9), gradient 1.0 then zeros: the move in step 2."""
    lr, momentum = 0.1, 0.9
    return check_number(
        answer,
        momentum_on_zeros(lr, momentum),
        what="the distance p moves in step 2",
        hint="the buffer becomes momentum · buffer + 0; the step is lr times the buffer",
        mistakes=[
            (0.0, "with zeros, SGD still steps: the momentum buffer still holds 0.9 × the last gradient"),
            (lr, "0.1 is step 1's move; in step 2 the buffer has decayed to momentum × 1.0"),
            (momentum, "0.9 is the buffer; the step is lr times it"),
            (lr * (1 + momentum), "the old gradient is not added again: the buffer is 0.9 · 1.0 + 0"),
            (-lr * momentum, "that is the change; a distance is positive"),
        ],
    )


def moves_on_zeros(make_optimizer: Callable[..., torch.optim.Optimizer], set_to_none: bool = False) -> bool:
    """Whether `unused` moves in step 3 after gradients in steps 1-2 (notebook 03's table)."""
    gen = make_generator(4)
    used, unused = (torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    optimizer = make_optimizer([used, unused])
    for step in range(3):
        optimizer.zero_grad(set_to_none=set_to_none)
        loss = (used**2).sum() + ((unused**2).sum() if step < 2 else 0.0)
        before = unused.detach().clone()
        loss.backward()
        optimizer.step()
    return not torch.equal(unused.detach(), before)


def check_which_move(answer: Any) -> Verdict:
    """Exercise 3: the set of CANDIDATES that move a parameter whose .grad holds zeros."""
    what = "the optimizers that move a parameter whose .grad holds zeros"
    if answer is Ellipsis:
        return verdict(False, what, hint="replace the ... with your answer, then run the cell again")
    if isinstance(answer, str) or not isinstance(answer, (set, frozenset, list, tuple)):
        return verdict(False, what, expected='a set of names, such as {"Adagrad"}', got=describe(answer))
    names = {" ".join(str(n).split()) for n in answer}
    unknown = sorted(names - set(CANDIDATES))
    if unknown:
        return verdict(False, what, expected=f"names from {sorted(CANDIDATES)}", got=f"{unknown}",
                       hint="copy the names exactly as printed")
    truth = {name for name, make in CANDIDATES.items() if moves_on_zeros(make)}
    if names == truth:
        return verdict(True, f"{what}: {', '.join(sorted(truth))}")
    extra, missing = sorted(names - truth), sorted(truth - names)
    hints = [f"{n} stays: {WHY[n]}" for n in extra] + [f"{n} moves: {WHY[n]}" for n in missing]
    return verdict(False, what, expected=f"{len(truth)} names", got=f"{sorted(names)}", hint="; ".join(hints))
