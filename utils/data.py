"""Small synthetic data sets, drawn on the CPU from a seeded generator (notebook 01 on)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from utils.device import make_generator


class Regression(NamedTuple):
    """A linear regression data set: `y = X @ weight + bias + noise`."""

    X: torch.Tensor  # (num_samples, num_features)
    y: torch.Tensor  # (num_samples, 1), the shape nn.Linear(num_features, 1) returns
    weight: torch.Tensor  # (num_features, 1), the true weight
    bias: torch.Tensor  # (1,), the true bias


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected {name} as an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"expected {name} >= 1, got {value}")
    return value


def make_regression(
    num_samples: int = 64,
    num_features: int = 3,
    *,
    noise: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Regression:
    """Return a seeded linear regression problem on `device`, identical on every machine.

    Everything is drawn on the CPU in float64 from `make_generator(seed)`, then cast and
    moved, so CPU and CUDA runs see the same numbers. Used by notebooks 01 and 02.
    """
    _check_positive_int(num_samples, "num_samples")
    _check_positive_int(num_features, "num_features")
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or noise < 0:
        raise ValueError(f"expected noise as a number >= 0, got {noise!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"expected a floating dtype such as torch.float32, got {dtype!r}")
    generator = make_generator(seed)
    weight = torch.randn(num_features, 1, generator=generator, dtype=torch.float64)
    bias = torch.randn(1, generator=generator, dtype=torch.float64)
    X = torch.randn(num_samples, num_features, generator=generator, dtype=torch.float64)
    y = X @ weight + bias + noise * torch.randn(num_samples, 1, generator=generator, dtype=torch.float64)
    return Regression(*(t.to(device=device, dtype=dtype) for t in (X, y, weight, bias)))


def make_sequences(
    num_sequences: int = 4,
    num_steps: int = 5,
    num_features: int = 2,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return inputs (num_sequences, num_steps, num_features) and targets (num_sequences, num_steps).

    The target at each time step is a running mean of the first feature, so a recurrent cell
    has something to learn. Drawn on the CPU from `make_generator(seed)`. Used by notebook 01.
    """
    _check_positive_int(num_sequences, "num_sequences")
    _check_positive_int(num_steps, "num_steps")
    _check_positive_int(num_features, "num_features")
    generator = make_generator(seed)
    inputs = torch.randn(num_sequences, num_steps, num_features, generator=generator, dtype=torch.float64)
    steps = torch.arange(1, num_steps + 1, dtype=torch.float64)
    targets = inputs[..., 0].cumsum(dim=1) / steps
    return inputs.to(device=device, dtype=dtype), targets.to(device=device, dtype=dtype)


def make_token_sequences(
    num_sequences: int = 8,
    max_len: int = 12,
    num_features: int = 4,
    vocab_size: int = 5,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return padded inputs (num_sequences, max_len, num_features) and labels (num_sequences, max_len).

    Each sequence gets a length drawn from 1..max_len; past it, inputs are 0 and labels are
    -100, the label `F.cross_entropy` ignores by default. Drawn on the CPU from
    `make_generator(seed)`. Used by notebooks 06 and 07 for a token-level loss.
    """
    for value, name in ((num_sequences, "num_sequences"), (max_len, "max_len"),
                        (num_features, "num_features"), (vocab_size, "vocab_size")):
        _check_positive_int(value, name)
    generator = make_generator(seed)
    lengths = torch.randint(1, max_len + 1, (num_sequences,), generator=generator)
    inputs = torch.randn(num_sequences, max_len, num_features, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, vocab_size, (num_sequences, max_len), generator=generator)
    padding = torch.arange(max_len) >= lengths[:, None]
    inputs[padding], labels[padding] = 0.0, -100
    return inputs.to(device=device, dtype=dtype), labels.to(device=device)
