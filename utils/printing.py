"""Print numbers the same way on every machine: rounded, without negative zeros (notebook 01 on).

float32 results differ in their last digits between thread counts and between CPU and CUDA,
so the notebooks print rounded values; stored outputs then compare equal everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def rounded(value: float | torch.Tensor | Iterable[float], digits: int = 4) -> float | list[float]:
    """Return `value` rounded to `digits` decimals: a float, or a flat list for a tensor or list."""
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 0:
        raise ValueError(f"expected digits as an int >= 0, got {digits!r}")
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError("expected a real tensor, got a complex one")
        if value.dim() == 0:
            return rounded(float(value.detach().cpu().double()), digits)
        return [rounded(float(v), digits) for v in value.detach().cpu().double().flatten()]
    if isinstance(value, bool):
        raise TypeError("expected a number or a tensor, got bool; print booleans as they are")
    if isinstance(value, (str, bytes)):
        raise TypeError(f"expected a number or a tensor, got {type(value).__name__} {value!r}")
    if isinstance(value, (int, float)):
        return round(float(value), digits) + 0.0  # + 0.0 turns -0.0 into 0.0
    try:
        return [rounded(v, digits) for v in value]
    except TypeError:
        raise TypeError(f"expected a number, a tensor or a list of numbers, got {type(value).__name__}") from None


def fmt(value: float | torch.Tensor | Iterable[float], digits: int = 4) -> str:
    """Return `value` rounded to `digits` decimals as text, e.g. '[0.5000, -1.2500]'."""
    result = rounded(value, digits)
    if isinstance(result, list):
        return "[" + ", ".join(f"{v:.{digits}f}" for v in result) + "]"
    return f"{result:.{digits}f}"


def fmt_diff(value: float, floor: float = 1e-10) -> str:
    """Format a largest difference stably: '< floor' below `floor`, else 2 significant digits (notebook 05)."""
    for name, number in (("value", value), ("floor", floor)):
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise TypeError(f"expected {name} as a float, got {type(number).__name__}; use .item() on a tensor")
    if value < 0 or floor <= 0:
        raise ValueError(f"expected a difference >= 0 and a floor > 0, got {value!r} and {floor!r}")
    return f"< {floor:.0e}" if value < floor else f"{value:.2g}"
