"""ZeroGradGuard: a warning when a training loop forgets or misplaces `zero_grad()` (notebook 08).

    with ZeroGradGuard(optimizer):        # or guard = ZeroGradGuard(optimizer); ...; guard.remove()
        train(model, optimizer, data)     # the loop, unchanged

How it knows. Step hooks alone cannot tell "zeroed, then backward()" from "never zeroed":
in-place zeroing keeps the same tensor, and a new tensor may reuse a freed one's id. So the
guard also watches every parameter's `.grad` at the moments that matter:
- just before each accumulation into `.grad` (`Tensor.register_hook` on a leaf runs then)
  and just before `optimizer.step()`, it looks at what `.grad` holds now and compares it with
  what it held when last seen: the same tensor (held through a weak reference, so a reused id
  cannot fool it) at the same `_version` means untouched; `None`, or a tensor that is now all
  zeros, means cleared; anything else is kept (in-place rescaling such as clipping);
- just after each accumulation (`Tensor.register_post_accumulate_grad_hook`) and after each
  step (`Optimizer.register_step_post_hook`) it records what `.grad` holds.
Each parameter's record says whether `.grad` still holds contributions from before the last
step ("old") and how many accumulations since then it holds ("new"). A step that would use
old contributions gets a `StaleGradientWarning`; new contributions cleared before a step used
them give a `DiscardedGradientWarning`. Values are read only when a tensor changed or may hold
old contributions; after each accumulation one `torch.aminmax` pass records whether `.grad` is
all zeros (or not finite), read only if those contributions are later found cleared, so that
clearing a gradient that was zero anyway (or inf after a GradScaler overflow) stays silent.
"""

from __future__ import annotations

import sys
import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = ["DiscardedGradientWarning", "Finding", "StaleGradientWarning", "ZeroGradGuard", "ZeroGradWarning"]

_UNCONFIRMED = None  # `old` after a step: the content may be old; confirmed when first needed
_SKIP_DIRS = (str(Path(__file__).resolve()), str(Path(torch.__file__).resolve().parent))
Extremes = tuple[Any, Any]  # (smallest, largest) entry: 0-dim tensors not yet read, or floats
_NONZERO: Extremes = (1.0, 1.0)  # for a gradient assigned by hand, known not to be all zeros


class ZeroGradWarning(UserWarning):
    """Base class of the guard's warnings: filter both with `warnings.simplefilter(..., ZeroGradWarning)`."""


class StaleGradientWarning(ZeroGradWarning):
    """`optimizer.step()` is about to use a `.grad` that still holds contributions from before the last step."""


class DiscardedGradientWarning(ZeroGradWarning):
    """Gradients computed since the last step were cleared before any step used them."""


@dataclass(frozen=True)
class Finding:
    """One warning's content: the step it is about, its class, the parameters, the message."""

    step: int
    kind: type[ZeroGradWarning]
    names: tuple[str, ...]
    message: str


class _Record:
    """What the guard knows about one parameter's `.grad`."""

    __slots__ = ("param", "name", "index", "ref", "version", "old", "new", "new_max", "foreign_at")

    def __init__(self, param: torch.Tensor, name: str, index: int) -> None:
        self.param, self.name, self.index = param, name, index  # index: the optimizer's order
        self.ref: weakref.ref | None = None  # the .grad tensor as last seen, or None
        self.version = 0  # its _version when last seen
        self.old: bool | None = False  # holds contributions from before the last step?
        self.new = 0  # accumulations since the last step that it still holds
        self.new_max: Extremes | None = None  # extremes of .grad after the last accumulation
        self.foreign_at = 0  # how many other optimizers' steps had run at the last accumulation

    def see(self, grad: torch.Tensor) -> None:
        if self.ref is None or self.ref() is not grad:
            self.ref = weakref.ref(grad)
        self.version = grad._version


def _extremes(grad: torch.Tensor) -> Extremes:
    """The smallest and largest entry of a gradient, as 0-dim tensors not yet read (one pass)."""
    values = (grad._values() if grad.is_sparse else grad).detach()
    if values.is_complex():
        values = values.abs()
    if values.numel() == 0:
        values = torch.zeros(1, device=values.device)
    return torch.aminmax(values)


