"""Checks for the exercises of notebook 07 (accumulation across processes).

Each check works its expected answer out (with torch where there is something to compute),
then prints a verdict. None of them starts processes: they run in the notebook's own.
"""

from __future__ import annotations

import operator
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from utils.device import make_generator
from utils.exercises import Verdict, _short, call_learner_function, check_number, describe, exercise, verdict

FITTING = [(32, 2, 4), (32, 1, 4), (32, 8, 4), (96, 3, 4), (64, 4, 2)]
# No whole number of micro-batches fits: neither factor divides 32; world_size divides it but
# the product does not (32 / 2 = 16, 16 / 3 is not whole); train_batch_size divides, world_size not.
NOT_FITTING = [(32, 3, 4), (32, 2, 3), (30, 4, 3)]


@exercise
def check_accumulation_steps_for(accumulation_steps_for: Any) -> Verdict:
    """Exercise 1: `accumulation_steps_for(effective_batch_size, world_size, train_batch_size)`."""
    what = "accumulation_steps_for(effective_batch_size, world_size, train_batch_size)"
    for effective, world_size, train_batch_size in FITTING:
        expected = effective // (world_size * train_batch_size)
        call = f"accumulation_steps_for({effective}, {world_size}, {train_batch_size})"
        ok, result = call_learner_function(accumulation_steps_for, effective, world_size, train_batch_size,
                                           what=what, errors=_RaisedOnFitting(call))
        if not ok:
            return result
        if _whole_number(result):
            result = operator.index(result)  # numpy and 0-d tensor ints work in range() too
        if isinstance(result, bool) or not isinstance(result, int):
            if result is None:
                hint = "your function returns None: end it with return and the number of micro-batches"
            elif isinstance(result, float) and result == expected:
                hint = "return an int: range() needs a whole number of micro-batches"
            else:
                hint = "return a whole number of micro-batches"
            return verdict(False, what, wanted=f"{call} to return an int", got=describe(result), hint=hint,
                           expected=f"{call} == {expected}")
        if result != expected:
            hints = {
                effective // train_batch_size: "you left out world_size: every process adds train_batch_size "
                "samples per micro-batch",
                effective // world_size: "you left out train_batch_size: each micro-batch holds that many samples",
                effective: "that is the effective batch itself, not a number of micro-batches",
            }
            product = world_size * train_batch_size * result
            return verdict(False, what, got=f"{call} returned {result}",
                           hint=hints.get(result, f"{world_size} × {train_batch_size} × {result} = {product} "
                                          f"samples per step, not {effective}"),
                           expected=f"{call} == {expected}")
    for case in NOT_FITTING:
        if (early := _check_not_fitting(accumulation_steps_for, what, *case)) is not None:
            return early
    return verdict(True, what + ", with a ValueError when no whole number of micro-batches fits")


class _RaisedOnFitting:
    """The hint for a learner's function that raises ValueError where the sizes fit: read while
    call_learner_function handles the error (the exception being handled says which kind it is)."""

    def __init__(self, call: str) -> None:
        self.call = call

    def __iter__(self) -> Iterator[tuple[str, str]]:
        if isinstance(sys.exc_info()[1], ValueError):
            yield "", (f"these sizes fit: a whole number of micro-batches gives the effective batch, yet "
                       f"{self.call} raised. When does your condition raise?")


def _whole_number(value: Any) -> bool:
    """True for an int-like value that range() accepts (numpy ints, 0-d int tensors), not a bool."""
    if isinstance(value, bool) or isinstance(value, torch.Tensor) and value.dtype == torch.bool:
        return False
    try:
        operator.index(value)
    except Exception:
        return False
    return True


def _check_not_fitting(accumulation_steps_for: Any, what: str, effective: int, world_size: int,
                       train_batch_size: int) -> Verdict | None:
    """None if `accumulation_steps_for` raises ValueError for these sizes, else a verdict."""
    call = f"accumulation_steps_for({effective}, {world_size}, {train_batch_size})"
    wanted = f"{call} to raise ValueError: no whole number of micro-batches gives {effective} samples"
    try:
        result = accumulation_steps_for(effective, world_size, train_batch_size)
    except ValueError:
        return None
    except Exception as error:
        return verdict(False, what, wanted=wanted, got=f"it raised {type(error).__name__}: {_short(error)}",
                       hint="raise ValueError(...) yourself, with a message that says what does not fit")
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        hint = (f"{world_size} × {train_batch_size} × {result:g} = {world_size * train_batch_size * result:g}, "
                f"not {effective}: check the whole product, not one factor")
    else:
        hint = "raise a ValueError when the effective batch is not a whole number of micro-steps"
    return verdict(False, what, wanted=wanted, got=f"it returned {describe(result)}", hint=hint)


def _divisor_for(world_size: int, gradient_accumulation_steps: int, train_batch_size: int = 2) -> float:
    """What DDP with accumulation must divide each micro-batch's mean loss by: worked out with torch."""
    generator = make_generator(505)
    n = world_size * gradient_accumulation_steps * train_batch_size
    X = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    w = torch.randn(3, 1, generator=generator, dtype=torch.float64, requires_grad=True)
    (whole,) = torch.autograd.grad(((X @ w - y) ** 2).mean(), w)
    micro = torch.stack([torch.autograd.grad(((Xm @ w - ym) ** 2).mean(), w)[0]
                         for Xm, ym in zip(X.split(train_batch_size), y.split(train_batch_size))])
    per_rank = micro.reshape(world_size, gradient_accumulation_steps, 3, 1).sum(dim=1)  # backward() adds
    ddp = per_rank.mean(dim=0)  # DDP's all-reduce: sum over ranks / world_size
    return float(torch.linalg.vector_norm(ddp) / torch.linalg.vector_norm(whole))


