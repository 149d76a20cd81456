"""Which device the course computes on, and seeded random generators (notebook 01 on)."""

from __future__ import annotations

import os
import platform

import torch

ENV_VAR = "COURSE_DEVICE"
DEVICES = ("cpu", "cuda")


def get_device(name: str | None = None) -> torch.device:
    """Return the course device: `name`, else $COURSE_DEVICE, else cuda if present, else cpu.

    Used by every notebook's setup cell. Asking for cuda on a machine without one is an
    error, so a GPU run can never quietly fall back to the CPU.
    """
    source = "get_device(name=...)"
    if name is None:
        name = os.environ.get(ENV_VAR, "").strip() or None
        source = f"the environment variable {ENV_VAR}"
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str):
        raise TypeError(f"expected the device as a string, 'cpu' or 'cuda', got {type(name).__name__}")
    name = name.strip().lower()
    if name not in DEVICES:
        raise ValueError(f"{source} must be 'cpu' or 'cuda', got {name!r}; unset it to choose automatically")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"{source} asks for 'cuda', but torch {torch.__version__} sees no CUDA GPU here; "
            f"use 'cpu' or unset {ENV_VAR}"
        )
    return torch.device(name)


def make_generator(seed: int) -> torch.Generator:
    """Return a CPU `torch.Generator` seeded with `seed`: the same numbers on every machine.

    Data is always drawn on the CPU with one of these and then moved to the device, because
    CPU and CUDA generators give different numbers for the same seed. Used by `utils.data`.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"expected the seed as an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"expected a seed >= 0, got {seed}")
    return torch.Generator(device="cpu").manual_seed(seed)


def describe_environment(device: torch.device | None = None) -> str:
    """Return one line per version that matters, for each notebook's setup cell.

    Versions and device names differ between machines, so the cell printing this is marked
    `# NBVAL_IGNORE_OUTPUT`.
    """
    import matplotlib

    device = get_device() if device is None else device
    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    )
    return "\n".join(
        [
            f"python     {platform.python_version()}",
            f"torch      {torch.__version__}",
            f"matplotlib {matplotlib.__version__}",
            f"device     {device} ({where})",
        ]
    )
