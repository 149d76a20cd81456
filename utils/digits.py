"""Real data for notebook 09: scikit-learn's handwritten digits, a small CNN, minibatches, plots.

scikit-learn ships 1,797 labelled 8×8 images inside its package (`sklearn.datasets.load_digits`):
nothing is downloaded. We read its file directly, the way `load_digits` does (a test compares
the two), because importing scikit-learn takes about a second, longer than a training run here. The split, the shuffles and the model's first
weights come from seeded CPU generators and are then moved to the device, so every machine
trains the same run.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from utils.device import make_generator

if TYPE_CHECKING:  # matplotlib is imported only to plot: scripts that train never pay for it
    from matplotlib.axes import Axes

NUM_TEST = 357  # 1,797 images: 1,440 to train on (45 batches of 32), 357 to test on
NUM_CLASSES = 10


class Digits(NamedTuple):
    """Images (n, 1, 8, 8) with pixels in [0, 1], and their labels 0-9 (int64)."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor


def _check_int(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected {name} as an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"expected {name} >= {low}, got {value}")
    return value


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"expected a floating dtype such as torch.float64, got {dtype!r}")
    return dtype


def _read_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits: images (1797, 8, 8) with pixels 0..16, labels (1797,), from its own file."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None:
        raise ModuleNotFoundError("notebook 09 reads its digits from scikit-learn: pip install -r requirements.txt")
    folders = spec.submodule_search_locations or []
    path = next((Path(f) / "datasets" / "data" / "digits.csv.gz" for f in folders), None)
    if path is None or not path.is_file():  # another layout: let scikit-learn find it
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return torch.tensor(bunch.images, dtype=torch.float64), torch.tensor(bunch.target, dtype=torch.int64)
    import numpy as np

    with gzip.open(path, "rt") as file:
        table = torch.from_numpy(np.loadtxt(file, delimiter=",", dtype=np.float64))
    return table[:, :-1].reshape(-1, 8, 8).contiguous(), table[:, -1].to(torch.int64)


