"""ZeroGradGuard: watch one optimizer's parameters and warn about stale or discarded gradients (notebook 08).

The guard follows each parameter's `.grad` through four kinds of moments:
- just before and just after each accumulation into `.grad` (`Tensor.register_hook` on a
  leaf runs before, `Tensor.register_post_accumulate_grad_hook` after);
- each `zero_grad()` of an optimizer or module, as it happens (`utils.guard.clears`);
- each `optimizer.step()` (step hooks), and each step of any other optimizer.
Between those moments it notices changes by hand: `.grad` set to `None` or to another tensor,
or changed in place (its `_version` moved). From them it keeps, per parameter, whether
`.grad` holds contributions a step already used ("old"), how many `backward()` calls added to
it since ("accs"), and whether those came before another optimizer's step or before the
weights were moved by hand. Values are summarised on the device and read only when a step
needs a verdict: at most one read per step, none in a loop that clears with `zero_grad()`.
"""

from __future__ import annotations

import sys
import weakref
from functools import partial
from typing import Any, Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from utils.guard import clears, verdicts
from utils.guard.findings import DiscardedGradientWarning, Finding, StaleGradientWarning, ZeroGradWarning
from utils.guard.names import check_optimizer, find_names
from utils.guard.reads import Summary, summary
from utils.guard.record import UNCONFIRMED, Lost, Record
from utils.guard.sites import Stack, stack

_explicit: dict[int, int] = {}  # id(optimizer) -> explicit guards on it: an automatic guard keeps quiet


