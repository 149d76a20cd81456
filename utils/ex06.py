"""Checks for the exercises of notebook 06 (accumulation in real loops).

Each check works its expected answer out with torch, recognises the usual mistakes by
running them too, then prints a verdict. Hints say what is wrong, never the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from utils.data import make_regression, make_token_sequences
from utils.exercises import Verdict, call_learner_function, check_number, describe, exercise, verdict
from utils.measure import BackwardCounter


def _sample_weights(split: list[int], divisor: float) -> torch.Tensor:
    """How much each sample's loss weighs in the window's loss: d(window loss) / d(its loss)."""
    per_sample_losses = torch.ones(sum(split), dtype=torch.float64, requires_grad=True)
    sum(part.mean() / divisor for part in per_sample_losses.split(split)).backward()
    return per_sample_losses.grad


@exercise
def check_weight_ratio(answer: Any) -> Verdict:
    """Exercise 1: micro-batches of 10, 10, 10 and 2, mean / 4: the weight of a sample of the 2
    against one of a 10."""
    weights = _sample_weights([10, 10, 10, 2], divisor=4)
    ratio = float(weights[-1] / weights[0])
    return check_number(
        answer,
        ratio,
        what="how many times a sample of the micro-batch of 2 weighs one of a micro-batch of 10",
        hint=["each micro-batch's mean, divided by 4, shares a quarter of the step among its samples: "
              "how many share it in each micro-batch?",
              "a micro-batch's quarter of the step is shared by its samples: what share does one "
              "sample of the 10 get, and one of the 2?"],
        mistakes=[
            (1 / ratio, "that is the other way round: which micro-batch has fewer samples to share its "
                        "quarter of the step?"),
            (1.0, "with the mean per micro-batch, samples weigh the same only when the micro-batches "
                  "are equal"),
            (4.0, "4 is gradient_accumulation_steps, the same for every micro-batch: compare the "
                  "micro-batch sizes"),
        ],
    )


def _token_setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    inputs, labels = make_token_sequences(num_sequences=8, max_len=10, num_features=3, vocab_size=4,
                                          seed=105, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):  # leave the learner's random state alone
        model = nn.Linear(3, 4).double()
    with torch.no_grad():
        model.weight.copy_(torch.linspace(-1.0, 1.0, 12, dtype=torch.float64).reshape(4, 3))
        model.bias.zero_()
    return model, inputs, labels


def _ce(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction=reduction)


def _accumulated_gradient(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                          loss_of: Callable[[torch.Tensor, torch.Tensor, int], Any], what: str = ""
                          ) -> torch.Tensor | Verdict:
    """Backward through `loss_of(logits, labels, num_tokens_in_step)` per micro-batch of 2 sequences.

    Returns the accumulated gradient, or a printed Verdict if `loss_of` fails or returns no loss.
    """
    model.zero_grad()
    num_tokens = int((labels != -100).sum())
    for inputs_micro, labels_micro in zip(inputs.split(2), labels.split(2)):
        ok, loss = call_learner_function(loss_of, model(inputs_micro), labels_micro, num_tokens, what=what,
                                         errors=_TOKEN_ERRORS)
        if not ok:
            return loss
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            hint = ("return the loss tensor itself: .item() or a float cannot carry a gradient"
                    if isinstance(loss, (int, float)) and not isinstance(loss, bool) else
                    "build the loss from logits with torch operations, and return it")
            return verdict(False, what, wanted="a loss tensor built from logits, that backward() can use",
                           got=describe(loss), hint=hint)
        if loss.numel() != 1:
            return verdict(False, what, wanted="one number per micro-batch (a one-element tensor)",
                           got=describe(loss), hint="reduce the per-token losses to one number for the "
                                                    "micro-batch")
        loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


TOKEN_MISTAKES = [
    (lambda lo, la, n: _ce(lo, la) / 4, "that is each micro-batch's mean divided by "
     "gradient_accumulation_steps, the October 2024 bug: tokens in short micro-batches weigh more"),
    (lambda lo, la, n: _ce(lo, la), "that is each micro-batch's own mean (its sum over its own "
     "tokens), added up: tokens in short micro-batches weigh more, and 4 means add up to 4 times one"),
    (lambda lo, la, n: _ce(lo, la, "sum"), "every token weighs the same now: what must the sum be "
     "divided by to become the step's mean?"),
    (lambda lo, la, n: _ce(lo, la, "sum") / la.numel(),
     "la.numel() counts this micro-batch's positions, padding included, and only this micro-batch's"),
    (lambda lo, la, n: _ce(lo, la) / n, "each micro-batch's mean has already divided by its own tokens: "
     "dividing it by the step's tokens as well divides twice"),
    (lambda lo, la, n: _ce(lo, la.clamp(min=0), "sum") / n,
     "the padding positions (-100) count as tokens here: which positions must the loss leave out?"),
]
_TOKEN_ERRORS = [
    ("Expected target size", "F.cross_entropy wants the classes in dimension 1 of its input: here they are "
     "in the last dimension of logits"),
    ("Target -100 is out of bounds", "the padding label -100 reached a loss that does not skip it: which "
     "positions must the loss leave out?"),
]


@exercise
def check_token_loss(micro_batch_token_loss: Any) -> Verdict:
    """Exercise 2: `micro_batch_token_loss(logits, labels, num_tokens_in_step)` makes the accumulated
    gradient equal the gradient of the mean over all real tokens of the step."""
    what = "micro_batch_token_loss(...) accumulates to the mean over all tokens of the step"
    model, inputs, labels = _token_setup()
    model.zero_grad()
    _ce(model(inputs), labels).backward()
    truth = torch.cat([p.grad.flatten() for p in model.parameters()])
    result = _accumulated_gradient(model, inputs, labels, micro_batch_token_loss, what)
    if isinstance(result, Verdict):
        return result
    if torch.allclose(result, truth):
        return verdict(True, what)
    if torch.allclose(result, 2 * truth):
        return verdict(False, what, got="twice the step's gradient",
                       hint="backward() ran twice per micro-batch: return the loss and leave backward() "
                            "to the loop (here, the check)")
    for wrong, hint in TOKEN_MISTAKES:
        if torch.allclose(result, _accumulated_gradient(model, inputs, labels, wrong)):
            return verdict(False, what, got="a gradient unlike the step's token mean", hint=hint)
    return verdict(False, what, got="a gradient unlike the step's token mean",
                   hint=["is padding (-100) left out, is every token summed, and is the sum divided by "
                         "the tokens of the whole step?",
                         "F.cross_entropy's reduction= decides between a mean and a sum"])


class _CountingScaler(torch.amp.GradScaler):
    """A real CPU GradScaler that records the learner's calls of scale, unscale_, step, update."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.calls: list[str] = []
        self._inside_step = False

    def scale(self, outputs: Any) -> Any:
        self.calls.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._inside_step:  # step() unscales by itself when the learner did not
            self.calls.append("unscale_")
        super().unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("step")
        self._inside_step = True
        try:
            return super().step(optimizer, *args, **kwargs)
        finally:
            self._inside_step = False

    def update(self, new_scale: Any = None) -> None:
        self.calls.append("update")
        super().update(new_scale)