@exercise
def check_loss_divisor(answer: Any) -> Verdict:
    """Exercise 2: world_size 4, gradient_accumulation_steps 8: divide each micro-batch's loss by?"""
    world_size, steps = 4, 8
    return check_number(
        answer,
        _divisor_for(world_size, steps),
        what="the number to divide each micro-batch's loss by",
        hint="on each process, backward() adds up the micro-batches; DDP then averages over the "
             "processes",
        mistakes=[
            (world_size * steps, f"{world_size * steps} = world_size × steps: DDP already divides the "
             "all-reduced sum by world_size, so your step divides by world_size twice"),
            (world_size, "DDP already averages over the 4 processes; what is left is the sum over "
             "micro-batches that backward() builds on each one"),
            (1, "undivided, each process's .grad is the sum of its micro-batches' gradients, not their "
                "mean: how many does backward() add up on one process?"),
            (2, "loss_fn already averages over the train_batch_size samples of a micro-batch"),
        ],
    )


class FakeDDP:
    """Stands in for a DDP model in exercise 3: whether a backward() here would all-reduce.

    Like `DistributedDataParallel`, it keeps that in `require_backward_grad_sync`, which
    `no_sync()` sets to False inside its `with` block (so a loop that sets the attribute
    itself, as notebook 07 shows, is seen the way DDP would see it).
    """

    def __init__(self) -> None:
        self.require_backward_grad_sync = True

    @property
    def syncing(self) -> bool:
        """Whether a backward() run now would all-reduce."""
        return bool(self.require_backward_grad_sync)

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Like `DistributedDataParallel.no_sync`: inside it, backward() does not all-reduce."""
        before, self.require_backward_grad_sync = self.require_backward_grad_sync, False
        try:
            yield
        finally:
            self.require_backward_grad_sync = before


def _synced_micro_steps(sync_context: Any, steps: int, what: str) -> tuple[bool, Any]:
    model = FakeDDP()
    synced = []
    for micro_step in range(steps):
        ok, context = call_learner_function(sync_context, model, micro_step, steps, what=what)
        if not ok:
            return False, context
        try:
            enterable = hasattr(context, "__enter__") and hasattr(context, "__exit__")
        except Exception:  # an object whose attribute lookup itself raises
            enterable = False
        if isinstance(context, type) or not enterable:
            if isinstance(context, type):
                hint = (f"that is the class {context.__name__}; `with` needs an object of it: add the "
                        "parentheses that call it")
            elif callable(context):
                hint = "call it: model.no_sync() returns the context manager, model.no_sync is the method"
            else:
                hint = "return something `with` can enter: a context manager"
            return False, verdict(False, what, wanted="a context manager object for `with`", got=describe(context),
                                  hint=hint)
        try:
            with context:
                synced.append(model.syncing)  # where loss.backward() would run
        except Exception as error:
            return False, verdict(False, what, wanted="a context manager object for `with`",
                                  got=f"`with` on it raised {type(error).__name__}: {_short(error)}",
                                  hint="return model.no_sync() or contextlib.nullcontext(), called")
    return True, synced


@exercise
def check_sync_context(sync_context: Any) -> Verdict:
    """Exercise 3: `sync_context(model, micro_step, gradient_accumulation_steps)` for `with`."""
    what = "sync_context(model, micro_step, gradient_accumulation_steps)"
    for steps in (4, 1, 3):
        ok, synced = _synced_micro_steps(sync_context, steps, what)
        if not ok:
            return synced
        expected = [micro_step == steps - 1 for micro_step in range(steps)]
        if synced != expected:
            at = [m for m, s in enumerate(synced) if s]
            got = f"all-reduces at micro-steps {at} of 0..{steps - 1}"
            micro_steps = "1 micro-step" if steps == 1 else f"{steps} micro-steps"
            return verdict(False, what, wanted=f"one all-reduce per window of {micro_steps}", got=got,
                           hint=_sync_hint(at, steps, right_for_4=steps != 4),
                           expected=f"an all-reduce at micro-step {steps - 1} only")
    return verdict(True, what + ": no all-reduce for all but the last micro-step of each window")


def _sync_hint(at: list[int], steps: int, right_for_4: bool = False) -> str:
    """What is wrong with all-reducing at micro-steps `at` of a window of `steps`: a question, never the
    condition that mends it. `right_for_4`: windows of 4 (checked first) were right."""
    if len(at) == steps and steps > 1:
        hint = ("every micro-step all-reduces: a window needs one all-reduce, once all its gradients are "
                "added. Which micro-steps can skip it?")
    elif not at:
        hint = ("no micro-step all-reduces, so the processes never share their gradients: one micro-step "
                "of each window must run outside no_sync(). Which one?")
    elif len(at) > 1:
        hint = (f"{len(at)} micro-steps of one window all-reduce: one is enough, if it comes when the "
                "window's gradients are all added. Which micro-steps does your condition let through?")
    else:
        hint = (f"one all-reduce, but at micro-step {at[0]}, before the window's later gradients are added: "
                "which micro-step adds the last one? (micro_step counts from 0)")
    if right_for_4:
        return (f"right for windows of 4 micro-steps, not of {steps}: is a number written into your "
                f"condition where gradient_accumulation_steps belongs? Here {hint}")
    return hint
