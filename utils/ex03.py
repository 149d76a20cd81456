"""Checks for the exercises of notebook 03 (manual descent and `.data`).

Each check works its expected answer out with torch, then prints a verdict (utils.exercises:
hints first, the answer only after several tries or with `reveal=True`). The two loops "by
hand" are watched while they run: a step of any `torch.optim` optimizer (a global step hook),
any use of `.data` (a spy on the attribute), any call of `Variable` (a spy on its
constructor) and every backward() (a spy on `torch.autograd.backward`), all removed
afterwards, get a verdict of their own; a hook on W and b sees whether `.grad` still holds an
earlier gradient when a backward() begins (exercise 3 asks for the history in the learner's
own buffers, not in `.grad`). The checks' learning rate, step count and momentum differ from
the notebook's, so that a constant copied from it fails, with a hint that names it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import Variable
from torch.optim.optimizer import register_optimizer_step_pre_hook

from utils.data import make_regression
from utils.exercises import Verdict, call_learner_function, check_number, exercise, verdict

NUM_STEPS = 5
LR = 0.05  # not the notebook's 0.1
MOMENTUM = 0.8  # not the 0.9 used everywhere in notebooks 02-04
NOTEBOOK_LR, NOTEBOOK_NUM_STEPS, USUAL_MOMENTUM = 0.1, 20, 0.9  # what a learner may copy into a loop

# Errors the old loop invites, and what is wrong in each (never the line that mends it).
_ERRORS = [
    ("'NoneType' object has no attribute", "W.grad is None until the first backward(): there is "
     "nothing to clear yet. Where in the step can the clearing go so that it never meets None?"),
    ("only for scalar outputs", "backward() needs one number: the exercise's loss reduces the squared "
     "errors to one"),
    ("leaf Variable that requires grad", "autograd refuses to record an in-place change of a leaf it "
     "tracks. Where can the update run so that autograd records nothing?"),
    ("modified by an inplace operation", "the update changed W before a backward() that needed it: "
     "update after backward(), not between the forward pass and backward()"),
    ("does not require grad and does not have a grad_fn", "the loss has no graph to go back through: was it "
     "computed where autograd records nothing, inside torch.no_grad()?"),
    ("backward through the graph a second time", "a second backward() went through a graph that the first "
     "one had used up: does each step compute its own loss?"),
]
_NONE_AFTER_REBINDING = ("unsupported operand type(s)", "W = W - ... binds the name to a new tensor, which "
                         "is not a leaf: its .grad stays None (section 3). Change the leaf itself instead")
_NONE_AFTER_CLEARING = ("unsupported operand type(s)", "a .grad was None when your update read it, right "
                        "after the first backward(): what did your step do to .grad between backward() "
                        "and the update?")


class _Errors:
    """The hints for a learner's error, chosen when it happens: a .grad found None in the first step
    was cleared too early; in a later one, W was rebound to a non-leaf (section 3)."""

    def __init__(self, backwards: list[int]) -> None:
        self.backwards = backwards

    def __iter__(self) -> Iterator[tuple[str, str]]:
        later = len(self.backwards) > 1
        return iter([*_ERRORS, _NONE_AFTER_REBINDING if later else _NONE_AFTER_CLEARING])


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
    """Count `.data` uses, `Variable` calls, `torch.optim` steps and backward() calls on any tensor
    inside the block; leave torch as it was."""
    counts = {"data": 0, "steps": 0, "variable": 0, "backward": 0}
    had_own = "data" in torch.Tensor.__dict__
    previous = torch.Tensor.__dict__.get("data")
    spy = _DataSpy(torch._C.TensorBase.__dict__["data"])
    handle = register_optimizer_step_pre_hook(
        lambda *_: counts.__setitem__("steps", counts["steps"] + 1))
    base_new = torch._C._LegacyVariableBase.__new__

    def variable_spy(cls: Any, *args: Any, **kwargs: Any) -> Any:
        counts["variable"] += 1
        return base_new(cls, *args, **kwargs)

    original_backward = torch.autograd.backward

    def backward_spy(*args: Any, **kwargs: Any) -> Any:  # Tensor.backward() calls it too
        counts["backward"] += 1
        return original_backward(*args, **kwargs)

    torch.Tensor.data = spy
    Variable.__new__ = variable_spy  # type: ignore[method-assign]
    torch.autograd.backward = backward_spy
    try:
        yield counts
    finally:
        if had_own:
            torch.Tensor.data = previous
        else:
            del torch.Tensor.data
        del Variable.__new__
        torch.autograd.backward = original_backward
        handle.remove()
        counts["data"] = spy.uses


def _problem() -> tuple[torch.Tensor, torch.Tensor, float]:
    data = make_regression(num_samples=24, num_features=4, seed=103, dtype=torch.float64)
    return data.X, data.y, LR


def _zeros() -> tuple[torch.Tensor, torch.Tensor]:
    W = torch.zeros(4, 1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    return W, b


def _reference(clear: bool = True, num_steps: int = NUM_STEPS, reduce: str = "mean", lr: float = LR,
               **options: Any) -> torch.Tensor:
    """W and b, flattened into one tensor, after torch.optim.SGD with `options`."""
    X, y, _ = _problem()
    W, b = _zeros()
    optimizer = torch.optim.SGD([W, b], lr=lr, **options)
    for _ in range(num_steps):
        if clear:
            optimizer.zero_grad()
        squared = (X @ W + b - y) ** 2
        (squared.mean() if reduce == "mean" else squared.sum()).backward()
        optimizer.step()
    return torch.cat([W.detach().flatten(), b.detach()])


@dataclass
class _Run:
    """What a learner's loop did to the check's W and b."""

    broke: Verdict | None  # a verdict when the loop broke the task's rules or raised
    got: torch.Tensor  # W and b afterwards, flattened into one tensor
    carried: dict[str, int]  # "W"/"b" → the first backward() that found its .grad holding a gradient
    updated: bool = False  # whether W was changed in place (its version counter moved), to zero or not


def _watch_carry(name: str, p: torch.Tensor, carried: dict[str, int]) -> None:
    """Record in `carried` the first backward() that begins with p.grad holding a gradient (a hook on
    a leaf runs before backward() adds into .grad)."""
    calls = [0]

    def before(grad: torch.Tensor) -> None:
        calls[0] += 1
        if name not in carried and p.grad is not None and bool(torch.count_nonzero(p.grad)):
            carried[name] = calls[0]

    p.register_hook(before)


def _run_by_hand(fn: Any, what: str, *extra: Any) -> _Run:
    """Run a learner's loop on fresh zeros, watched; a verdict if it broke the task's rules."""
    X, y, lr = _problem()
    W, b = _zeros()
    backwards: list[int] = []
    W.register_post_accumulate_grad_hook(lambda _: backwards.append(1))
    carried: dict[str, int] = {}
    _watch_carry("W", W, carried)
    _watch_carry("b", b, carried)
    with _watch() as counts:
        ok, result = call_learner_function(fn, W, b, X, y, lr, *extra, NUM_STEPS, what=what,
                                           errors=_Errors(backwards))
    got = torch.cat([W.detach().flatten(), b.detach()])

    def broke(verdict_: Verdict) -> _Run:
        return _Run(verdict_, got, carried, W._version > 0)

    if not ok:
        return broke(result)
    if not backwards and torch.count_nonzero(W.detach()) == 0:
        if counts["backward"]:
            return broke(verdict(False, what, wanted="the W and b the check passed, updated in place",
                                 got=f"backward() ran {counts['backward']} time(s), never through the "
                                 "check's W, which is unchanged",
                                 hint="does your function work on copies of W and b, or return new ones? "
                                 "The task trains the leaves it is given, in place"))
        return broke(verdict(False, what, wanted=f"{NUM_STEPS} steps, each with a backward()",
                             got="no backward() call, and W unchanged",
                             hint="a step of descent needs the loss's gradient first: where does your "
                             "loop compute it?"))
    if counts["steps"]:
        return broke(verdict(False, what, wanted="the update written by hand",
                             got=f"a torch.optim optimizer's step() ran {counts['steps']} time(s)",
                             hint="the exercise is the optimizer's job done by hand: what does SGD's "
                             "step() do to each parameter, in which context?"))
    if counts["data"]:
        return broke(verdict(False, what, wanted="no .data anywhere", got="your function read or wrote .data",
                             hint="every line of the old loop that used .data has a modern replacement: "
                             "see the table at the end of section 5"))
    if counts["variable"]:
        return broke(verdict(False, what, wanted="no Variable anywhere",
                             got=f"your function called Variable {counts['variable']} time(s)",
                             hint="Variable only hands back a plain tensor today (section 4): W and b "
                             "already track their gradients"))
    if W._version == 0 and torch.count_nonzero(W.detach()):  # changed without a trace: .data by another road
        return broke(verdict(False, what, wanted="W updated in place, under autograd's version counter",
                             got="W changed, but its version counter never moved",
                             hint="a change autograd cannot see is what section 5 warns against"))
    return _Run(None, got, carried, W._version > 0)


def _copied_constants(got: torch.Tensor, **options: Any) -> str:
    """A hint if `got` is the right loop run with a number copied from the notebook instead of an
    argument (lr, num_steps, momentum); else ""."""
    choices = {"lr": (LR, NOTEBOOK_LR), "num_steps": (NUM_STEPS, NOTEBOOK_NUM_STEPS)}
    if "momentum" in options:
        choices["momentum"] = (MOMENTUM, USUAL_MOMENTUM)
    for picks in itertools.product(*([False, True] for _ in choices)):
        if not any(picks):
            continue
        used = {name: pair[pick] for (name, pair), pick in zip(choices.items(), picks)}
        if torch.allclose(got, _reference(**used)):
            copied = " and ".join(f"{name} = {used[name]:g}" for name, pick in zip(choices, picks) if pick)
            return (f"your loop uses {copied}, a number written into your code, not the one your function "
                    f"receives: use its arguments ({', '.join(choices)}); the check passes values of its own")
    return ""


def _carried_hint(carried: dict[str, int]) -> str:
    """A hint naming the parameters whose .grad still held a gradient when a backward() began; else ""."""
    if not carried:
        return ""
    names = " and ".join(f"{name}.grad" for name in sorted(carried, key="Wb".index))
    first = min(carried.values())
    return (f"{names} still held an earlier gradient when backward() ran in step {first}: what should "
            ".grad hold when the next backward() starts?")


def _unmoved_hint(got: torch.Tensor) -> str:
    """A hint if W or b never moved while the other did; else ""."""
    still = [name for name, part in (("W", got[:-1]), ("b", got[-1:])) if torch.count_nonzero(part) == 0]
    if len(still) == 1:
        return f"{still[0]} never moved: the task trains both W and b"
    return ""


def _still_zeros(what: str, run: _Run) -> Verdict:
    """The verdict on a loop that left W and b at their zeros."""
    if run.updated:
        return verdict(False, what, wanted="W and b moved by their gradients",
                       got="W updated in place, yet W and b still all zeros",
                       hint="your update ran, but moved nothing: what did .grad hold when the update read it?")
    return verdict(False, what, wanted="W and b changed in place", got="W and b still all zeros",
                   hint="did the loop run, and did it change the caller's W and b? Binding the name W to a new "
                   "tensor inside the function leaves the caller's W alone")


@exercise
def check_manual_loop(train_manually: Any) -> Verdict:
    """Exercise 1: `train_manually(W, b, X, y, lr, num_steps)`: SGD by hand, no optimizer, no .data."""
    what = "train_manually(W, b, X, y, lr, num_steps) trains W and b like torch.optim.SGD, by hand"
    run = _run_by_hand(train_manually, what)
    if run.broke is not None:
        return run.broke
    got = run.got
    if torch.count_nonzero(got) == 0:
        return _still_zeros(what, run)
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
        (_reference(maximize=True), "W and b moved uphill, where the loss grows: does your update add the "
         "gradient or subtract it?"),
    ]
    hint = (_copied_constants(got) or next((why for wrong, why in mistakes if torch.allclose(got, wrong)), "")
            or _unmoved_hint(got) or _carried_hint(run.carried)
            or "compare one step of yours with section 1's loop: the loss, backward(), the update, the clearing")
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
    """Exercise 3: `train_with_momentum(W, b, X, y, lr, momentum, num_steps)`: SGD with momentum by hand,
    the history in the learner's own buffers, `.grad` holding each step's gradient only."""
    what = "train_with_momentum(W, b, X, y, lr, momentum, num_steps) matches SGD with momentum, by hand"
    run = _run_by_hand(train_with_momentum, what, MOMENTUM)
    if run.broke is not None:
        return run.broke
    got = run.got
    if torch.count_nonzero(got) == 0:
        return _still_zeros(what, run)
    expected = _reference(momentum=MOMENTUM)
    if torch.allclose(got, expected):
        if run.carried:  # SGD's numbers, with .grad itself as the buffer (W.grad *= momentum, never cleared)
            names = " and ".join(f"{name}.grad" for name in sorted(run.carried, key="Wb".index))
            return verdict(False, what, wanted="the history in buffers of your own; .grad holding this "
                           "step's gradient only", got=f"{names} still held earlier gradients when backward() "
                           f"ran in step {min(run.carried.values())}: the history lived in .grad",
                           hint=["SGD's numbers, but the history is kept in .grad, where any zero_grad() "
                                 "wipes it and clip_grad_norm_ would clip it: where does the task ask it to "
                                 "live?",
                                 "the task keeps one buffer per parameter, apart from .grad, and clears "
                                 ".grad every step, as a training loop does"])
        return verdict(True, what + ": the history lives in your buffers, not in .grad")
    mistakes = [
        (_reference(), "these are plain SGD's parameters: the momentum buffer is missing, starts afresh every "
         "step, or is not what moves W"),
        (_reference(momentum=MOMENTUM, dampening=MOMENTUM), "the new gradient is scaled by (1 - momentum): "
         "PyTorch's default adds it whole (dampening=0)"),
        (_reference(clear=False, momentum=MOMENTUM), "the buffer already keeps the history: .grad must hold "
         "this step's gradient only"),
        (_reference(clear=False), f"without clearing, .grad is a running sum: momentum 1, not {MOMENTUM}. Where "
         "should the decaying history live?"),
        (_reference(maximize=True, momentum=MOMENTUM), "W and b moved uphill, where the loss grows: does your update "
         "add the buffer or subtract it?"),
    ]
    hint = (_copied_constants(got, momentum=MOMENTUM)
            or next((why for wrong, why in mistakes if torch.allclose(got, wrong)), "")
            or _unmoved_hint(got) or _carried_hint(run.carried)
            or ["your steps differ from SGD with momentum: work out steps 1 and 2 for one number by hand, "
                "and compare them with your loop's",
                "compare with the task's rule, part by part: how the buffer is updated (the new gradient "
                "added whole, the first step's buffer equal to the gradient), and how p moves with it"])
    return verdict(False, what, got=got, hint=hint, expected=expected)
