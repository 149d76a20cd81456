"""Readable names for parameters, and a clear message when the guard is given the wrong thing (notebook 08)."""

from __future__ import annotations

from collections.abc import Iterable
from types import FrameType
from typing import Any

import torch

from utils.guard.sites import _SKIP


def check_optimizer(optimizer: Any) -> None:
    """Raise a TypeError that says what to pass, unless `optimizer` is a torch.optim.Optimizer."""
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


def _model_in_scope(wanted: set[int], frame: FrameType | None, depth: int = 4) -> torch.nn.Module | None:
    """The module, among the variables of the calling code, that holds the most of `wanted`.

    The nearest `depth` frames outside torch and this package are searched, nearest first.
    """
    while frame is not None and depth > 0:
        if not frame.f_code.co_filename.startswith(_SKIP):
            depth -= 1
            scopes = (frame.f_locals, frame.f_globals)
            modules = {id(v): v for scope in scopes for v in list(scope.values()) if isinstance(v, torch.nn.Module)}
            best = max(modules.values(), default=None,  # most of ours; then the largest: the whole model
                       key=lambda m: (len(wanted & set(names := _names_from(m))), len(names)))
            if best is not None and wanted & set(_names_from(best)):
                return best
        frame = frame.f_back
    return None


def find_names(optimizer: torch.optim.Optimizer, model: torch.nn.Module | None,
               caller: FrameType | None) -> dict[int, str]:
    """Name each parameter: from `model`, the optimizer's `param_names`, or a model the caller can see."""
    names: dict[int, str] = {}
    for i, group in enumerate(optimizer.param_groups):
        for j, p in enumerate(group["params"]):
            names[id(p)] = f"param_groups[{i}]['params'][{j}]"
        for p, name in zip(group["params"], group.get("param_names", ())):
            names[id(p)] = name
    if model is None:
        model = _model_in_scope(set(names), caller)
    if model is not None:
        names.update((k, v) for k, v in _names_from(model).items() if k in names)
    return names