def load_digits_split(
    num_test: int = NUM_TEST,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> Digits:
    """Return scikit-learn's digits, shuffled with `seed` and split into train and test (notebook 09)."""
    _check_int(num_test, "num_test", 1)
    _check_dtype(dtype)
    images, labels = _read_digits()
    if num_test >= len(labels):
        raise ValueError(f"expected num_test below {len(labels)} (the number of images), got {num_test}")
    images = images.unsqueeze(1) / 16  # pixels 0..16
    order = torch.randperm(len(labels), generator=make_generator(seed))
    test, train = order[:num_test], order[num_test:]
    parts = (images[train].to(dtype), labels[train], images[test].to(dtype), labels[test])
    return Digits(*(t.to(device) for t in parts))


def make_model(seed: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Return the notebook's CNN (two conv blocks with BatchNorm, one linear layer), seeded.

    The weights are drawn on the CPU inside `torch.random.fork_rng`, so the caller's global
    random state is left alone, and the same seed gives the same model on every device.
    """
    _check_int(seed, "seed", 0)
    _check_dtype(dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 2 * 2, NUM_CLASSES),
        )
    return model.to(device=device, dtype=dtype)


def minibatches(X: torch.Tensor, y: torch.Tensor, batch_size: int, *, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffle (X, y) with `seed` and cut it into batches of `batch_size`; the last may be smaller.

    What a `DataLoader(shuffle=True)` gives, drawn from a seeded CPU generator, so that every
    machine sees the same batches. Notebook 09 passes `seed=epoch`: a new order every epoch.
    """
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"expected X and y as tensors, got {type(X).__name__} and {type(y).__name__}")
    if len(X) != len(y):
        raise ValueError(f"expected one label per sample, got {len(X)} samples and {len(y)} labels")
    _check_int(batch_size, "batch_size", 1)
    _check_int(seed, "seed", 0)
    order = torch.randperm(len(X), generator=make_generator(seed)).to(X.device)
    return [(X[part], y[part.to(y.device)]) for part in order.split(batch_size)]


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Return the predicted digit for each image, with the model in eval mode (BatchNorm's running statistics)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        return model(X).argmax(dim=1)
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Return the share of images in X whose digit the model predicts right (notebook 09)."""
    if not isinstance(y, torch.Tensor) or len(y) != len(X):
        raise ValueError("expected one label per image: pass data.X_test and data.y_test")
    return (predict(model, X) == y).double().mean().item()


def plot_digits(
    images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor | None = None, ax: Axes | None = None
) -> Axes:
    """Draw digits side by side, each with its label, or its prediction and label (notebook 09).

    A wrong prediction is written "pred ✘ (label)" in a second colour: never colour alone.
    """
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1:] != (1, 8, 8):
        raise TypeError("expected images as a tensor of shape (n, 1, 8, 8), e.g. data.X_train[:12]")
    count = len(images)
    if not 1 <= count <= 16 or not isinstance(labels, torch.Tensor) or len(labels) != count:
        raise ValueError(f"expected 1 to 16 images with one label each, got {count} images")
    if predictions is not None and (not isinstance(predictions, torch.Tensor) or len(predictions) != count):
        raise ValueError("expected one prediction per image, or predictions=None")
    columns, rows = min(count, 8), (count + 7) // 8
    if ax is None:
        _, ax = plt.subplots(figsize=(1.1 * columns + 0.4, 1.7 * rows + 0.5))
    elif not isinstance(ax, Axes):
        raise TypeError(f"expected a matplotlib Axes or None for ax, got {type(ax).__name__}")
    width, height = 10, 14  # each digit's cell: 8 pixels, a gap, room for its text below
    sheet = torch.ones(rows * height, columns * width - 2, dtype=torch.float64)  # white paper
    guesses = labels.tolist() if predictions is None else predictions.tolist()
    for i, (image, label, guess) in enumerate(zip(images.detach().cpu().double(), labels.tolist(), guesses)):
        top, left = (i // columns) * height, (i % columns) * width
        sheet[top : top + 8, left : left + 8] = 1 - image[0]  # dark ink
        right = guess == label
        ax.text(left + 3.5, top + 9, str(label) if right else f"{guess} ✘ ({label})", ha="center", va="top",
                fontsize=14, color="black" if right else "C2", fontweight="normal" if right else "bold")
    ax.imshow(sheet.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    return ax


class GradientMeter:
    """At each step of `optimizer`, the size of `.grad` and of the gradient this step's backward() added.

    Notebook 09 watches a run without `zero_grad()`: `Tensor.register_hook` on each parameter
    sees every gradient on its way into `.grad` (notebook 08), so the meter knows what was
    added since the last step whatever `.grad` holds. Per step it records, over all
    parameters as one vector: `grad_norms` (the norm of `.grad`), `added_norms` (the norm of
    what was added since the last step) and `cosines` (the cosine of the angle between them).
    `added_total` sums everything added since the meter started.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.added = [torch.zeros_like(p) for p in self.params]
        self.added_total = [torch.zeros_like(p) for p in self.params]
        self.grad_norms: list[float] = []
        self.added_norms: list[float] = []
        self.cosines: list[float] = []
        self.handles = [p.register_hook(partial(self._add, i)) for i, p in enumerate(self.params)]
        self.handles.append(optimizer.register_step_pre_hook(self._record))

    def _add(self, index: int, grad: torch.Tensor) -> None:
        self.added[index] += grad.detach()
        self.added_total[index] += grad.detach()

    def _record(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        grad = torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten() for p in self.params])
        added = torch.cat([a.flatten() for a in self.added])
        self.grad_norms.append(grad.norm().item())
        self.added_norms.append(added.norm().item())
        self.cosines.append(torch.nn.functional.cosine_similarity(grad, added, dim=0).item())
        for a in self.added:
            a.zero_()

    def remove(self) -> None:
        """Remove every hook the meter added."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self) -> GradientMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class WindowMeter:
    """At each optimizer step, the micro-batches whose gradients the step uses (notebook 09).

    A forward hook on the loss module (`loss_fn`, or every loss module when None) puts a hook
    on each loss it returns; during backward() that hook receives the factor the loss was
    multiplied by (1 for `loss.backward()`, 1/4 for `(loss / 4).backward()`), counted against
    the micro-batch's mean loss (a loss with `reduction="sum"` is that mean times its samples). Each step, of
    any optimizer, closes a window: `steps[t]` lists (samples, factor) per micro-batch that
    reached `.grad` since step t - 1; `pending` holds those no step has used yet. The step
    uses the mean gradient of its samples when each factor is samples / (samples in the step).
    """

    def __init__(self, loss_fn: nn.Module | None = None) -> None:
        if loss_fn is not None and not isinstance(loss_fn, nn.Module):
            raise TypeError(f"expected the loss as an nn.Module such as nn.CrossEntropyLoss(), got {type(loss_fn).__name__}")
        self.steps: list[list[tuple[int, float]]] = []
        self.pending: list[tuple[int, float]] = []
        if loss_fn is None:
            loss_hook = torch.nn.modules.module.register_module_forward_hook(self._on_any_module)
        else:
            loss_hook = loss_fn.register_forward_hook(self._on_loss)
        step_hook = register_optimizer_step_pre_hook(self._on_step)
        self.handles = [loss_hook, step_hook]

    def _on_any_module(self, module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(module, nn.modules.loss._Loss):
            self._on_loss(module, args, output)

    def _on_loss(self, module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad and output.numel() == 1 and args:
            samples = len(args[0]) if isinstance(args[0], torch.Tensor) and args[0].dim() > 0 else 1
            per_mean = samples if getattr(module, "reduction", "mean") == "sum" else 1  # a sum is samples means
            output.register_hook(lambda grad: self.pending.append((samples, float(grad.sum()) * per_mean)))

    def _on_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self.steps.append(self.pending)
        self.pending = []

    def micro_batches(self) -> list[int]:
        """How many micro-batches each step used."""
        return [len(window) for window in self.steps]

    def sample_weights(self) -> list[tuple[float, float]]:
        """Per step, the smallest and largest weight of a sample, times the samples in the step: (1, 1) for a mean."""
        result = []
        for window in self.steps:
            total = sum(samples for samples, _ in window)
            weights = [factor * total / samples for samples, factor in window] or [0.0]
            result.append((min(weights), max(weights)))
        return result

    def remove(self) -> None:
        """Remove every hook the meter added."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self) -> WindowMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
