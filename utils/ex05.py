"""Checks for the exercises of notebook 05 (gradient accumulation).

Each check works its expected answer out with torch, recognises the usual mistakes by
running them too, then prints a verdict. Hints say what is wrong, never the answer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from utils.data import make_regression
from utils.exercises import Verdict, call_learner_function, check_number, exercise, verdict
from utils.measure import BackwardCounter


def _steps_of_window_loop(num_samples: int, train_batch_size: int, gradient_accumulation_steps: int,
                          num_epochs: int) -> int:
    """Run the window loop of notebook 05 on a one-weight model and count optimizer steps."""
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    micro_batches = list(torch.ones(num_samples, 1).split(train_batch_size))
    for _ in range(num_epochs):
        for start in range(0, len(micro_batches), gradient_accumulation_steps):
            window = micro_batches[start:start + gradient_accumulation_steps]
            num_in_window = sum(len(X) for X in window)
            for X in window:
                ((X @ weight).sum() / num_in_window).backward()
            optimizer.step()
            optimizer.zero_grad()
    return len(steps)


@exercise
def check_total_steps(answer: Any) -> Verdict:
    """Exercise 1: 100 samples, train_batch_size 8, k = 4, 3 epochs: the scheduler's total_steps."""
    num_samples, train_batch_size, k, num_epochs = 100, 8, 4, 3
    micro_per_epoch = math.ceil(num_samples / train_batch_size)
    return check_number(
        answer,
        _steps_of_window_loop(num_samples, train_batch_size, k, num_epochs),
        what="total_steps for 3 epochs of the window loop",
        hint="count the micro-batches of one epoch (the last may be short), then the windows "
             "they make, then multiply by the epochs",
        mistakes=[
            (num_epochs * (micro_per_epoch // k),
             "that counts only full windows (integer division): the short last window of each "
             "epoch steps too, so round up"),
            (micro_per_epoch // k, "that is one epoch's full windows; the run has 3 epochs and "
                                   "every window steps, the short last one too"),
            (math.ceil(micro_per_epoch / k), "that is one epoch; the scheduler counts the whole run"),
            (num_epochs * micro_per_epoch, "that counts micro-batches (backward() calls); a step "
                                           "comes once per window"),
            (micro_per_epoch, "that is the micro-batches of one epoch; the scheduler counts steps"),
            (num_epochs * num_samples / (train_batch_size * k),
             "samples ÷ effective batch is not a whole number: a step is a whole window, so round up "
             "per epoch"),
        ],
    )


SIZE, NUM_MICRO, K, LR = 4, 10, 4, 0.1  # 10 micro-batches of 4 samples: windows of 4, 4 and 2
OTHER_SIZES = (7, 3)  # a second epoch: 7 micro-batches, windows of 3, 3 and 1


def _setup(num_micro: int = NUM_MICRO) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    data = make_regression(num_samples=SIZE * num_micro, num_features=3, seed=104, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):  # leave the learner's random state alone
        model = nn.Linear(3, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.linspace(-1.0, 1.0, 3, dtype=torch.float64))
        model.bias.fill_(0.5)
    return model, [(X.clone(), y.clone()) for X, y in zip(data.X.split(SIZE), data.y.split(SIZE))]


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _big_batches(num_micro: int = NUM_MICRO, k: int = K) -> list[torch.Tensor]:
    """One step per window of micro-batches put together, the last window shorter."""
    model, micro_batches = _setup(num_micro)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for start in range(0, len(micro_batches), k):
        X, y = (torch.cat(parts) for parts in zip(*micro_batches[start:start + k]))
        nn.MSELoss()(model(X), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    return _params(model)


def _variant(kind: str, num_micro: int = NUM_MICRO, k: int = K) -> list[torch.Tensor]:
    """Train one epoch with a known mistake (an unknown kind: the last window divided by k)."""
    model, micro_batches = _setup(num_micro)
    loss_fn, optimizer = nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=LR)
    last = len(micro_batches) - 1
    for i, (X, y) in enumerate(micro_batches):
        if kind == "zero_grad before backward":
            optimizer.zero_grad()
        loss = loss_fn(model(X), y)
        (loss if kind == "no division" else loss / k).backward()
        window_ends = (i + 1) % k == 0 or (i == last and kind != "leaky")
        if kind == "step every micro-batch" or window_ends:
            optimizer.step()
            if kind != "never zero_grad":
                optimizer.zero_grad()
    return _params(model)


MISTAKES = {
    "leaky": "the short last window never reaches optimizer.step(): step at the end of the "
             "epoch too",
    "last window divided by k": "the short last window is divided as if it were full, so its step "
                                "is too small: normalise by what the window really holds",
    "no division": "each micro-batch's loss must be normalised: without it the step is "
                   "gradient_accumulation_steps times too large",
    "zero_grad before backward": "zero_grad() runs before every backward(), so only the last "
                                 "micro-batch of a window reaches the step",
    "step every micro-batch": "step() runs after every micro-batch instead of once per window",
    "never zero_grad": "the gradient of one window leaks into the next: clear it after each step",
}


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, z, rtol=1e-7, atol=1e-10) for x, z in zip(a, b))