def check_options(*, max_warnings: Any, gradient_accumulation_steps: Any, report: Any) -> None:
    """Raise a clear ValueError or TypeError for an option a guard cannot take."""
    for label, value, low in (("max_warnings", max_warnings, 0),
                              ("gradient_accumulation_steps", gradient_accumulation_steps, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"expected {label} as an int >= {low} or None, got {value!r}")
    if report is not None and not callable(report):
        raise TypeError(f"expected report to be a function of a Finding, or None, got {type(report).__name__}")


class ZeroGradGuard:
    """Watch an optimizer's parameters and warn when a step uses stale gradients or fresh ones were lost.

    Silent on correct loops of many styles: zero_grad() before backward() or after step(),
    `set_to_none` either way, `p.grad = None`, `model.zero_grad()`, gradient accumulation,
    several backward() calls per step, in-place clipping, unscaling or masking, gradients set by
    hand, steps skipped by a GradScaler, GANs, two-step optimizers (SAM), lazy modules.
    `model=` names parameters in warnings (else they are looked up). At most `max_warnings`
    warnings of each class (None: no limit); `findings` keeps them all. With
    `gradient_accumulation_steps=k`, a step that uses more than k backward() calls is stale.
    `report` receives each finding shown instead of a Python warning. Used by notebook 08.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None = None, *,
                 max_warnings: int | None = 3, gradient_accumulation_steps: int | None = None,
                 report: Callable[[Finding], None] | None = None, _automatic: bool = False) -> None:
        check_optimizer(optimizer)
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"expected model to be a torch.nn.Module or None, got {type(model).__name__}")
        check_options(max_warnings=max_warnings, gradient_accumulation_steps=gradient_accumulation_steps,
                      report=report)
        self._optimizer = weakref.ref(optimizer)  # weak: a program that drops its optimizer frees it
        self.kind, self._key = type(optimizer).__name__, id(optimizer)
        self.max_warnings, self.report = max_warnings, report
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.steps = 0  # optimizer.step() calls completed since the guard started
        self.findings: list[Finding] = []
        self._automatic = _automatic
        self._names = find_names(optimizer, model, sys._getframe(1))
        self._records: dict[int, Record] = {}
        self._param_handles: list[Any] = []
        self._lost: list[Lost] = []
        self._foreign_steps = 0  # steps of other optimizers: they use gradients too (a GAN)
        self._groups_seen = 0
        self._waiting: set[int] = set()  # lazy parameters not materialised yet
        self._frozen: dict[int, tuple] = {}  # id -> (parameter that does not require grad, its .grad then)
        self._moved: tuple[int, bool] = (0, False)  # (clear, did it follow a move of every weight by hand?)
        self._in_closure, self._foreign_before = False, 0
        self._removed = False
        self._broken = False  # an error inside the guard: it stops checking, never the loop
        self._warned: dict[type, int] = {StaleGradientWarning: 0, DiscardedGradientWarning: 0}
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
            register_optimizer_step_post_hook(self._after_any_step),
        ]
        if not _automatic:
            _explicit[self._key] = _explicit.get(self._key, 0) + 1
        self._finalizer = weakref.finalize(optimizer, self._optimizer_gone)
        clears.watch(self)
        try:
            self._attach_new_params(at_start=True)
        except Exception:  # leave nothing behind, then say why
            self._broken = True
            self.remove()
            raise

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer watched (None once the program has dropped it)."""
        return self._optimizer()

    def _optimizer_gone(self) -> None:
        """The program dropped the optimizer (one made per task, say): stop watching its parameters."""
        self.remove()
        if self._automatic:
            self._records.clear()

    def _muted(self) -> bool:
        """An automatic guard keeps quiet while an explicit one watches the same optimizer."""
        return self._automatic and bool(_explicit.get(self._key))

    def _failed(self, error: Exception) -> None:
        self._broken = True
        print(f"utils.guard: stopped checking {self.kind} after an error of its own "
              f"({type(error).__name__}: {error}); the loop goes on unchecked.", file=sys.stderr)

    # -- the context manager -------------------------------------------------------------
    def __enter__(self) -> ZeroGradGuard:
        if self._removed and self._optimizer() is None:
            raise RuntimeError("the optimizer given to this ZeroGradGuard no longer exists (nothing else held "
                               "it): keep it in a variable, then `with ZeroGradGuard(optimizer):`")
        if self._removed:
            raise RuntimeError("this ZeroGradGuard was removed; create a new one: ZeroGradGuard(optimizer)")
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook the guard added; report contributions cleared after the last step."""
        if self._removed:
            return
        self._removed = True
        self._finalizer.detach()
        for handle in self._handles + self._param_handles:
            handle.remove()
        self._handles, self._param_handles = [], []
        clears.unwatch(self)
        if not self._automatic:
            _explicit[self._key] -= 1
        if self._broken:
            return
        try:
            for record in self._records.values():  # anything cleared since the last look?
                self._observe(record)
            self._report(step=self.steps, after_last=True, candidates=[])
        except ZeroGradWarning:
            raise
        except Exception as error:  # a bug of the guard's own: say so, never break the program
            self._failed(error)
        if not self._automatic and not _explicit[self._key]:
            del _explicit[self._key]

    # -- which parameters ----------------------------------------------------------------
    def _attach_if_changed(self) -> None:
        """Cheap: hook parameters added (add_param_group), unfrozen or materialised since the last look."""
        optimizer = self._optimizer()
        if optimizer is not None and (self._waiting or len(optimizer.param_groups) != self._groups_seen
                                      or any(p.requires_grad for p, _, _ in self._frozen.values())):
            self._attach_new_params()

    def _attach_new_params(self, at_start: bool = False) -> None:
        """Hook every parameter that requires grad: at the start, or added, unfrozen or materialised later."""
        optimizer = self._optimizer()
        if optimizer is None:
            return
        self._groups_seen, frozen, self._frozen = len(optimizer.param_groups), self._frozen, {}
        for i, group in enumerate(optimizer.param_groups):
            for j, p in enumerate(group["params"]):
                if id(p) in self._records:
                    continue
                if not p.requires_grad:  # .grad as it is now: a frozen parameter's gradient cannot grow
                    grad = p.grad
                    self._frozen[id(p)] = frozen.get(id(p)) or (
                        p, None if grad is None else weakref.ref(grad), None if grad is None else grad._version)
                    continue
                if torch.nn.parameter.is_lazy(p):  # a lazy module's: hooked after its first forward
                    self._waiting.add(id(p))
                    continue
                record = Record(p, self._names.get(id(p)) or f"param_groups[{i}]['params'][{j}]", len(self._records))
                if p.grad is not None:
                    record.see(p.grad)
                    if id(p) in frozen:  # unfrozen: whatever changed since it was frozen is new
                        _, ref, version = frozen[id(p)]
                        if ref is not None and ref() is p.grad and p.grad._version == version:
                            record.old, record.origin = UNCONFIRMED, "step" if self.steps else "start"
                        else:  # added by a backward() before its hooks were in place
                            record.accs, record.since = 1, self._foreign_steps
                    elif id(p) in self._waiting:  # materialised in this window: its first contribution
                        record.accs, record.since = 1, self._foreign_steps
                    else:  # there before the guard, or piled up outside the optimizer
                        record.old, record.origin = UNCONFIRMED, "start" if at_start else "joined"
                self._waiting.discard(id(p))
                self._records[id(p)] = record
                clears.add(p, self, record)
                after = p.register_post_accumulate_grad_hook(partial(self._after_accumulate, record))
                try:  # first among the post-accumulate hooks: one that steps (an optimizer step fused
                    p._post_accumulate_grad_hooks.move_to_end(after.id, last=False)  # into backward) comes after
                except (AttributeError, KeyError):
                    pass
                self._param_handles += [p.register_hook(partial(self._before_accumulate, record)), after]

    # -- the four kinds of moments -------------------------------------------------------
    def _before_accumulate(self, record: Record, incoming: torch.Tensor) -> None:
        """Runs before `.grad` of this leaf is added to: what happened since we last looked?"""
        if self._broken:
            return None
        try:
            self._attach_if_changed()
            self._observe(record)
            grad = record.param.grad
            if grad is not None and record.skipped is not None:  # a skipped step's gradients, never cleared?
                if record.ref is not None and record.ref() is grad and grad._version == record.skipped:
                    record.mixed = "skipped"
                record.skipped = None
            if grad is not None:
                if record.old is UNCONFIRMED:  # what a step used is about to be mixed with new contributions
                    record.old, record.checks = True, [summary(grad)]
                if record.unconsumed and record.mixed is None:
                    if self._foreign_steps != record.since:
                        record.mixed = "foreign"
                    elif record.param._version != record.pversion:  # the weights moved since: by hand
                        record.mixed = "closure" if self._in_closure else "moved"  # or by L-BFGS's own step
            return None
        except ZeroGradWarning:
            raise  # a finding made an error on purpose (warnings.simplefilter("error", ...))
        except Exception as error:  # a bug of the guard's own: it stops, never the loop
            return self._failed(error)

    def _after_accumulate(self, record: Record, param: torch.Tensor) -> None:
        """Runs after a contribution was added to `.grad`."""
        if self._broken:
            return None
        try:
            if param.grad is None:  # a hook before ours already stepped and cleared: nothing is left
                record.ref = None
                return None
            record.see(param.grad)
            if not record.unconsumed:
                record.since = self._foreign_steps
            record.accs += 1
            record.content = None  # unknown from now on
            record.pversion = param._version
        except ZeroGradWarning:
            raise  # a finding made an error on purpose (warnings.simplefilter("error", ...))
        except Exception as error:  # a bug of the guard's own: it stops, never the loop
            return self._failed(error)

    def _before_clear(self, record: Record) -> Summary | None:
        """Before a zero_grad() clears `.grad`: a summary of what no step used yet, if anything."""
        if self._broken:
            return None
        try:
            self._observe(record)
            grad = record.param.grad
            if not record.unconsumed or grad is None:
                return None
            return record.content if record.content is not None else summary(grad)
        except ZeroGradWarning:
            raise  # a finding made an error on purpose (warnings.simplefilter("error", ...))
        except Exception as error:  # a bug of the guard's own: it stops, never the loop
            return self._failed(error)

    def _after_clear(self, record: Record, size: Summary | None, frames: Stack, clear: int) -> None:
        if self._broken:
            return None
        try:
            self._cleared(record, size, frames, clear)
            grad = record.param.grad
            if grad is None:
                record.ref = None
            else:
                record.see(grad)
        except ZeroGradWarning:
            raise  # a finding made an error on purpose (warnings.simplefilter("error", ...))
        except Exception as error:  # a bug of the guard's own: it stops, never the loop
            return self._failed(error)

    def _before_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._broken:
            return None
        try:
            self._attach_if_changed()
            closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0] is the optimizer
            if closure is not None:  # the closure clears and recomputes inside step(): judged after it
                self._in_closure, self._foreign_before = True, self._foreign_steps
                return
            self._judge_step(used=False)
        except ZeroGradWarning:
            raise  # a finding made an error on purpose (warnings.simplefilter("error", ...))
        except Exception as error:  # a bug of the guard's own: it stops, never the loop
            return self._failed(error)

    def _judge_step(self, *, used: bool) -> None:
        """Judge what step `self.steps + 1` finds in `.grad` (`used`: after a step with a closure ran)."""
        candidates, k, overfull = [], self.gradient_accumulation_steps, False
        for record in self._records.values():
            self._observe(record)
            if record.refill is not None:  # cleared after another optimizer's step: refilled since?
                if not record.unconsumed:
                    self._lost.append(record.refill)
                record.refill = None
            if record.param.grad is None:
                continue
            if record.old is UNCONFIRMED:  # untouched since the last step: reused?
                record.old, record.checks = True, [summary(record.param.grad)]
            if record.old is True or record.mixed is not None:
                candidates.append(record)
            overfull = overfull or (k is not None and record.accs > k)
        if candidates or self._lost or overfull:  # else nothing to judge: no read, no work
            self._report(step=self.steps + 1, after_last=False, candidates=candidates, used=used)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._broken:
            return None
        try:
            try:
                # a step with a closure (L-BFGS, Lightning): what did it use? Unless it stepped another
                # optimizer inside (SAM's step(closure) steps its base optimizer, which used them)
                if self._in_closure and self._foreign_steps == self._foreign_before:
                    self._judge_step(used=True)
            finally:
                self.steps += 1
                self._in_closure = False
                for record in self._records.values():
                    self._consumed(record)
        except ZeroGradWarning:
            raise  # a finding made an error on purpose (warnings.simplefilter("error", ...))
        except Exception as error:  # a bug of the guard's own: it stops, never the loop
            return self._failed(error)

    def _after_any_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._broken:
            return None
        try:
            if optimizer is self._optimizer():
                return
            self._foreign_steps += 1
            for group in optimizer.param_groups:  # parameters it shares with ours: it used their gradients
                for p in group["params"]:
                    record = self._records.get(id(p))
                    if record is not None:
                        self._consumed(record)
                        record.origin = "other"  # if our step uses them again, say whose step did
        except ZeroGradWarning:
            raise  # a finding made an error on purpose (warnings.simplefilter("error", ...))
        except Exception as error:  # a bug of the guard's own: it stops, never the loop
            return self._failed(error)

    def _skipped_step(self) -> None:
        """A GradScaler skipped this optimizer's step (a gradient was not finite): those must be cleared.

        Called by `utils.guard.clears` after `scaler.step(optimizer)` when no step ran. If
        backward() has added to gradients an earlier skip left uncleared, this attempt is stale
        (the non-finite values stay, so every later step is skipped too); then every gradient
        holding contributions is marked, to be checked at the next backward().
        """
        if self._broken:
            return
        try:
            flagged = [r for r in self._records.values() if r.mixed == "skipped"]
            if flagged:
                verdicts.judge_skipped(self, step=self.steps + 1, flagged=flagged)
                for record in flagged:
                    record.mixed = None
            for record in self._records.values():
                self._observe(record)
                if record.unconsumed and record.param.grad is not None:
                    record.skipped = record.version
        except ZeroGradWarning:
            raise  # a finding made an error on purpose (warnings.simplefilter("error", ...))
        except Exception as error:  # a bug of the guard's own: it stops, never the loop
            self._failed(error)

    # -- keeping the records up to date --------------------------------------------------
    def _consumed(self, record: Record) -> None:
        """A step used what `.grad` holds: from now on it is old."""
        if record.checks or record.mixed is not None or record.origin != "step":
            record.reset()
        record.accs, record.hand, record.content, record.refill, record.skipped = 0, False, None, None, None
        param = record.param
        grad = param.grad
        if grad is None:
            record.ref, record.old = None, False
        else:
            record.see(grad)
            record.old = UNCONFIRMED
        record.pversion = param._version

    def _observe(self, record: Record) -> None:
        """Bring the record up to date with `.grad`: notice changes made by hand since the last look."""
        grad = record.param.grad
        if grad is None:
            if record.ref is not None:  # set to None by hand (zero_grad() calls are seen as they happen)
                record.ref = None
                self._cleared(record, record.content, stack() if record.unconsumed else (), next(clears.clear_ids),
                              by_hand=True)
            return
        if record.ref is not None and record.ref() is grad:
            if grad._version == record.version:
                return  # untouched since we last looked
            record.version = grad._version
            if record.unconsumed:  # changed in place after backward(): clipped, unscaled, masked...
                record.content = summary(grad)
                if record.old is True:
                    record.checks.append(record.content)  # old contributions survive only if not zeroed
            else:  # changed in place with no backward() since the step: set by hand (p.grad.copy_(g))
                record.reset()
            return
        record.see(grad)  # another tensor, assigned by hand: p.grad = g
        if not record.unconsumed:
            record.since = self._foreign_steps
        if grad._base is None:  # new content written after a clear: made from the gradients cleared
            # (PCGrad reads each task's gradient, clears, and writes their blend); a view of a bigger
            # buffer is plumbing (DDP's gradient_as_bucket_view), not new content
            self._lost = [entry for entry in self._lost if entry.record is not record]
            record.refill = None
        record.reset()
        record.hand, record.content = True, summary(grad)
        record.pversion = record.param._version

    def _cleared(self, record: Record, size: Summary | None, frames: Stack, clear: int,
                 by_hand: bool = False) -> None:
        """`.grad` was cleared: were there contributions no step used?"""
        if not record.unconsumed:
            if record.old is not False:
                record.reset()
            return
        # moved by hand since its gradient came (an update by hand, SAM's first step): used. A zero_grad()
        # is judged for all its weights at once (Embedding(max_norm=...) moves only its own); a clear by
        # hand, noticed one weight at a time, for its own
        moved = record.param._version != record.pversion and (by_hand or self._all_moved(clear))
        if record.unconsumed and not self._in_closure and not moved:
            lost = Lost(record, clear, size, frames, foreign=self._foreign_steps != record.since, by_hand=by_hand)
            if lost.foreign:  # made before another optimizer's step: that step's by-products?
                record.refill = lost  # judged at this optimizer's step: fine if new ones came since
            else:
                self._lost.append(lost)
        record.reset()

    def _all_moved(self, clear: int) -> bool:
        """Were all the weights with unused gradients moved by hand (SAM's first step used them)?

        Judged once per clear, before it resets any record: a module that changes only its own
        weight in its forward (`Embedding(max_norm=...)`) is no such update.
        """
        if self._moved[0] != clear:
            self._moved = (clear, all(r.param._version != r.pversion for r in self._records.values()
                                      if r.unconsumed))
        return self._moved[1]

    # -- verdicts (utils/guard/verdicts.py) -------------------------------------------------
    def _report(self, *, step: int, after_last: bool, candidates: list[Record], used: bool = False) -> None:
        verdicts.judge(self, step=step, after_last=after_last, candidates=candidates, used=used)


__all__ = ["ZeroGradGuard", "ZeroGradWarning"]
