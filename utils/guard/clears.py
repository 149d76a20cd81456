"""Clears seen as they happen (notebook 08): `zero_grad()` of optimizers and modules, wrapped.

While a guard is active, `torch.optim.Optimizer.zero_grad` and `torch.nn.Module.zero_grad`
are wrapped (and `Optimizer.add_param_group`, so that parameters joining an optimizer are
watched from that moment, with the gradients they bring; `Module.requires_grad_`, so that
parameters unfrozen for a phase are watched before its backward(); and `GradScaler.step`, so
that a step it skips is known: its gradients must be cleared too): before the real call, each watched parameter's guard looks at `.grad` (and
starts, on the device, a summary of contributions no step used yet); after it, the guard
records the clear with the line that called it. So a clear in place is known as a clear
without reading a value, and the warning can name the `zero_grad()` line. When the last
guard is removed, the original methods are put back.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from typing import Any

import torch

from utils.guard.sites import stack

_watchers: dict[int, list[tuple[Any, Any]]] = {}  # id(parameter) -> [(guard, record)]
_guards: list[Any] = []  # active guards, oldest first
_originals: dict[str, Any] = {}
clear_ids = itertools.count(1)  # one number per clearing call (zero_grad(), or p.grad = None seen)


def watch(guard: Any) -> None:
    """Start showing clears to `guard` (the first guard installs the wrappers)."""
    if not _guards:
        _install()
    _guards.append(guard)


def unwatch(guard: Any) -> None:
    """Stop showing clears to `guard` (the last one puts the original methods back)."""
    if guard in _guards:
        _guards.remove(guard)
    for key in list(_watchers):
        _watchers[key] = [(g, r) for g, r in _watchers[key] if g is not guard]
        if not _watchers[key]:
            del _watchers[key]
    if not _guards:
        _uninstall()


def add(param: torch.Tensor, guard: Any, record: Any) -> None:
    """Show the clears of `param` to `guard`, which keeps `record` for it."""
    _watchers.setdefault(id(param), []).append((guard, record))


def _clear(params: Iterable[torch.Tensor], original: Any, owner: Any, args: tuple, kwargs: dict) -> Any:
    for guard in _guards:  # parameters added with add_param_group() since: watch them before the clear
        guard._attach_if_changed()
    watched = [pair for p in params if p.grad is not None for pair in _watchers.get(id(p), ())]
    if not watched:
        return original(owner, *args, **kwargs)
    sizes = [guard._before_clear(record) for guard, record in watched]
    result = original(owner, *args, **kwargs)
    frames = stack(2) if any(size is not None for size in sizes) else ()
    clear = next(clear_ids)
    for (guard, record), size in zip(watched, sizes):
        guard._after_clear(record, size, frames, clear)
    return result


def _install() -> None:
    optimizer_zero_grad, module_zero_grad = torch.optim.Optimizer.zero_grad, torch.nn.Module.zero_grad
    add_param_group = torch.optim.Optimizer.add_param_group
    scaler_step, requires_grad_ = torch.amp.GradScaler.step, torch.nn.Module.requires_grad_
    _originals.update(optimizer=optimizer_zero_grad, module=module_zero_grad, add_param_group=add_param_group,
                      scaler_step=scaler_step, requires_grad_=requires_grad_)

    @functools.wraps(optimizer_zero_grad)
    def zero_grad_of_optimizer(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        params = [p for group in self.param_groups for p in group["params"]]
        return _clear(params, optimizer_zero_grad, self, args, kwargs)

    @functools.wraps(module_zero_grad)
    def zero_grad_of_module(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return _clear(list(self.parameters()), module_zero_grad, self, args, kwargs)

    @functools.wraps(add_param_group)
    def add_param_group_and_watch(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        result = add_param_group(self, *args, **kwargs)
        _look_again([guard for guard in _guards if guard.optimizer is self])  # as they are when they join
        return result

    @functools.wraps(requires_grad_)
    def requires_grad_and_watch(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        result = requires_grad_(self, *args, **kwargs)
        _look_again(list(_guards))  # unfrozen for a phase only (StyleGAN2-ADA): hooked before its backward()
        return result

    @functools.wraps(scaler_step)
    def scaler_step_and_watch(self: torch.amp.GradScaler, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        guards = [guard for guard in _guards if guard.optimizer is optimizer]
        steps = [guard.steps for guard in guards]
        result = scaler_step(self, optimizer, *args, **kwargs)
        for guard, before in zip(guards, steps):
            if guard.steps == before:  # no optimizer.step() ran: the scaler skipped it
                guard._skipped_step()
        return result

    torch.optim.Optimizer.zero_grad = zero_grad_of_optimizer
    torch.nn.Module.zero_grad = zero_grad_of_module
    torch.optim.Optimizer.add_param_group = add_param_group_and_watch
    torch.amp.GradScaler.step = scaler_step_and_watch
    torch.nn.Module.requires_grad_ = requires_grad_and_watch


def _look_again(guards: list[Any]) -> None:
    """Let each guard hook the parameters that joined its optimizer or started to require grad."""
    for guard in guards:
        if not guard._broken:
            try:
                guard._attach_if_changed()
            except Exception as error:  # a bug of the guard's own: it stops, never the program
                guard._failed(error)


def _uninstall() -> None:
    if _originals:
        torch.optim.Optimizer.zero_grad = _originals.pop("optimizer")
        torch.nn.Module.zero_grad = _originals.pop("module")
        torch.optim.Optimizer.add_param_group = _originals.pop("add_param_group")
        torch.amp.GradScaler.step = _originals.pop("scaler_step")
        torch.nn.Module.requires_grad_ = _originals.pop("requires_grad_")


def installed() -> bool:
    """Are the zero_grad() wrappers in place? (Only while some guard is active.)"""
    return bool(_originals)