def _run_epoch(train_one_epoch: Any, num_micro: int, k: int, what: str,
               errors: Any = ()) -> tuple[Any, ...]:
    """Run the learner's epoch on fresh data; what it did: (ok, result, start, params, counter, rows, lrs)."""
    model, micro_batches = _setup(num_micro)
    start = _params(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    rows_per_forward: list[int] = []
    hook = model.register_forward_pre_hook(lambda module, args: rows_per_forward.append(
        len(args[0]) if args and isinstance(args[0], torch.Tensor) and args[0].dim() else -1))
    with BackwardCounter(model, optimizer) as counter:
        ok, result = call_learner_function(train_one_epoch, model, nn.MSELoss(), optimizer,
                                           list(micro_batches), k, what=what, errors=errors)
    hook.remove()
    lrs = [group.get("lr") for group in optimizer.param_groups]
    return ok, result, start, _params(model), counter, rows_per_forward, lrs


def _windows(num_micro: int, k: int) -> list[int]:
    """How many micro-batches each window holds, the short last one included."""
    return [min(k, num_micro - start) for start in range(0, num_micro, k)]


@exercise
def check_accumulation_loop(train_one_epoch: Any) -> Verdict:
    """Exercise 2: `train_one_epoch(model, loss_fn, optimizer, micro_batches, k)`: one epoch,
    exactly one forward pass and one backward() per micro-batch, a step per window (the short
    last one too)."""
    what = "train_one_epoch(...) steps like one big batch per window"
    ok, result, start, got, counter, rows_per_forward, lrs = _run_epoch(train_one_epoch, NUM_MICRO, K, what)
    if not ok:
        return result
    if any(rows > SIZE for rows in rows_per_forward):
        return verdict(False, what, wanted=f"forward passes of one micro-batch ({SIZE} samples)",
                       got=f"forward passes on up to {max(rows_per_forward)} samples",
                       hint="give every micro-batch its own forward pass: putting a window together "
                            "is the big batch itself, the memory that accumulation exists to save")
    if any(0 < rows < SIZE for rows in rows_per_forward):
        return verdict(False, what, wanted=f"one forward pass and one backward() per micro-batch, on all "
                       f"its {SIZE} samples", got=f"forward passes on as few as "
                       f"{min(r for r in rows_per_forward if r > 0)} samples",
                       hint="each micro-batch is already the piece that fits in memory: the task gives it "
                            "one forward pass and one backward(), whole, not split further")
    backward_calls = sum(counter.per_step) + counter.pending
    if not counter.per_step:
        same_start = all(torch.equal(g, s) for g, s in zip(got, start))
        hint = ("nothing was trained: call backward() on every micro-batch and optimizer.step() at the "
                "end of every window" if same_start else
                "the parameters moved, but not through the optimizer you were given: call its step()")
        return verdict(False, what, wanted="optimizer.step() at the end of every window",
                       got="no call of the given optimizer's step()", hint=hint)
    if backward_calls == 0:
        return verdict(False, what, wanted="one backward() per micro-batch",
                       got=f"no backward() for {NUM_MICRO} micro-batches, yet the optimizer stepped",
                       hint="call backward() on each micro-batch's loss, and let it add into .grad: "
                            "gradients from torch.autograd.grad or set by hand bypass what the "
                            "exercise is about")
    forwards = sum(1 for rows in rows_per_forward if rows == SIZE)
    if backward_calls < NUM_MICRO:
        hint = ("call backward() on each micro-batch's loss: adding a window's losses and calling "
                "backward() once keeps every micro-batch's activations until the end" if forwards >= NUM_MICRO
                else f"only {forwards} of the {NUM_MICRO} micro-batches went through the model: does your "
                     "loop reach every micro-batch of the list, the last one included?")
        return verdict(False, what, wanted="one backward() per micro-batch",
                       got=f"{backward_calls} backward() calls for {NUM_MICRO} micro-batches", hint=hint)
    if backward_calls > NUM_MICRO and sum(counter.per_step) != NUM_MICRO:  # else: extra ones after the last step
        return verdict(False, what, wanted="exactly one backward() per micro-batch",
                       got=f"{backward_calls} backward() calls for {NUM_MICRO} micro-batches",
                       hint="some micro-batch's loss went through backward() more than once: each "
                            "backward() adds into .grad, so the task calls it once per micro-batch")
    if lrs != [LR]:
        return verdict(False, what, wanted=f"the optimizer left as it was given (lr={LR})",
                       got=f"lr={lrs[0] if len(lrs) == 1 else lrs} after your epoch",
                       hint="your loop changed the optimizer's learning rate and left it so: normalise "
                            "what backward() adds into .grad, and leave lr to the optimizer and its "
                            "scheduler")
    if _same(got, _big_batches()):
        if counter.pending:
            return verdict(False, what, got="gradients left in .grad after the last step",
                           hint="backward() ran after the last optimizer.step(): every micro-batch "
                                "belongs to a window that ends with a step")
        return _check_other_sizes(train_one_epoch, what)
    steps = f"steps after {counter.per_step} micro-batches" + (
        f", {counter.pending} left over" if counter.pending else "")
    if counter.pending and counter.per_step == [K] * (NUM_MICRO // K):
        return verdict(False, what, got=steps, hint=MISTAKES["leaky"])
    for kind, hint in MISTAKES.items():
        if kind != "leaky" and _same(got, _variant(kind)):
            return verdict(False, what, got=steps, hint=hint)
    if all(torch.equal(g, s) for g, s in zip(got, start)):
        return verdict(False, what, got=steps + ", and the parameters never moved",
                       hint="the optimizer stepped, yet nothing moved: what did .grad hold at each "
                            "optimizer.step()?")
    if counter.per_step != _windows(NUM_MICRO, K) or counter.pending:
        return verdict(False, what, got=steps,
                       hint="a window is gradient_accumulation_steps micro-batches in a row (the last "
                            "may hold fewer), and its step comes after its last one: when does your "
                            "loop step?")
    return verdict(False, what, got=steps,
                   hint="the windows are right; compare each step with one step on its window's "
                        "micro-batches put together: is it the same size (what is each loss divided "
                        "by?), and does every sample weigh the same, in the short window too?")


_OTHER_ERRORS = [("list index out of range", "your loop reads past the end of micro_batches: here the "
                  "check passes 7 micro-batches, not 10. Does the loop count them with len(micro_batches)?")]


def _check_other_sizes(train_one_epoch: Any, what: str) -> Verdict:
    """The verdict once the main epoch is right: does the function also use the sizes it is given?"""
    num_micro, k = OTHER_SIZES
    what_here = what + f", with {num_micro} micro-batches and gradient_accumulation_steps = {k}"
    ok, result, _, got, counter, _, _ = _run_epoch(train_one_epoch, num_micro, k, what_here, _OTHER_ERRORS)
    if not ok:
        return result
    expected_steps = _windows(num_micro, k)
    if counter.per_step != expected_steps or counter.pending or not _same(got, _big_batches(num_micro, k)):
        backward_calls = sum(counter.per_step) + counter.pending
        if backward_calls != num_micro:
            hint = (f"{backward_calls} backward() calls for {num_micro} micro-batches: does your loop go "
                    "over the micro_batches it is given, or over a number of them written into it?")
        elif counter.per_step == _windows(num_micro, K) and not counter.pending:
            hint = (f"windows of {K} micro-batches where gradient_accumulation_steps is {k}: use the "
                    f"argument, not the exercise's {K}")
        elif counter.per_step == expected_steps and not counter.pending:
            hint = ("the windows are right, the steps are not: is each loss divided by what its window "
                    "holds for these sizes, or by a number written into your loop?")
        else:
            hint = ("right for this exercise's sizes, not for others: use the arguments "
                    "(len(micro_batches), gradient_accumulation_steps), not the numbers 10 and 4")
        return verdict(False, what_here, got=f"steps after {counter.per_step} micro-batches" + (
            f", {counter.pending} left over" if counter.pending else ""), hint=hint)
    return verdict(True, what + ": one backward() per micro-batch, windows of 4, 4 and 2 (and of 3, 3 "
                   "and 1 for 7 micro-batches and gradient_accumulation_steps = 3)")
