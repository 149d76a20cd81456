"""Checks for the exercises of notebook 03 (manual descent and `.data`).

Each check works its expected answer out with torch, then prints a verdict (utils.exercises:
hints first, the answer only after several tries or with `reveal=True`). The two loops "by
hand" are watched while they run: a step of any `torch.optim` optimizer (a global step hook),
any use of `.data` (a spy on the attribute) and any call of `Variable` (a spy on its
constructor), both removed afterwards, get a verdict of their own. The checks' learning rate,
step count and momentum differ from the notebook's, so that a constant copied from it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.autograd import Variable
from torch.optim.optimizer import register_optimizer_step_pre_hook

from utils.data import make_regression
from utils.exercises import Verdict, call_learner_function, check_number, exercise, verdict

NUM_STEPS = 5
LR = 0.05  # not the notebook's 0.1
MOMENTUM = 0.8  # not the 0.9 used everywhere in notebooks 02-04

# Errors the old loop invites, and what is wrong in each (never the line that mends it).
_ERRORS = [
    ("'NoneType' object has no attribute", "W.grad is None until the first backward(): there is "
     "nothing to clear yet. Where in the step can the clearing go so that it never meets None?"),
    ("unsupported operand type(s)", "W = W - ... binds the name to a new tensor, which is not a leaf: "
     "its .grad stays None (section 3). Change the leaf itself instead"),
    ("only for scalar outputs", "backward() needs one number: the exercise's loss reduces the squared "
     "errors to one"),
    ("leaf Variable that requires grad", "autograd refuses to record an in-place change of a leaf it "
     "tracks. Where can the update run so that autograd records nothing?"),
    ("modified by an inplace operation", "the update changed W before a backward() that needed it: "
     "update after backward(), not between the forward pass and backward()"),
]


class _DataSpy:
    """Stands in for `Tensor.data` while a learner's loop runs: counts every read and write."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.uses = 0

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        self.uses += 1
        return self.original.__get__(obj, objtype)

    def __set__(self, obj: Any, value: Any) -> None:
        self.uses += 1
        self.original.__set__(obj, value)


@contextmanager
def _watch() -> Iterator[dict[str, int]]:
    """Count `.data` uses, `Variable` calls and `torch.optim` steps inside the block; leave
    torch as it was."""
    counts = {"data": 0, "steps": 0, "variable": 0}
    had_own = "data" in torch.Tensor.__dict__
    previous = torch.Tensor.__dict__.get("data")
    spy = _DataSpy(torch._C.TensorBase.__dict__["data"])
    handle = register_optimizer_step_pre_hook(
        lambda *_: counts.__setitem__("steps", counts["steps"] + 1))
    base_new = torch._C._LegacyVariableBase.__new__

    def variable_spy(cls: Any, *args: Any, **kwargs: Any) -> Any:
        counts["variable"] += 1
        return base_new(cls, *args, **kwargs)

    torch.Tensor.data = spy
    Variable.__new__ = variable_spy  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        if had_own:
            torch.Tensor.data = previous
        else:
            del torch.Tensor.data
        del Variable.__new__
        handle.remove()
        counts["data"] = spy.uses


def _problem() -> tuple[torch.Tensor, torch.Tensor, float]:
    data = make_regression(num_samples=24, num_features=4, seed=103, dtype=torch.float64)
    return data.X, data.y, LR


