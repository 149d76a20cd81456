"""Helpers added for notebooks 01-04: the numbers behind each plot, and bad input."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from utils.plotting import plot_running_sum


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_running_sum_draws_no_value_for_none():
    g = torch.tensor([[1.0], [-2.0]])
    ax = plot_running_sum([None, g, 2 * g, 3 * g])
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"grad[0]", "grad[1]"}  # no line or marker stands for None
    assert list(lines["grad[0]"].get_xdata()) == [1, 2, 3]
    assert list(lines["grad[1]"].get_ydata()) == [-2.0, -4.0, -6.0]
    # None is a shaded column at call 0, named in the legend and on the plot, with no y value
    spans = [p for p in ax.patches if p.get_label() == "None: no tensor"]
    assert len(spans) == 1
    assert "None: no tensor" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t.get_text() for t in ax.texts] == ["None"]
    assert ax.get_xlabel() == "number of backward() calls"
    assert list(ax.get_xticks()) == [0, 1, 2, 3]


def test_running_sum_with_several_nones_labels_one_and_shades_each():
    g = torch.ones(2)
    ax = plot_running_sum([None, g, None, g])
    shaded = [p for p in ax.patches if p.get_hatch() == "//"]
    assert len(shaded) == 2 and [p.get_label() for p in shaded].count("None: no tensor") == 1
    assert [t.get_text() for t in ax.texts] == ["None", "None"]
    assert list(ax.get_lines()[0].get_xdata()) == [1, 3]


def test_running_sum_uses_the_given_axes():
    _, ax = plt.subplots()
    assert plot_running_sum([torch.zeros(2)], ax=ax) is ax


@pytest.mark.parametrize(
    "grads, error, words",
    [
        (torch.zeros(3), TypeError, "list of .grad snapshots"),
        ([], TypeError, "list of .grad snapshots"),
        ([None], ValueError, "at least one tensor snapshot"),
        ([torch.zeros(2), torch.zeros(3)], ValueError, "all of one shape"),
        ([torch.zeros(2), [1.0, 2.0]], TypeError, "tensor or None, got list"),
        ([torch.zeros(2, dtype=torch.complex64)], TypeError, "real tensors"),
    ],
)
def test_running_sum_bad_input_is_a_clear_error(grads, error, words):
    with pytest.raises(error, match=words):
        plot_running_sum(grads)


def test_running_sum_bad_axes_is_a_clear_error():
    with pytest.raises(TypeError, match="matplotlib Axes or None"):
        plot_running_sum([torch.zeros(2)], ax="left")
