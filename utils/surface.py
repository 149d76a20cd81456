"""The loss surface of a two-parameter model `w·x + b`, and training paths drawn on it (notebook 02).

Computed in float64 on the CPU from whatever device the data lives on, and vectorised: one
broadcast over the whole grid, no Python loop. Call `plt.style.use("utils.course")` first;
importing changes no rcParams.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm

MARKERS = ("s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", ":", "-.")


def _one_feature(X: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"expected X and y as tensors, got {type(X).__name__} and {type(y).__name__}")
    if X.dim() not in (1, 2) or (X.dim() == 2 and X.shape[1] != 1):
        raise ValueError(f"expected X with one feature, shape (n, 1) or (n,), got {tuple(X.shape)}; "
                         "use make_regression(num_features=1)")
    x, t = X.detach().cpu().double().flatten(), y.detach().cpu().double().flatten()
    if x.numel() != t.numel() or x.numel() == 0:
        raise ValueError(f"expected one target per sample, got {x.numel()} samples and {t.numel()} targets")
    return x, t


def mse_surface(X: torch.Tensor, y: torch.Tensor, w_values: torch.Tensor, b_values: torch.Tensor) -> torch.Tensor:
    """Return the mean squared error of `w·x + b` on a grid, float64 (notebook 02).

    Entry [i, j] is the loss at w = w_values[j], b = b_values[i]: rows follow b, columns
    follow w, the layout `matplotlib.axes.Axes.contour` expects.
    """
    x, t = _one_feature(X, y)
    w = torch.as_tensor(w_values, dtype=torch.float64).flatten()
    b = torch.as_tensor(b_values, dtype=torch.float64).flatten()
    residual = w[None, :, None] * x + b[:, None, None] - t  # (len(b), len(w), num_samples)
    return (residual**2).mean(dim=-1)


def least_squares_minimum(X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Return the (w, b) where the mean squared error of `w·x + b` is lowest, in float64 (notebook 02)."""
    x, t = _one_feature(X, y)
    design = torch.stack([x, torch.ones_like(x)], dim=1)
    w, b = torch.linalg.lstsq(design, t[:, None]).solution.flatten().tolist()
    return w, b


def _check_paths(paths: object) -> dict[str, np.ndarray]:
    if not isinstance(paths, dict) or not paths:
        raise TypeError("expected a non-empty dict mapping a loop's name to its list of (w, b) pairs")
    checked = {}
    for name, path in paths.items():
        points = np.asarray(path, dtype=float)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
            raise ValueError(f"expected the path {name!r} as a list of (w, b) pairs, got shape {points.shape}")
        if not np.isfinite(points).all():
            raise ValueError(f"the path {name!r} holds inf or nan: the loop diverged; plot fewer steps")
        checked[str(name)] = points
    return checked


def plot_paths_on_surface(
    X: torch.Tensor,
    y: torch.Tensor,
    paths: dict[str, Sequence[tuple[float, float]]],
    ax: Axes | None = None,
    *,
    num: int = 121,
    margin: float = 0.15,
) -> Axes:
    """Draw the loss surface of `w·x + b` as contours, and each named (w, b) path on it (notebook 02).

    The grid covers every path and the minimum (a star), plus `margin` of the span on each
    side. Levels are log-spaced, so the flat valley floor still shows. Each path has its own
    colour, line style and end marker, all three in the legend; the shared start (a circle) and
    the minimum (a star) are hollow and drawn on top, so that no end marker hides under them.
    """
    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"expected a matplotlib Axes or None for ax, got {type(ax).__name__}")
    if isinstance(num, bool) or not isinstance(num, int) or num < 10:
        raise ValueError(f"expected num as an int >= 10 (grid points per axis), got {num!r}")
    checked = _check_paths(paths)
    best = least_squares_minimum(X, y)
    points = np.concatenate([*checked.values(), np.array([best])])
    low, high = points.min(axis=0), points.max(axis=0)
    pad = np.maximum(margin * (high - low), 0.5)
    w_values = torch.linspace(low[0] - pad[0], high[0] + pad[0], num, dtype=torch.float64)
    b_values = torch.linspace(low[1] - pad[1], high[1] + pad[1], num, dtype=torch.float64)
    loss = mse_surface(X, y, w_values, b_values).numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 5.2))
    levels = np.geomspace(loss.min() * 1.05, loss.max(), 14)
    ax.contour(w_values.numpy(), b_values.numpy(), loss, levels=levels, norm=LogNorm(), cmap="Greys",
               linewidths=1)
    for i, (name, path) in enumerate(checked.items()):
        style = LINESTYLES[i % len(LINESTYLES)]
        (line,) = ax.plot(path[:, 0], path[:, 1], linewidth=2, marker=".", markersize=5, linestyle=style)
        # the same path again, labelled, with a big marker on its last point: the legend shows both
        ax.plot(path[:, 0], path[:, 1], label=name, color=line.get_color(), linewidth=2,
                linestyle=style, marker=MARKERS[i % len(MARKERS)], markevery=[len(path) - 1],
                markeredgecolor="black", markersize=11, zorder=3)
    start = next(iter(checked.values()))[0]
    # hollow, and drawn over the end markers, so that a path ending on the start or the minimum stays visible
    ax.plot(*start, "o", mfc="none", mec="black", markersize=14, mew=2, linestyle="none", label="start", zorder=4)
    ax.plot(*best, "*", mfc="none", mec="black", markersize=22, mew=1.5, linestyle="none", label="minimum",
            zorder=4)
    ax.set_xlabel("weight w")
    ax.set_ylabel("bias b")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, title="each path ends at its marker",
              title_fontsize=12)
    return ax
