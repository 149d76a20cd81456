"""Measure what training keeps and does: saved bytes, gradients, backward() calls per step, what a
16-bit type loses (notebooks 05-07).

`SavedTensorMeter` counts the tensors a forward pass saves for `backward()` (activations),
through `torch.autograd.graph.saved_tensors_hooks`. It counts each distinct storage once and
leaves out the model's own parameters and buffers, which stay in memory whether or not you
train. The count depends only on shapes and dtypes, so it is the same on every machine.
`BackwardCounter` counts the backward() calls that reach each optimizer step, so a loop's
windows can be seen (and an exercise can tell one backward() per micro-batch from one per
window). `rounding_error` says how much of a number of each size a floating-point type keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return str(tensor.device), tensor.untyped_storage().data_ptr()


class SavedTensorMeter:
    """Count the bytes autograd saves for backward inside a `with` block (notebook 05).

    `exclude` is the model (its parameters and buffers are left out) or a list of tensors.
    A saved tensor that is a view (a slice, `weight.T`) counts its whole storage, since the
    graph keeps all of it alive; storages already counted, or excluded, add nothing.
    """

    def __init__(self, exclude: nn.Module | Iterable[torch.Tensor] = ()) -> None:
        if isinstance(exclude, nn.Module):
            tensors = [*exclude.parameters(), *exclude.buffers()]
        elif isinstance(exclude, torch.Tensor):
            tensors = [exclude]
        else:
            try:
                tensors = list(exclude)
            except TypeError:
                raise TypeError(
                    f"expected the model or a list of tensors for exclude, got {type(exclude).__name__}"
                ) from None
        bad = [type(t).__name__ for t in tensors if not isinstance(t, torch.Tensor)]
        if bad:
            raise TypeError(f"expected tensors to exclude, got {bad[0]}; pass model or model.parameters()")
        self._excluded = {_storage_key(t) for t in tensors}
        self._kept: dict[tuple[str, int], Any] = {}
        self._context: Any = None
        self.num_bytes = 0
        self.num_tensors = 0
        self.shapes: list[tuple[int, ...]] = []  # the shape of each counted tensor, in saving order

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in self._excluded and key not in self._kept:
            storage = tensor.untyped_storage()
            self._kept[key] = storage  # held until exit, so no other storage reuses its address
            self.num_bytes += storage.nbytes()
            self.num_tensors += 1
            self.shapes.append(tuple(tensor.shape))
        return tensor

    def __enter__(self) -> SavedTensorMeter:
        if self._context is not None:
            raise RuntimeError("this SavedTensorMeter is already counting; make a new one to nest")
        self.num_bytes, self.num_tensors, self.shapes = 0, 0, []
        self._context = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._context.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._context.__exit__(*exc_info)
        self._context = None
        self._kept.clear()


def grads(model: nn.Module) -> list[torch.Tensor]:
    """Return a detached copy of every parameter's `.grad`, a `None` as zeros (notebooks 05, 06)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}; pass the model itself")
    params = list(model.parameters())
    if not params or all(p.grad is None for p in params):
        raise ValueError("no parameter has a .grad yet: call backward() on a loss of this model first")
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]


def largest_difference(
    a: torch.Tensor | Sequence[torch.Tensor], b: torch.Tensor | Sequence[torch.Tensor]
) -> float:
    """Return the largest |a - b| over matching tensors, exactly, in float64 (notebooks 05-07)."""
    pairs = []
    for name, value in (("a", a), ("b", b)):
        tensors = [value] if isinstance(value, torch.Tensor) else value
        if not isinstance(tensors, Sequence) or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise TypeError(f"expected {name} as a tensor or a list of tensors, got {type(value).__name__}")
        pairs.append(tensors)
    if len(pairs[0]) != len(pairs[1]) or not pairs[0]:
        raise ValueError(f"expected two non-empty lists of one length, got {len(pairs[0])} and {len(pairs[1])}")
    largest = 0.0
    for x, y in zip(*pairs):
        if x.shape != y.shape:
            raise ValueError(f"expected tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        diff = x.detach().cpu().double() - y.detach().cpu().double()
        largest = max(largest, float(diff.abs().max())) if diff.numel() else largest
    return largest


class BackwardCounter:
    """Count the backward() calls that reach each `optimizer.step()` (notebook 05).

    A post-accumulate-grad hook on the model's first trainable parameter counts every
    backward() that adds into its `.grad`; a step post-hook on the optimizer records the
    count at each step and starts a new one. `per_step[i]` is how many backward() calls
    came before step i (since the previous step); `pending` counts those after the last
    step. Use it in a `with` block, or call `remove()` when done.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}; pass the model itself")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}; "
                            "pass the optimizer, not model.parameters()")
        param = next((p for p in model.parameters() if p.requires_grad), None)
        if param is None:
            raise ValueError("the model has no parameter that requires grad: nothing to count")
        self.per_step: list[int] = []
        self.pending = 0
        self._handles = [param.register_post_accumulate_grad_hook(self._count_backward),
                         optimizer.register_step_post_hook(self._count_step)]

    def _count_backward(self, param: torch.Tensor) -> None:
        self.pending += 1

    def _count_step(self, *args: object) -> None:
        self.per_step.append(self.pending)
        self.pending = 0

    def remove(self) -> None:
        """Stop counting: remove both hooks (the counts stay readable)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> BackwardCounter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def rounding_error(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Return the worst relative error of storing a number of each size of `values` in `dtype` (notebook 06).

    Between neighbouring numbers of `dtype`, a gap g apart, rounding moves a number v by up to
    g / 2: a relative error of up to g / (2 |v|). The gap is `eps` times the power of 2 below
    |v|, and stops shrinking below the smallest normal number (`tiny`), where the subnormal
    numbers are spaced `eps × tiny` apart. A number closer to 0 than half that spacing becomes
    0 (an error of 1, all of it); one beyond the largest finite number, inf; 0 itself, 0.
    Computed in float64 from `torch.finfo`, so it is the same on every machine.
    """
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"expected values as a tensor, got {type(values).__name__}; "
                        "try torch.logspace(-10, 2, 601, dtype=torch.float64)")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"expected a floating-point torch.dtype such as torch.float16, got {dtype!r}")
    info = torch.finfo(dtype)
    size = values.detach().cpu().double().abs()
    exponent = torch.floor(torch.log2(size)).clamp(min=math.log2(info.tiny))
    gap = info.eps * torch.exp2(exponent)
    error = (gap / (2 * size)).clamp(max=1.0)
    largest_gap = info.eps * 2.0 ** math.floor(math.log2(info.max))
    error = torch.where(size < info.eps * info.tiny / 2, 1.0, error)  # rounds to 0
    error = torch.where(size >= info.max + largest_gap / 2, math.inf, error)  # rounds to inf
    return torch.where(size == 0, 0.0, error)  # 0 itself is stored exactly
