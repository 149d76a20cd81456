"""Checks for the exercises of notebook 08 (check your own loop).

Each check trains a fresh model with the learner's `train(model, optimizer, batches)` under
`ZeroGradGuard` and answers with what the guard saw. A silent guard is not enough (a loop
that never calls backward() is silent too), so the check also counts backward() calls (one
per micro-batch: accumulation means separate backward() calls, never one big batch or one
summed loss), the samples of each forward pass (one micro-batch: a forward pass on a whole
window keeps the window's activations, whatever backward() does next) and steps, and compares
the trained weights with those of a reference loop it runs itself. Hints name the mistake,
never the mended code (utils.exercises: the guard's "Fix:" shows only once the answer is
revealed). Each exercise cell hands out a buggy loop to mend: run as handed out (Run All on a
fresh copy), it gets its verdict without spending a try (`same_code`).
"""

from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from utils.data import make_regression
from utils.exercises import Verdict, call_learner_function, exercise, same_code, verdict
from utils.guard import StaleGradientWarning, ZeroGradGuard

GRADIENT_ACCUMULATION_STEPS = 2  # the notebook's gradient_accumulation_steps
Batches = list[tuple[torch.Tensor, torch.Tensor]]

_QUESTIONS = {  # the first rung of a hint: what the guard saw, as a question about the loop
    "stale": "a step used gradients that an earlier step had already used: what in your loop empties "
    ".grad between one step and the next?",
    "discarded": "gradients were thrown away before a step could use them: what runs between "
    "loss.backward() and the optimizer.step() that should use it?",
    "window": "a step should use the gradients of every micro-batch of its window: what throws away "
    "those of the micro-batches that came before the last one?",
}


# The loops the exercise cells of notebook 08 hand out to be mended, as the cells write them
# (tests/test_ex08.py checks that they still match the notebook). Compiled, never run here.
HANDED_OUT_SOURCE = {
    "stale": """
def train(model, optimizer, batches):
    for X, y in batches:
        loss = loss_fn(model(X), y)
        loss.backward()
        optimizer.step()
""",
    "discarded": """
def train(model, optimizer, batches):
    for X, y in batches:
        loss = loss_fn(model(X), y)
        loss.backward()
        optimizer.zero_grad()
        optimizer.step()
""",
    "window": """
def train(model, optimizer, batches):
    for i, (X, y) in enumerate(batches):
        optimizer.zero_grad()
        loss = loss_fn(model(X), y) / gradient_accumulation_steps
        loss.backward()
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()
""",
}


def _compiled(source: str) -> Callable[..., Any]:
    scope: dict[str, Any] = {}
    exec(compile(source, "<notebook 08, as handed out>", "exec"), scope)
    return scope["train"]


HANDED_OUT = {name: _compiled(source) for name, source in HANDED_OUT_SOURCE.items()}
_ERRORS = [("is not defined", "is that name defined in a cell above that has not run yet (Run All runs "
            "them), or is it misspelled?")]


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


def _split(message: str) -> tuple[str, str, str]:
    """A guard message in three: what it saw, the probable mistake, the fix."""
    message = message.split(" If the clear is intended")[0]
    seen, _, rest = message.partition(" Probably")
    probably, _, fix = ("Probably" + rest).partition(" Fix: ")
    return seen, probably.strip(), fix.strip()


def _guard_verdict(guard: ZeroGradGuard, what: str, accumulate: int, say: Callable[..., Verdict] = verdict
                   ) -> Verdict:
    first = guard.findings[0]
    steps = len({f.step for f in guard.findings})
    seen, probably, fix = _split(first.message)
    kind = "stale" if first.kind is StaleGradientWarning else "window" if accumulate > 1 else "discarded"
    question = _QUESTIONS[kind]
    return say(False, what, wanted="the guard silent on every step",
               got=f"{first.kind.__name__} on {steps} step(s); the first: {seen}",
               hint=[question, f"the guard's diagnosis: {probably}" if probably else question],
               expected=f"the guard's fix: {fix}" if fix else None)


@dataclass
class _Run:
    """What the learner's loop did on a fresh problem."""

    ok: bool  # it returned (else `result` is the verdict saying why not)
    result: Any
    model: torch.nn.Module  # trained
    initial: torch.nn.Module  # a copy from before
    batches: Batches
    guard: ZeroGradGuard
    backward_calls: list[int]  # one per backward() that reached the first weight
    rows: list[int]  # samples in each forward pass of the model (-1: not a batch, or under no_grad)


