"""utils.surface: the loss surface's numbers, the paths drawn on it, and bad input."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from utils.data import make_regression
from utils.surface import least_squares_minimum, mse_surface, plot_paths_on_surface


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def data():
    d = make_regression(num_samples=16, num_features=1, seed=3)
    return d.X, d.y


def test_surface_is_the_mean_squared_error_at_every_grid_point(data):
    X, y = data
    w_values, b_values = torch.linspace(-2, 2, 5), torch.linspace(-1, 1, 3)
    surface = mse_surface(X, y, w_values, b_values)
    assert surface.shape == (3, 5) and surface.dtype == torch.float64
    x, t = X.double().flatten(), y.double().flatten()
    for i, b in enumerate(b_values.double()):
        for j, w in enumerate(w_values.double()):
            assert torch.isclose(surface[i, j], ((w * x + b - t) ** 2).mean(), rtol=1e-12)


def test_least_squares_minimum_has_zero_gradient_and_is_the_lowest_point(data):
    X, y = data
    w, b = least_squares_minimum(X, y)
    params = torch.tensor([w, b], dtype=torch.float64, requires_grad=True)
    x, t = X.double().flatten(), y.double().flatten()
    ((params[0] * x + params[1] - t) ** 2).mean().backward()
    assert params.grad.abs().max() < 1e-10
    grid = mse_surface(X, y, torch.linspace(w - 1, w + 1, 21), torch.linspace(b - 1, b + 1, 21))
    assert grid.min() >= mse_surface(X, y, torch.tensor([w]), torch.tensor([b])).item() - 1e-12


def test_plot_draws_each_path_with_its_own_style_start_and_minimum(data):
    X, y = data
    paths = {"with zero_grad": [(0.0, 0.0), (0.5, 0.1), (0.9, 0.2)], "without": [(0.0, 0.0), (1.5, 0.5)]}
    ax = plot_paths_on_surface(X, y, paths)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["with zero_grad"].get_xdata()) == [0.0, 0.5, 0.9]
    assert list(lines["without"].get_ydata()) == [0.0, 0.5]
    assert lines["with zero_grad"].get_linestyle() != lines["without"].get_linestyle()
    assert list(lines["minimum"].get_xdata()) == pytest.approx([least_squares_minimum(X, y)[0]])
    assert list(lines["start"].get_xdata()) == [0.0]
    assert ax.collections, "the contour lines are drawn"
    assert ax.get_xlabel() == "weight w" and ax.get_ylabel() == "bias b"
    w_low, w_high = ax.get_xlim()
    assert w_low < 0.0 and w_high > 1.5  # every path is inside the drawn grid


def test_each_end_marker_is_in_the_legend_and_nothing_hides_under_the_start_or_minimum(data):
    X, y = data
    best = least_squares_minimum(X, y)
    # one path ends on the minimum, the other back on the start: both markers must stay visible
    paths = {"settles": [(0.0, 0.0), best], "swings": [(0.0, 0.0), (2.0, 1.0), (0.0, 0.0)]}
    ax = plot_paths_on_surface(X, y, paths)
    lines = {line.get_label(): line for line in ax.get_lines()}
    legend = {text.get_text() for text in ax.get_legend().get_texts()}
    assert {"settles", "swings", "start", "minimum"} <= legend
    markers = {name: lines[name].get_marker() for name in ("settles", "swings")}
    assert len(set(markers.values())) == 2 and "None" not in markers.values()
    for name, path in paths.items():  # the big marker sits on the last point only
        assert list(lines[name].get_markevery()) == [len(path) - 1]
    for name in ("start", "minimum"):  # hollow, and on top of every end marker
        assert lines[name].get_markerfacecolor() == "none"
        assert lines[name].get_zorder() > max(lines[n].get_zorder() for n in paths)


def test_plot_uses_the_given_axes(data):
    _, ax = plt.subplots()
    assert plot_paths_on_surface(*data, {"a": [(0.0, 0.0)]}, ax=ax) is ax


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"paths": [(0.0, 0.0)]}, TypeError, "non-empty dict"),
        ({"paths": {}}, TypeError, "non-empty dict"),
        ({"paths": {"a": [0.0, 1.0]}}, ValueError, "list of \\(w, b\\) pairs"),
        ({"paths": {"a": [(float("nan"), 0.0)]}}, ValueError, "inf or nan"),
        ({"ax": "left"}, TypeError, "matplotlib Axes or None"),
        ({"num": 3}, ValueError, "int >= 10"),
    ],
)
def test_plot_bad_input_is_a_clear_error(data, kwargs, error, words):
    arguments = {"paths": {"a": [(0.0, 0.0)]}, **kwargs}
    with pytest.raises(error, match=words):
        plot_paths_on_surface(*data, **arguments)


def test_data_with_the_wrong_shape_is_a_clear_error(data):
    X, y = data
    with pytest.raises(ValueError, match="one feature"):
        mse_surface(torch.ones(4, 2), torch.ones(4, 1), torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="one target per sample"):
        least_squares_minimum(X, y[:3])
    with pytest.raises(TypeError, match="X and y as tensors"):
        least_squares_minimum(X.tolist(), y)
