"""The text of the guard's warnings: what it saw, the probable mistake, the fix (notebook 08)."""

from __future__ import annotations

from utils.guard.record import Record
from utils.guard.sites import PRAGMA

_FIX_ONCE = "once per step: right after optimizer.step(), or right before the first loss.backward() of a step."


def listing(records: list[Record], total: int) -> str:
    """Name the parameters: "2 of 6 parameters (body.weight, body.bias)", at most four, then how many more."""
    shown = ", ".join(r.name for r in records[:4])
    more = f" and {len(records) - 4} more" if len(records) > 4 else ""
    return f"{len(records)} of {total} parameters ({shown}{more})"


def _old(records: list[Record], total: int, step: int) -> tuple[str, str]:
    origin = records[0].origin
    if origin == "joined":
        return ("gradients it already held when it joined the optimizer (add_param_group), piled up "
                "while it was outside it",
                " Probably: the parameters requires_grad while outside the optimizer, and nothing cleared "
                "them. Fix: clear them when they join (optimizer.zero_grad() after add_param_group), "
                "or use model.zero_grad().")
    if origin == "other":
        return ("gradients that another optimizer's step already used",
                " Probably: these parameters are in two optimizers, and both step on the same backward(), "
                "so each applies the gradient. Fix: give each parameter to one optimizer only (or, if the "
                "second step should use a new gradient, clear between the two steps).")
    used = "that were there before the guard started" if origin == "start" else f"that step {step - 1} already used"
    text = ""
    if all(r.accs == 0 and not r.hand for r in records):
        text += " No backward() added to them since, so this step applies the old gradient again."
    if len(records) < total:
        text += (" Probably: only some gradients were cleared (a sub-module's zero_grad(), or a loop over "
                 "some parameters). Fix: use optimizer.zero_grad(), which clears every parameter it updates, "
                 + _FIX_ONCE)
    else:
        text += " Probably forgotten: optimizer.zero_grad(). Fix: call optimizer.zero_grad() " + _FIX_ONCE
    return f"gradients {used}", text


def _foreign(records: list[Record], total: int, step: int) -> tuple[str, str]:
    return ("gradients from a backward() made before another optimizer's step",
            " Probably: that optimizer's loss also reaches these parameters (a GAN's generator loss fills "
            "the discriminator's .grad), and this optimizer cleared its gradients only after its own step. "
            "Fix: clear this optimizer's gradients right before its own first backward() of a step.")


def _moved(records: list[Record], total: int, step: int) -> tuple[str, str]:
    return ("gradients from a backward() made before the weights were changed by hand",
            " Probably: the first pass of a two-step method (sharpness-aware minimization) was not "
            "cleared. Fix: clear the gradients between the two backward() calls (SAM's "
            "first_step(zero_grad=True)).")


def _closure(records: list[Record], total: int, step: int) -> tuple[str, str]:
    return ("gradients from an earlier evaluation of the closure, in this same step",
            " Probably: the closure does not clear the gradients, so each evaluation (L-BFGS makes "
            "several per step) adds to the last. Fix: start the closure with optimizer.zero_grad().")


def _skipped(records: list[Record], total: int, step: int) -> tuple[str, str]:
    return ("gradients of an earlier step that a GradScaler skipped (a gradient was not finite), "
            "with backward() added to them since",
            " Probably forgotten: optimizer.zero_grad() after a skipped step. The values that were not "
            "finite stay in .grad, so this step and every later one is skipped too: training has stopped. "
            "Fix: call optimizer.zero_grad() " + _FIX_ONCE + " Skipped steps need it too.")


def _overfull(records: list[Record], total: int, step: int, k: int) -> tuple[str, str]:
    count = max(r.accs for r in records)
    return (f"gradients from {count} backward() calls, more than gradient_accumulation_steps={k}",
            " Probably: micro-batches left over at the end of an epoch (its length is not a multiple of "
            "gradient_accumulation_steps) were carried into this step. Fix: step (or clear) after the "
            "last micro-batch of every epoch too.")


def stale(groups: dict[str, list[Record]], total: int, step: int, k: int | None, *,
          skipped_again: bool = False, used: bool = False) -> str:
    """One message for a step that would use contributions that are not its own, by reason."""
    parts = []
    for reason, records in groups.items():
        if reason == "overfull":
            what, why = _overfull(records, total, step, k or 1)
        else:
            what, why = {"old": _old, "foreign": _foreign, "moved": _moved, "closure": _closure,
                         "skipped": _skipped}[reason](records, total, step)
            if used and reason == "old":
                why += " With a closure, start the closure with optimizer.zero_grad()."
        parts.append((what, records, why))
    what, records, why = parts[0]
    if skipped_again:
        return (f"step {step}: the GradScaler skipped optimizer.step() again, and .grad still holds {what}, "
                f"in {listing(records, total)}.{why}")
    uses = "(with a closure) used .grad that held" if used else "is about to use .grad that still holds"
    text = f"step {step}: optimizer.step() {uses} {what}, in {listing(records, total)}.{why}"
    for what, records, why in parts[1:]:
        text += f" It also holds {what}, in {listing(records, total)}.{why}"
    return text


def discarded(records: list[Record], places: set[str], total: int, step: int, after_last: bool) -> str:
    """One message for contributions that were cleared before a step could use them."""
    when, previous = (f"after step {step}", step) if after_last else (f"step {step}", step - 1)
    if after_last and step == 0:
        when = "with no step at all"
    since = f"since step {previous}" if previous >= 1 else "since the guard started"
    text = (f"{when}: gradients computed {since} were cleared before an optimizer.step() could use them, "
            f"in {listing(records, total)}.")
    if "window" in places:
        text += (" Probably: zero_grad() (or p.grad = None) inside a gradient-accumulation window, between "
                 "two backward() calls that should feed one step.")
    if "step" in places:
        text += " Probably: zero_grad() (or p.grad = None) between loss.backward() and optimizer.step()."
    if "end" in places:
        text += " Probably: zero_grad() (or p.grad = None) after the last backward(), with no step after it."
    if "foreign" in places:
        text += (" Probably: a zero_grad() that covers these parameters too (model.zero_grad(), or one "
                 "inside a loop over optimizers) ran after another optimizer's step, before this one's. "
                 "Fix: clear each optimizer's gradients with its own zero_grad(), right after its own step().")
    if places - {"foreign"}:
        text += (" Fix: clear gradients right after optimizer.step(), or right before the first "
                 "loss.backward() of a step; with gradient accumulation, only when you step.")
    return text + (f" If the clear is intended (gradients computed only to be read, as for an adversarial "
                   f"example), end that line with `{PRAGMA}`.")