SIZE, NUM_MICRO, K, LR, MAX_NORM = 4, 10, 4, 0.1, 5.0  # windows of 4, 4 and 2 micro-batches
OTHER_SIZES = (7, 3)  # a second epoch: 7 micro-batches, windows of 3, 3 and 1


def _scaled_setup(overflow: bool = False, num_micro: int = NUM_MICRO
                  ) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    data = make_regression(num_samples=SIZE * num_micro, num_features=3, seed=106)
    with torch.random.fork_rng(devices=[]):
        model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.copy_(torch.linspace(-1.0, 1.0, 3))
        model.bias.fill_(0.5)
    X = data.X.clone()
    if overflow:
        X[5 * SIZE] = 1e30  # micro-batch 5, in the second window: its loss overflows float32
    return model, [(Xm.clone(), ym.clone()) for Xm, ym in zip(X.split(SIZE), data.y.split(SIZE))]


def _reference(kind: str = "right", overflow: bool = False, num_micro: int = NUM_MICRO, k: int = K,
               max_norm: float = MAX_NORM) -> list[torch.Tensor]:
    """The epoch, right or with a known mistake, on a real GradScaler; the final parameters."""
    model, micro_batches = _scaled_setup(overflow, num_micro)
    optimizer, scaler = torch.optim.SGD(model.parameters(), lr=LR), torch.amp.GradScaler("cpu")
    for start in range(0, num_micro, k):
        window = micro_batches[start:start + k]
        for X, y in window:
            divisor = k if kind == "last window divided by k" else len(window)
            scaler.scale(nn.MSELoss()(model(X), y) / divisor).backward()
        if kind == "clip before unscale_":  # the same as no unscale_: step() unscales later
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.unscale_(optimizer)
        if kind not in ("clip before unscale_", "no clipping"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.step(optimizer)
        scaler.update()
        if kind != "never zero_grad":
            optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


SCALER_MISTAKES = {
    "clip before unscale_": "the clip measured the norm of scaled gradients, thousands of times too "
                            "large: what must happen to the gradients before their norm means anything?",
    "no clipping": "the gradient's total norm was never cut to max_norm: does your loop clip by norm (not "
                   "by value), once per window?",
    "never zero_grad": "the gradient of one window leaks into the next: what clears .grad after each step?",
    "last window divided by k": "the short last window is divided as if it were full, so its step is too "
                                "small: normalise by what the window really holds",
}
NOTEBOOK_MAX_NORM = 1.0  # section 4's, which a learner may copy


_SCALER_ERRORS = [
    ("No inf checks were recorded prior to update", "scaler.update() ran where this step had no "
     "scaler.step() yet: it belongs once per optimizer step, after scaler.step()"),
    ("unscale_() has already been called", "scaler.unscale_() ran twice in one step: a window's gradients "
     "are unscaled once. Where does that belong?"),
    ("_scale is None", "the scaler was asked to unscale what it never scaled: call backward() on "
     "scaler.scale(loss)"),
    ("unscale_() is being called after step()", "the scaler still counts the last step as running: "
     "scaler.update() must follow every scaler.step()"),
    ("list index out of range", "your loop reads past the end of micro_batches: does it count them with "
     "len(micro_batches), or with a number written into it? The check passes other sizes too"),
]


def _autocast_on() -> bool:
    return any(torch.is_autocast_enabled(device) for device in ("cpu", "cuda"))


def _run_scaled(fn: Any, overflow: bool, what: str, num_micro: int = NUM_MICRO, k: int = K
                ) -> tuple[Any, ...]:
    model, micro_batches = _scaled_setup(overflow, num_micro)
    optimizer, scaler = torch.optim.SGD(model.parameters(), lr=LR), _CountingScaler()
    rows: list[int] = []  # samples per forward pass; -1 for a pass under autocast
    hook = model.register_forward_pre_hook(lambda module, args: rows.append(
        -1 if _autocast_on() else
        len(args[0]) if args and isinstance(args[0], torch.Tensor) and args[0].dim() else 0))
    with BackwardCounter(model, optimizer) as counter:
        ok, result = call_learner_function(fn, model, nn.MSELoss(), optimizer, scaler, list(micro_batches),
                                           k, MAX_NORM, what=what, errors=_SCALER_ERRORS)
    hook.remove()
    return ok, result, [p.detach().clone() for p in model.parameters()], scaler.calls, counter, rows


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, z, rtol=1e-5, atol=1e-7) for x, z in zip(a, b))