def _zeros() -> tuple[torch.Tensor, torch.Tensor]:
    W = torch.zeros(4, 1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    return W, b


def _reference(clear: bool = True, num_steps: int = NUM_STEPS, reduce: str = "mean", **options: Any) -> torch.Tensor:
    """W and b, flattened into one tensor, after torch.optim.SGD with `options`."""
    X, y, lr = _problem()
    W, b = _zeros()
    optimizer = torch.optim.SGD([W, b], lr=lr, **options)
    for _ in range(num_steps):
        if clear:
            optimizer.zero_grad()
        squared = (X @ W + b - y) ** 2
        (squared.mean() if reduce == "mean" else squared.sum()).backward()
        optimizer.step()
    return torch.cat([W.detach().flatten(), b.detach()])


def _run_by_hand(fn: Any, what: str, *extra: Any) -> tuple[Verdict | None, torch.Tensor, torch.Tensor]:
    """Run a learner's loop on fresh zeros, watched; a verdict if it broke the task's rules."""
    X, y, lr = _problem()
    W, b = _zeros()
    backwards: list[int] = []
    W.register_post_accumulate_grad_hook(lambda _: backwards.append(1))
    with _watch() as counts:
        ok, result = call_learner_function(fn, W, b, X, y, lr, *extra, NUM_STEPS, what=what, errors=_ERRORS)
    if not ok:
        return result, W, b
    if not backwards and torch.count_nonzero(W.detach()) == 0:
        return verdict(False, what, wanted=f"{NUM_STEPS} steps, each with a backward()",
                       got="no backward() call, and W unchanged",
                       hint="replace the ... with the loop: the loss, backward(), then the update"), W, b
    if counts["steps"]:
        return verdict(False, what, wanted="the update written by hand",
                       got=f"a torch.optim optimizer's step() ran {counts['steps']} time(s)",
                       hint="the exercise is the optimizer's job done by hand: what does SGD's step() "
                       "do to each parameter, in which context?"), W, b
    if counts["data"]:
        return verdict(False, what, wanted="no .data anywhere", got="your function read or wrote .data",
                       hint="every line of the old loop that used .data has a modern replacement: "
                       "see the table at the end of section 5"), W, b
    if counts["variable"]:
        return verdict(False, what, wanted="no Variable anywhere",
                       got=f"your function called Variable {counts['variable']} time(s)",
                       hint="Variable only hands back a plain tensor today (section 4): W and b "
                       "already track their gradients"), W, b
    if W._version == 0 and torch.count_nonzero(W.detach()):  # changed without a trace: .data by another road
        return verdict(False, what, wanted="W updated in place, under autograd's version counter",
                       got="W changed, but its version counter never moved",
                       hint="a change autograd cannot see is what section 5 warns against"), W, b
    return None, W, b


@exercise
def check_manual_loop(train_manually: Any) -> Verdict:
    """Exercise 1: `train_manually(W, b, X, y, lr, num_steps)`: SGD by hand, no optimizer, no .data."""
    what = "train_manually(W, b, X, y, lr, num_steps) trains W and b like torch.optim.SGD, by hand"
    broke, W, b = _run_by_hand(train_manually, what)
    if broke is not None:
        return broke
    got = torch.cat([W.detach().flatten(), b.detach()])
    if torch.count_nonzero(got) == 0:
        return verdict(False, what, wanted="W and b changed in place", got="W and b still all zeros",
                       hint="did the loop run, and did it change the caller's W? Binding the name W to a new "
                       "tensor inside the function leaves the caller's W alone")
    expected = _reference()
    if torch.allclose(got, expected):
        return verdict(True, what + ": no optimizer, no .data")
    mistakes = [
        (_reference(clear=False), "each step added its gradient to the last ones: what should .grad hold when "
         "the next backward() starts?"),
        (_reference(reduce="sum"), "a sum of squared errors makes every step larger: the exercise's loss is "
         "their mean"),
        (_reference(num_steps=NUM_STEPS - 1), "one step short: how many times does your loop run?"),
        (_reference(num_steps=NUM_STEPS + 1), "one step too many: how many times does your loop run?"),
    ]
    hint = next((why for wrong, why in mistakes if torch.allclose(got, wrong)),
                "compare one step of yours with section 1's loop: the loss, backward(), the update, the clearing")
    return verdict(False, what, got=got, hint=hint, expected=expected)


def gradient_after_data() -> tuple[float, float]:
    """Exercise 2's code: (w.grad after w.data.add_(1.0), the true gradient at the forward pass's w)."""
    w = torch.tensor(2.0, requires_grad=True)
    (true_grad,) = torch.autograd.grad(w**3, w)
    loss = w**3
    w.data.add_(1.0)
    loss.backward()
    return float(w.grad), float(true_grad)


@exercise
def check_gradient_after_data(answer: Any) -> Verdict:
    """Exercise 2: `loss = w ** 3` at w = 2, then `w.data.add_(1.0)`, then `backward()`: w.grad?"""
    got_grad, true_grad = gradient_after_data()
    return check_number(
        answer,
        got_grad,
        what="w.grad after a change through .data between the forward pass and backward()",
        hint=["which w does backward() read when it computes the derivative of w³?",
              "backward() uses the w it saved in the forward pass: the same memory, changed since"],
        mistakes=[
            (true_grad, f"{true_grad:g} is the true gradient at w = 2; did backward() notice that w changed?"),
            (3.0, "3 is the new value of w, not a gradient"),
            (9.0, "right w, but the derivative of w³ is 3·w²"),
            (true_grad + 1.0, "the change is to w, not to its gradient"),
        ],
    )


@exercise
def check_momentum_by_hand(train_with_momentum: Any) -> Verdict:
    """Exercise 3: `train_with_momentum(W, b, X, y, lr, momentum, num_steps)`: SGD with momentum by hand."""
    what = "train_with_momentum(W, b, X, y, lr, momentum, num_steps) matches SGD with momentum, by hand"
    broke, W, b = _run_by_hand(train_with_momentum, what, MOMENTUM)
    if broke is not None:
        return broke
    got = torch.cat([W.detach().flatten(), b.detach()])
    if torch.count_nonzero(got) == 0:
        return verdict(False, what, wanted="W and b changed in place", got="W and b still all zeros",
                       hint="did the loop run, and did it change the caller's W and b in place?")
    expected = _reference(momentum=MOMENTUM)
    if torch.allclose(got, expected):
        return verdict(True, what + ": the history lives in your buffers, not in .grad")
    mistakes = [
        (_reference(), "these are plain SGD's parameters: the momentum buffer is missing, or it is not what "
         "moves W"),
        (_reference(momentum=MOMENTUM, dampening=MOMENTUM), "the new gradient is scaled by (1 - momentum): "
         "PyTorch's default adds it whole (dampening=0)"),
        (_reference(clear=False, momentum=MOMENTUM), "the buffer already keeps the history: .grad must hold "
         "this step's gradient only"),
        (_reference(clear=False), f"without clearing, .grad is a running sum: momentum 1, not {MOMENTUM}. Where "
         "should the decaying history live?"),
    ]
    hint = next((why for wrong, why in mistakes if torch.allclose(got, wrong)),
                "per parameter and step: buffer = momentum · buffer + grad (the first step: buffer = grad), "
                "then p -= lr · buffer")
    return verdict(False, what, got=got, hint=hint, expected=expected)