def _max_abs(extremes: Extremes) -> float:
    """Read the largest |entry| (nan if there is a nan): the one place a GPU must synchronise."""
    low, high = (float(v) for v in extremes)
    return float("nan") if low != low or high != high else max(-low, high)


def _is_zero(grad: torch.Tensor) -> bool:
    return _max_abs(_extremes(grad)) == 0.0


def _lost_something(new_max: Extremes | None) -> bool:
    """Were the cleared contributions finite and not all zero? (inf/nan: a GradScaler skipped step)."""
    if new_max is None:
        return False
    value = _max_abs(new_max)
    return 0.0 < value < float("inf")


def _check_optimizer(optimizer: Any) -> None:
    if isinstance(optimizer, torch.optim.Optimizer):
        return
    got = type(optimizer).__name__
    if isinstance(optimizer, torch.nn.Module):
        hint = (f"got the model ({got}); pass the optimizer that updates it: "
                "ZeroGradGuard(optimizer, model=model)")
    elif isinstance(optimizer, torch.Tensor):
        hint = f"got a {got}; pass the optimizer that updates it: ZeroGradGuard(optimizer)"
    elif isinstance(optimizer, Iterable) and not isinstance(optimizer, (str, bytes)):
        hint = (f"got {got}, perhaps model.parameters() or a list of tensors; pass the optimizer "
                "itself: ZeroGradGuard(optimizer), where optimizer = torch.optim.SGD(model.parameters(), ...)")
    else:
        hint = f"got {got}; pass the optimizer itself: ZeroGradGuard(optimizer)"
    raise TypeError(f"ZeroGradGuard expects a torch.optim.Optimizer: {hint}")


def _names_from(module: torch.nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in module.named_parameters()}


def _find_names(optimizer: torch.optim.Optimizer, model: torch.nn.Module | None, caller: Any) -> dict[int, str]:
    """Name each parameter: from `model`, the optimizer's own `param_names`, or a model in the caller's scope."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    names: dict[int, str] = {}
    for i, group in enumerate(optimizer.param_groups):
        for j, p in enumerate(group["params"]):
            names[id(p)] = f"param_groups[{i}]['params'][{j}]"
        for p, name in zip(group["params"], group.get("param_names", ())):
            names[id(p)] = name
    if model is None and caller is not None:  # a model the caller can see, covering the most parameters
        wanted = {id(p) for p in params}
        scopes = (caller.f_locals, caller.f_globals)
        modules = {id(v): v for scope in scopes for v in scope.values() if isinstance(v, torch.nn.Module)}
        best = max(modules.values(), key=lambda m: len(wanted & set(_names_from(m))), default=None)
        model = best if best is not None and wanted & set(_names_from(best)) else None
    if model is not None:
        names.update((k, v) for k, v in _names_from(model).items() if k in names)
    return names


def _user_stacklevel() -> int:
    """The stacklevel that points a warning at the learner's line, outside this file and torch."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_SKIP_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def _listing(records: list[_Record], total: int) -> str:
    shown = ", ".join(r.name for r in records[:4])
    more = f" and {len(records) - 4} more" if len(records) > 4 else ""
    return f"{len(records)} of {total} parameters ({shown}{more})"