def _run_guarded(train: Any, what: str) -> _Run:
    """Run the learner's loop on a fresh problem under the guard, counting backward() calls and
    the samples of each forward pass."""
    model, optimizer, batches = make_problem()
    initial = copy.deepcopy(model)
    backward_calls: list[int] = []  # accumulations into the first weight: one per backward()
    rows: list[int] = []
    handles = [model[0].weight.register_post_accumulate_grad_hook(lambda _: backward_calls.append(1)),
               model.register_forward_pre_hook(lambda module, args: rows.append(  # no_grad keeps nothing
                   len(args[0]) if args and isinstance(args[0], torch.Tensor) and args[0].dim()
                   and torch.is_grad_enabled() else -1))]
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")  # the guard's findings are read below, not shown twice
            with ZeroGradGuard(optimizer, model=model, max_warnings=None) as guard:
                ok, result = call_learner_function(train, model, optimizer, batches, what=what, errors=_ERRORS)
    finally:
        for handle in handles:
            handle.remove()
    return _Run(ok, result, model, initial, batches, guard, backward_calls, rows)


def _one_micro_batch_per_pass(run: _Run, what: str, say: Callable[..., Verdict]) -> Verdict | None:
    """With accumulation, a failing verdict unless each forward pass and backward() takes one whole
    micro-batch; None if they do."""
    size, micro = len(run.batches[0][0]), len(run.batches)
    if any(rows > size for rows in run.rows):
        most = max(run.rows)
        return say(False, what, wanted=f"one forward pass per micro-batch ({size} samples)",
                   got=f"forward passes on up to {most} samples, for micro-batches of {size}",
                   hint=[f"calling backward() on parts of one forward pass's output still keeps the activations "
                         f"of all {most} samples in memory until the last backward(): the very memory that "
                         "accumulation exists to save. How many samples may one forward pass see?",
                         "accumulation saves memory only where each micro-batch goes through the model, and "
                         "through backward(), apart from the others of its window"])
    if any(0 < rows < size for rows in run.rows):
        return say(False, what, wanted=f"one forward pass and one backward() per micro-batch, on all its {size} "
                   "samples", got=f"forward passes on as few as {min(r for r in run.rows if r > 0)} samples",
                   hint="each micro-batch is already the piece that fits in memory: the task gives it one "
                   "forward pass and one backward(), whole, not split further")
    if len(run.backward_calls) > micro:
        return say(False, what, wanted="exactly one backward() per micro-batch",
                   got=f"{len(run.backward_calls)} backward() calls for {micro} micro-batches",
                   hint="more backward() calls than micro-batches: does a loss go through backward() more than "
                   "once, or does the loop go over the batches more than once?")
    return None


def _check_loop(train: Any, *, what: str, accumulate: int, handed_out: Callable[..., Any],
                then: Callable[[Callable[..., Verdict]], Verdict | None] | None = None) -> Verdict:
    """Run the learner's loop and judge it; the loop as handed out gets its verdict as no try."""
    say = functools.partial(verdict, counts=not same_code(train, handed_out))
    run = _run_guarded(train, what)
    if not run.ok:
        return run.result
    model, initial, batches, guard, backward_calls = run.model, run.initial, run.batches, run.guard, run.backward_calls
    micro = len(batches)
    expected_steps = micro // accumulate
    per_step = "one optimizer.step() per micro-batch" if accumulate == 1 else (
        "one optimizer.step() per window of gradient_accumulation_steps micro-batches")
    if guard.steps == 0:
        return say(False, what, wanted=per_step, got="no optimizer.step() on the optimizer it was given",
                   hint="your function never called optimizer.step() on the optimizer it was given; "
                   "replace the ... with the mended loop", expected=f"{expected_steps} steps")
    if guard.findings:
        return _guard_verdict(guard, what, accumulate, say)
    if 0 < len(backward_calls) < micro and guard.steps == expected_steps:
        return say(False, what, wanted="one backward() per micro-batch",
                   got=f"{len(backward_calls)} backward() calls for {micro} micro-batches",
                   hint=["one big batch, or one loss summed over the window, gives the same gradient, "
                         "but holds the activations of the whole window in memory at once: the very "
                         "thing accumulation exists to avoid. Keep the micro-batches apart"],
                   expected=f"{micro} backward() calls, one per micro-batch")
    if accumulate > 1 and (wrong := _one_micro_batch_per_pass(run, what, say)) is not None:
        return wrong
    if guard.steps != expected_steps:
        if accumulate > 1 and guard.steps == micro:
            hint = "with gradient_accumulation_steps micro-batches in a window, how many windows do the batches make?"
        else:
            hint = "count the micro-batches your loop goes through, and the steps it takes for them"
        return say(False, what, wanted=per_step,
                   got=f"{guard.steps} calls of optimizer.step() for {micro} micro-batches", hint=hint,
                   expected=f"{expected_steps} calls of optimizer.step()")
    trained = [p.detach() for p in model.parameters()]
    if _same(trained, _reference(initial, batches, accumulate)):
        failed = then(say) if then is not None else None
        if failed is not None:
            return failed
        return say(True, f"{what}: the guard stays silent over {expected_steps} steps and the model "
                   "ends where the reference loop takes it")
    unmoved = [name for (name, p), p0 in zip(model.named_parameters(), initial.parameters()) if torch.equal(p, p0)]
    if accumulate > 1 and _same(trained, _reference(initial, batches, accumulate, divide=False)):
        hint = ("each step used the sum of its window's gradients, not their mean: gradient_accumulation_steps "
                "times too large")
    elif not backward_calls:
        hint = "no backward() reached the model's weights: what fills .grad before a step?"
    elif unmoved:
        which = "none of the weights moved" if len(unmoved) == len(trained) else (
            f"{', '.join(unmoved)} never moved")
        hint = (f"{which}, although backward() filled their .grad and the steps ran: what empties .grad "
                "(even by hand, in place or with None) before the step can use it?")
    else:
        hint = "does your loop compute loss_fn(model(X), y) for every (X, y) of batches, in order?"
    return say(False, what, wanted="the weights the reference loop reaches",
               got="different weights (the guard was silent)", hint=hint)


