"""Plot helpers. Call `plt.style.use("utils.course")` first; importing changes no rcParams."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)))


def _axes(ax: Axes | None) -> Axes:
    if ax is None:
        _, ax = plt.subplots()
    elif not isinstance(ax, Axes):
        raise TypeError(f"expected a matplotlib Axes or None for ax, got {type(ax).__name__}")
    return ax


def plot_bars(
    labels: Sequence[str], values: Sequence[float], ax: Axes | None = None, *, total_label: str | None = None
) -> Axes:
    """Bar chart of contributions, with their sum as a hatched last bar if `total_label` is set.

    Notebook 01 uses it for the gradient each time step of a recurrent cell adds.
    """
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"expected labels as a list of strings, got {type(labels).__name__}")
    values = [float(v) for v in values]
    if len(labels) != len(values) or not labels:
        raise ValueError(f"expected one label per value, got {len(labels)} labels and {len(values)} values")
    ax = _axes(ax)
    ax.bar(list(labels), values, color="C0", edgecolor="black")
    if total_label is not None:
        ax.bar([total_label], [sum(values)], color="C1", edgecolor="black", hatch="//")
    ax.axhline(0.0, color="black", linewidth=1)
    ax.grid(axis="x", visible=False)
    return ax


def plot_loss_curves(
    curves: dict[str, Sequence[float]], ax: Axes | None = None, *, log: bool = True
) -> Axes:
    """Overlay loss curves, one per named training loop, against the step (notebooks 02 and 08).

    Each curve gets the course cycle's colour *and* line style, so print-outs and colour-blind
    viewers can tell them apart; `log=True` puts the loss on a log scale.
    """
    if not isinstance(curves, dict) or not curves:
        raise TypeError("expected a non-empty dict mapping a loop's name to its list of losses")
    ax = _axes(ax)
    for i, (name, losses) in enumerate(curves.items()):
        values = [float(v) for v in losses]
        if not values:
            raise ValueError(f"the curve {name!r} has no losses to plot")
        ax.plot(range(len(values)), values, linestyle=LINESTYLES[i % len(LINESTYLES)], label=str(name))
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (log scale)" if log else "training loss")
    ax.legend()
    return ax


def plot_running_sum(grads: Sequence[torch.Tensor | None], ax: Axes | None = None) -> Axes:
    """Plot each entry of `.grad` after 0, 1, 2, ... `backward()` calls (notebook 01).

    `grads[k]` is `.grad` after k calls. A `None` is no tensor, so it gets no value: its
    call count is shaded and labelled "None", and the lines start at the first tensor.
    """
    if isinstance(grads, torch.Tensor) or not isinstance(grads, Sequence) or len(grads) == 0:
        raise TypeError("expected a non-empty list of .grad snapshots (tensors or None), one per call count")
    bad = [type(g).__name__ for g in grads if g is not None and not isinstance(g, torch.Tensor)]
    if bad:
        raise TypeError(f"expected each snapshot to be a tensor or None, got {bad[0]}")
    if any(g is not None and g.is_complex() for g in grads):
        raise TypeError("expected real tensors, got a complex one")
    shapes = {tuple(g.shape) for g in grads if g is not None}
    if len(shapes) != 1:
        raise ValueError(f"expected at least one tensor snapshot, all of one shape; got shapes {sorted(shapes)}")
    ax = _axes(ax)
    calls = [k for k, g in enumerate(grads) if g is not None]
    rows = torch.stack([grads[k].detach().cpu().double().flatten() for k in calls])
    for i in range(rows.shape[1]):
        ax.plot(calls, rows[:, i].tolist(), marker=MARKERS[i % len(MARKERS)], label=f"grad[{i}]")
    empty = [k for k, g in enumerate(grads) if g is None]
    for k in empty:
        ax.axvspan(k - 0.35, k + 0.35, facecolor="0.9", hatch="//", edgecolor="0.6", linewidth=0,
                   label="None: no tensor" if k == empty[0] else None)
        ax.text(k, 0.5, "None", transform=ax.get_xaxis_transform(), rotation=90, ha="center", va="center",
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 2})
    ax.set_xticks(range(len(grads)))
    ax.set_xlim(-0.5, len(grads) - 0.5)
    ax.set_xlabel("number of backward() calls")
    ax.set_ylabel("value held in .grad")
    ax.legend()
    return ax


def plot_schedules(
    schedules: dict[str, Sequence[float]], ax: Axes | None = None, *, steps_per_epoch: int | None = None
) -> Axes:
    """Plot the learning rate each optimizer step gets, one line per schedule (notebook 05).

    Steps count from 1. `steps_per_epoch` draws a thin vertical line where each epoch ends.
    Each schedule gets its own colour, line style and marker.
    """
    if not isinstance(schedules, dict) or not schedules:
        raise TypeError("expected a non-empty dict mapping a schedule's name to its learning rates")
    if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int)
                                        or steps_per_epoch < 1):
        raise ValueError(f"expected steps_per_epoch as an int >= 1 or None, got {steps_per_epoch!r}")
    ax = _axes(ax)
    longest = 0
    for i, (name, rates) in enumerate(schedules.items()):
        try:
            values = [float(v) for v in rates]
        except (TypeError, ValueError):
            raise ValueError(f"expected the schedule {name!r} as a list of numbers, got {rates!r}") from None
        if not values:
            raise ValueError(f"the schedule {name!r} has no learning rates to plot")
        longest = max(longest, len(values))
        ax.plot(range(1, len(values) + 1), values, linestyle=LINESTYLES[i % len(LINESTYLES)],
                marker=MARKERS[i % len(MARKERS)], label=str(name))
    if steps_per_epoch is not None:
        for end in range(steps_per_epoch, longest, steps_per_epoch):
            ax.axvline(end + 0.5, color="0.6", linewidth=1, linestyle=":")
    ax.set_xticks(range(1, longest + 1))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.legend()
    return ax
