"""Values the guard reads from the device: summarised where they are, read all at once (notebook 08).

Reading a value off a GPU makes the CPU wait for the GPU (a synchronisation). So the guard
never reads when it looks at a gradient: `summary` starts a reduction that stays on the
device, and the guard reads only the summaries it needs, when a step or the end needs a
verdict, in one transfer (`read`). A correct loop usually needs none.
"""

from __future__ import annotations

import torch

Summary = tuple[torch.Tensor, torch.Tensor]  # (smallest, largest) entry, 0-dim, still on the device
_reads = [0]  # reads made so far in this process (tests/bench_guard.py reports them per step)


def reads_made() -> int:
    """How many reads from the device the guard has made in this process."""
    return _reads[0]


def summary(grad: torch.Tensor) -> Summary:
    """The smallest and largest entry of a gradient, computed on its device and not read (one pass)."""
    values = (grad._values() if grad.is_sparse else grad).detach()
    if values.is_complex():
        values = values.abs()
    if values.numel() == 0:
        values = values.new_zeros(1)
    low, high = torch.aminmax(values)
    return low, high


def read(summaries: list[Summary]) -> list[float]:
    """Read many summaries in one transfer: the largest |entry| of each (nan if a nan is there)."""
    if not summaries:
        return []
    flat = [value.float() for pair in summaries for value in pair]
    devices = {value.device for value in flat}
    target = flat[0].device
    if len(devices) > 1:  # model parallel: gather on one device first, then read once
        flat = [value.to(target, non_blocking=True) for value in flat]
    values = torch.stack(flat).tolist()  # the one read
    _reads[0] += 1
    result = []
    for low, high in zip(values[0::2], values[1::2]):
        result.append(float("nan") if low != low or high != high else max(-low, high))
    return result


def nonzero(value: float) -> bool:
    """A largest |entry| that says the gradient holds something (a nan or inf does)."""
    return value != 0.0


def finite(value: float) -> bool:
    """A largest |entry| that is neither inf nor nan (a skipped step's gradient is not)."""
    return value == value and value != float("inf")