class ZeroGradGuard:
    """Watch an optimizer's parameters and warn when a step uses stale gradients or fresh ones were lost.

    Silent on correct loops of any style: zero_grad() before backward() or after step(),
    `set_to_none=True` or `False`, `p.grad = None`, `model.zero_grad()`, gradient accumulation,
    several backward() calls per step, in-place clipping or unscaling, parameters without a
    gradient on some steps. `model=` names parameters in warnings (else they are looked up).
    At most `max_warnings` warnings of each class (None: no limit); `findings` keeps them all.
    Used by notebook 08 and `utils.ex08`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None = None, *,
                 max_warnings: int | None = 3) -> None:
        _check_optimizer(optimizer)
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"expected model to be a torch.nn.Module or None, got {type(model).__name__}")
        if max_warnings is not None and (isinstance(max_warnings, bool) or not isinstance(max_warnings, int)
                                         or max_warnings < 0):
            raise ValueError(f"expected max_warnings as an int >= 0 or None, got {max_warnings!r}")
        self.optimizer = optimizer
        self.max_warnings = max_warnings
        self.steps = 0  # optimizer.step() calls completed since the guard started
        self.findings: list[Finding] = []
        self._names = _find_names(optimizer, model, sys._getframe(1))
        self._records: dict[int, _Record] = {}
        self._param_handles: list[Any] = []
        self._lost: list[tuple[_Record, str, Extremes | None]] = []  # (record, where, new_max)
        self._foreign_steps = 0  # steps of other optimizers: they consume gradients too (a GAN)
        self._in_closure = False
        self._removed = False
        self._warned: dict[type, int] = {StaleGradientWarning: 0, DiscardedGradientWarning: 0}
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
            register_optimizer_step_post_hook(self._after_any_step),
        ]
        self._attach_new_params(at_start=True)

    # -- the context manager -------------------------------------------------------------
    def __enter__(self) -> ZeroGradGuard:
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
        for handle in self._handles + self._param_handles:
            handle.remove()
        self._handles, self._param_handles = [], []
        for record in self._records.values():  # anything cleared since the last look?
            self._observe(record, "end")
        self._report(stale=[], total=len(self._records), step=self.steps, after_last=True)

    # -- hooks ---------------------------------------------------------------------------
    def _attach_new_params(self, at_start: bool = False) -> None:
        """Hook every parameter that requires grad: at the start, or added or unfrozen later."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if id(p) in self._records or not p.requires_grad:
                    continue
                name = self._names.get(id(p), f"a parameter of shape {tuple(p.shape)}")
                record = _Record(p, name, len(self._records))
                if p.grad is not None:  # there at the start: old; added later: taken as they are
                    record.see(p.grad)
                    record.old = _UNCONFIRMED if at_start else False
                self._records[id(p)] = record
                self._param_handles += [
                    p.register_hook(partial(self._before_accumulate, record)),
                    p.register_post_accumulate_grad_hook(partial(self._after_accumulate, record)),
                ]

    def _before_accumulate(self, record: _Record, incoming: torch.Tensor) -> None:
        """Runs before `.grad` of this leaf is added to: was it cleared since we last saw it?"""
        self._observe(record, "window")
        grad = record.param.grad
        if record.old is _UNCONFIRMED and grad is not None:
            record.old = not _is_zero(grad)  # about to be mixed with new contributions: decide now
        return None

    def _after_accumulate(self, record: _Record, param: torch.Tensor) -> None:
        """Runs after a contribution was added to `.grad`."""
        record.see(param.grad)
        record.new += 1
        record.new_max = _extremes(param.grad)  # lazy on a GPU: read only if it is later cleared
        record.foreign_at = self._foreign_steps

    def _observe(self, record: _Record, where: str) -> None:
        """Bring the record up to date with `.grad`: notice clearing and hand-made changes."""
        grad = record.param.grad
        if grad is None:
            if record.ref is not None:
                self._cleared(record, where)
                record.ref = None
            return
        if record.ref is not None and record.ref() is grad:
            if grad._version == record.version:
                return  # untouched since we last looked
            record.version = grad._version
            if _is_zero(grad):  # zeroed in place (zero_grad(set_to_none=False), grad.zero_())
                self._cleared(record, where)
            return  # else rescaled in place (clipping, unscaling): the same contributions
        record.see(grad)  # a tensor assigned by hand: p.grad = ...
        if _is_zero(grad):
            self._cleared(record, where)
        else:  # new content from the user (e.g. torch.autograd.grad, then p.grad = g)
            record.old, record.new = False, max(record.new, 1)
            record.new_max = _NONZERO
            record.foreign_at = self._foreign_steps

    def _cleared(self, record: _Record, where: str) -> None:
        if record.new and not self._in_closure and record.foreign_at == self._foreign_steps:
            self._lost.append((record, where, record.new_max))  # judged when reported
        record.old, record.new, record.new_max = False, 0, None

    def _before_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self._attach_new_params()
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0] is the optimizer
        if closure is not None:  # the closure zeroes and recomputes inside step(): not checked
            self._in_closure = True
            return
        stale = []
        for record in self._records.values():
            self._observe(record, "step")
            grad = record.param.grad
            if record.old is _UNCONFIRMED and grad is not None:
                record.old = not _is_zero(grad)
            if record.old and grad is not None:
                stale.append(record)
        self._report(stale=stale, total=len(self._records), step=self.steps + 1, after_last=False)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self.steps += 1
        self._in_closure = False
        for record in self._records.values():
            grad = record.param.grad
            if grad is None:
                record.ref, record.old = None, False
            else:  # what this step used is old from now on
                record.see(grad)
                record.old = _UNCONFIRMED
            record.new, record.new_max = 0, None

    def _after_any_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if optimizer is not self.optimizer:
            self._foreign_steps += 1

    # -- warnings ------------------------------------------------------------------------
    def _report(self, *, stale: list[_Record], total: int, step: int, after_last: bool) -> None:
        found: dict[int, tuple[_Record, str]] = {}
        for record, where, new_max in self._lost:
            if _lost_something(new_max):
                found.setdefault(record.index, (record, where))
        self._lost = []
        if found:
            lost = [found[i] for i in sorted(found)]
            message = _discarded_message(lost, total, step, after_last)
            self._warn(DiscardedGradientWarning, step, [r for r, _ in lost], message)
        if stale:
            self._warn(StaleGradientWarning, step, stale, _stale_message(stale, total, step))

    def _warn(self, kind: type[ZeroGradWarning], step: int, records: list[_Record], message: str) -> None:
        self.findings.append(Finding(step, kind, tuple(r.name for r in records), message))
        count = self._warned[kind] = self._warned[kind] + 1
        if self.max_warnings is not None and count > self.max_warnings:
            return
        if self.max_warnings is not None and count == self.max_warnings:
            message += f" (Further {kind.__name__}s are not shown; guard.findings lists them all.)"
        warnings.warn(message, kind, stacklevel=_user_stacklevel())