@exercise
def check_no_stale_gradients(train: Any) -> Verdict:
    """Exercise 1: mend `forgot_zero_grad` so that no step uses an earlier step's gradient."""
    return _check_loop(train, what="train(model, optimizer, batches) clears old gradients", accumulate=1,
                       handed_out=HANDED_OUT["stale"])


@exercise
def check_no_discarded_gradients(train: Any) -> Verdict:
    """Exercise 2: mend `zero_grad_after_backward` so that every step uses its batch's gradient."""
    return _check_loop(train, what="train(model, optimizer, batches) steps with its batch's gradient",
                       accumulate=1, handed_out=HANDED_OUT["discarded"])


OTHER_K = 4  # exercise 3 is run again with gradient_accumulation_steps = 4: does the loop follow it?


def _with_other_k(train: Any, what: str, say: Callable[..., Verdict] = verdict) -> Verdict | None:
    """With the notebook's gradient_accumulation_steps set to 4, a failing verdict, or None if right.

    The learner's loop reads the notebook's variable `gradient_accumulation_steps`; a loop that
    writes the number 2 into itself instead is right only for 2. Only where the learner's
    module defines that variable (a notebook); it is put back whatever happens.
    """
    scope = getattr(train, "__globals__", None)
    if not isinstance(scope, dict) or not isinstance(scope.get("gradient_accumulation_steps"), int):
        return None
    saved = scope["gradient_accumulation_steps"]
    scope["gradient_accumulation_steps"] = OTHER_K
    what_here = f"{what}, and with gradient_accumulation_steps = {OTHER_K}"
    try:
        run = _run_guarded(train, what_here)
    finally:
        scope["gradient_accumulation_steps"] = saved
    if not run.ok:
        return run.result
    model, initial, batches, guard = run.model, run.initial, run.batches, run.guard
    expected_steps = len(batches) // OTHER_K
    if guard.steps != expected_steps:
        return say(False, what_here, wanted=f"{expected_steps} calls of optimizer.step() for {len(batches)} "
                   f"micro-batches", got=f"{guard.steps} calls",
                   hint=f"right for gradient_accumulation_steps = {saved} only: does your loop use the "
                   f"variable gradient_accumulation_steps, or the number {saved}?")
    if guard.findings:
        return _guard_verdict(guard, what_here, OTHER_K, say)
    if (wrong := _one_micro_batch_per_pass(run, what_here, say)) is not None:
        return wrong
    if not _same([p.detach() for p in model.parameters()], _reference(initial, batches, OTHER_K)):
        return say(False, what_here, wanted="the weights the reference loop reaches",
                   got="different weights (the windows were right)",
                   hint=f"the windows follow gradient_accumulation_steps; does the size of each step? What "
                   f"is each loss divided by, the variable or the number {saved}?")
    return None


@exercise
def check_gradient_accumulation(train: Any) -> Verdict:
    """Exercise 3: mend `zero_grad_in_window`: one step per GRADIENT_ACCUMULATION_STEPS micro-batches."""
    what = (f"train(model, optimizer, batches) accumulates over {GRADIENT_ACCUMULATION_STEPS} micro-batches "
            "per step")
    return _check_loop(train, what=what, accumulate=GRADIENT_ACCUMULATION_STEPS, handed_out=HANDED_OUT["window"],
                       then=lambda say: _with_other_k(train, what, say))
