"""utils.plotting: the numbers behind each plot, and bad input."""

import matplotlib

matplotlib.use("Agg")

import math

import matplotlib.pyplot as plt
import pytest
import torch

from utils.plotting import plot_bars, plot_loss_curves, plot_running_sum


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_a_plot_rejects_something_that_is_not_axes():
    with pytest.raises(TypeError, match="matplotlib Axes or None"):
        plot_running_sum([torch.zeros(2)], ax="left")


def test_bars_draw_values_and_their_total():
    ax = plot_bars(["a", "b", "c"], [1.0, -0.5, 2.0], total_label="sum")
    heights = [patch.get_height() for patch in ax.patches]
    assert heights == [1.0, -0.5, 2.0, 2.5]


def test_bars_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="one label per value"):
        plot_bars(["a"], [1.0, 2.0])
    with pytest.raises(TypeError, match="labels as a list of strings"):
        plot_bars("ab", [1.0, 2.0])


def test_loss_curves_draw_each_loop_on_a_log_scale():
    ax = plot_loss_curves({"with zero_grad": [1.0, 0.5, 0.25], "without": [1.0, 0.8, 2.0]})
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines == {"with zero_grad": [1.0, 0.5, 0.25], "without": [1.0, 0.8, 2.0]}
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "optimizer step"
    styles = {line.get_linestyle() for line in ax.get_lines()}
    assert len(styles) == 2, "each loop needs its own line style, not colour alone"


def test_loss_curves_bad_input_is_a_clear_error():
    with pytest.raises(TypeError, match="non-empty dict"):
        plot_loss_curves([1.0, 2.0])
    with pytest.raises(ValueError, match="has no losses"):
        plot_loss_curves({"empty": []})