def _stale_message(stale: list[_Record], total: int, step: int) -> str:
    used = "that were there before the guard started" if step == 1 else f"that step {step - 1} already used"
    text = (f"step {step}: optimizer.step() is about to use .grad that still holds gradients {used}, "
            f"in {_listing(stale, total)}.")
    if all(r.new == 0 for r in stale):
        text += " No backward() added to them since, so this step applies the old gradient again."
    if len(stale) < total:
        text += (" Probably: only some gradients were cleared (a sub-module's zero_grad(), or a loop over "
                 "some parameters). Fix: use optimizer.zero_grad(), which clears every parameter it updates,")
    else:
        text += " Probably forgotten: optimizer.zero_grad(). Fix: call optimizer.zero_grad()"
    return text + " once per step: right after optimizer.step(), or right before the first loss.backward() of a step."


def _discarded_message(lost: list[tuple[_Record, str]], total: int, step: int, after_last: bool) -> str:
    when, previous = (f"after step {step}", step) if after_last else (f"step {step}", step - 1)
    since = f"since step {previous}" if previous >= 1 else "since the guard started"
    text = (f"{when}: gradients computed {since} were cleared before an optimizer.step() could use them, "
            f"in {_listing([r for r, _ in lost], total)}.")
    places = {where for _, where in lost}
    if "window" in places:
        text += (" Probably: zero_grad() (or p.grad = None) inside a gradient-accumulation window, between "
                 "two backward() calls that should feed one step.")
    if "step" in places:
        text += " Probably: zero_grad() (or p.grad = None) between loss.backward() and optimizer.step()."
    if "end" in places:
        text += " Probably: zero_grad() (or p.grad = None) after the last backward(), with no step after it."
    return text + (" Fix: clear gradients right after optimizer.step(), or right before the first "
                   "loss.backward() of a step; with gradient accumulation, only when you step.")