@exercise
def check_scaled_epoch(train_one_epoch_scaled: Any) -> Verdict:
    """Exercise 3: an epoch of windows (the short last one too) with a GradScaler and clipping."""
    what = "train_one_epoch_scaled(...) scales, unscales once, clips and steps once per window"
    ok, result, got, calls, counter, rows = _run_scaled(train_one_epoch_scaled, False, what)
    if not ok:
        return result
    windows = -(-NUM_MICRO // K)
    if -1 in rows:
        return verdict(False, what, wanted="forward passes in float32 (no autocast in this exercise)",
                       got="forward passes under torch.autocast",
                       hint="leave autocast out here: the check runs on the CPU and compares parameters "
                            "to float32 rounding; what it checks is where the scaler's calls go")
    if any(r > SIZE for r in rows):
        return verdict(False, what, wanted=f"forward passes of one micro-batch ({SIZE} samples)",
                       got=f"forward passes on up to {max(rows)} samples",
                       hint="give every micro-batch its own forward pass and backward()")
    if any(0 < r < SIZE for r in rows):
        return verdict(False, what, wanted=f"one forward pass and one backward() per micro-batch, on all "
                       f"its {SIZE} samples", got=f"forward passes on as few as {min(r for r in rows if r > 0)} "
                       "samples", hint="each micro-batch is already the piece that fits in memory: the task "
                                       "gives it one forward pass and one backward(), whole, not split further")
    backward_calls = sum(counter.per_step) + counter.pending
    if backward_calls != NUM_MICRO:
        forwards = sum(1 for r in rows if r == SIZE)
        if backward_calls > NUM_MICRO:
            hint = ("some micro-batch's scaled loss went through backward() more than once: each backward() "
                    "adds into .grad, so the task calls it once per micro-batch")
        elif forwards < NUM_MICRO:
            hint = (f"only {forwards} of the {NUM_MICRO} micro-batches went through the model: does your "
                    "loop reach every micro-batch of the list, the last one included?")
        else:
            hint = ("call backward() on each micro-batch's scaled loss: adding a window's losses and calling "
                    "backward() once keeps every micro-batch's activations until the end")
        return verdict(False, what, wanted="exactly one backward() per micro-batch",
                       got=f"{backward_calls} backward() calls for {NUM_MICRO} micro-batches", hint=hint)
    if calls.count("scale") != NUM_MICRO:
        return verdict(False, what, wanted="each micro-batch's loss scaled with scaler.scale(...)",
                       got=f"scaler.scale() called {calls.count('scale')} times for {NUM_MICRO} micro-batches",
                       hint="without the scale, float16 gradients can underflow: call backward() on "
                            "scaler.scale(loss)")
    if calls.count("step") == windows and len(counter.per_step) > windows:
        return verdict(False, what, wanted="one optimizer step per window, through scaler.step(optimizer)",
                       got=f"scaler.step() {calls.count('step')} times, yet {len(counter.per_step)} optimizer "
                           "steps", hint="optimizer.step() runs besides scaler.step(optimizer), which already "
                                         "steps the optimizer (unless it skips the step): each window steps twice")
    if calls.count("step") != windows or len(counter.per_step) != windows:
        return verdict(False, what, wanted="scaler.step(optimizer) once per window, the short last one too",
                       got=f"scaler.step() {calls.count('step')} times, optimizer steps after "
                           f"{counter.per_step} micro-batches",
                       hint="the optimizer must step once per window, and only when the window's "
                            "gradients are finite: which of the scaler's calls does that?")
    if calls.count("update") != windows:
        return verdict(False, what, wanted="scaler.update() once per optimizer step",
                       got=f"scaler.update() called {calls.count('update')} times for {windows} steps",
                       hint="update() adjusts the scale from what scaler.step() found: once after every "
                            "scaler.step()")
    if not _close(got, _reference()):
        for kind, hint in SCALER_MISTAKES.items():
            if _close(got, _reference(kind)):
                return verdict(False, what, got="parameters unlike the right epoch's", hint=hint)
        if _close(got, _reference(max_norm=NOTEBOOK_MAX_NORM)):
            return verdict(False, what, got=f"the parameters of an epoch clipped to max_norm = "
                           f"{NOTEBOOK_MAX_NORM:g}", hint=f"{NOTEBOOK_MAX_NORM:g} is the notebook's max_norm, "
                           "written into your code: use the max_norm your function receives")
        if all(torch.equal(g, s) for g, s in zip(got, _scaled_setup()[0].parameters())):
            return verdict(False, what, got="parameters that never moved",
                           hint="the optimizer stepped, yet nothing moved: what did .grad hold at each step?")
        return verdict(False, what, got="parameters unlike the right epoch's",
                       hint="check the normalisation of the short last window, and that each step "
                            "unscales, clips and steps once")
    ok, result, got, calls, _, _ = _run_scaled(train_one_epoch_scaled, True, what)
    if not ok:
        return result
    if not all(torch.isfinite(p).all() for p in got) or not _close(got, _reference(overflow=True)):
        return verdict(False, what + ", when a window overflows",
                       got="a window with an inf in its gradients changed the parameters",
                       hint="a window whose gradients hold an inf must be skipped: which of your calls "
                            "steps whatever the gradients hold?")
    num_micro, k = OTHER_SIZES
    what_here = what + f", with {num_micro} micro-batches and gradient_accumulation_steps = {k}"
    ok, result, got, calls, counter, _ = _run_scaled(train_one_epoch_scaled, False, what_here, num_micro, k)
    if not ok:
        return result
    expected_steps = [min(k, num_micro - start) for start in range(0, num_micro, k)]
    if counter.per_step != expected_steps or not _close(got, _reference(num_micro=num_micro, k=k)):
        backward_calls = sum(counter.per_step) + counter.pending
        if backward_calls != num_micro:
            hint = (f"{backward_calls} backward() calls for {num_micro} micro-batches: does your loop go "
                    "over the micro_batches it is given, or over a number of them written into it?")
        elif counter.per_step == [min(K, num_micro - start) for start in range(0, num_micro, K)]:
            hint = (f"windows of {K} micro-batches where gradient_accumulation_steps is {k}: use the "
                    f"argument, not the exercise's {K}")
        elif counter.per_step == expected_steps:
            hint = ("the windows are right, the steps are not: is each loss divided by what its window "
                    "holds for these sizes, or by a number written into your loop?")
        else:
            hint = ("right for this exercise's sizes, not for others: use the arguments "
                    "(len(micro_batches), gradient_accumulation_steps), not the numbers 10 and 4")
        return verdict(False, what_here, got=f"optimizer steps after {counter.per_step} micro-batches",
                       hint=hint)
    return verdict(True, what + "; a window that overflows is skipped")
