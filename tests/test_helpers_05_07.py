"""Helpers added to shared modules for notebooks 05-07: utils.plotting.plot_schedules."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from utils.plotting import plot_schedules


def test_plot_schedules_draws_each_rate_per_step_and_epoch_ends():
    _, ax = plt.subplots()
    assert plot_schedules({"a": [0.1, 0.05, 0.0], "b": [0.1, 0.1]}, ax=ax, steps_per_epoch=1) is ax
    first, second, *ends = ax.get_lines()
    assert list(first.get_xdata()) == [1, 2, 3] and list(first.get_ydata()) == [0.1, 0.05, 0.0]
    assert list(second.get_xdata()) == [1, 2]
    assert first.get_linestyle() != second.get_linestyle() and first.get_marker() != second.get_marker()
    assert [line.get_xdata()[0] for line in ends] == [1.5, 2.5]  # between epochs, none after the last
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel() == "learning rate"
    plt.close("all")


def test_plot_schedules_without_epochs_draws_only_the_schedules():
    ax = plot_schedules({"only": [1.0, 0.5]})
    assert len(ax.get_lines()) == 1
    plt.close("all")


@pytest.mark.parametrize("schedules, kwargs, error, words", [
    ({}, {}, TypeError, "non-empty dict"),
    ([[0.1]], {}, TypeError, "non-empty dict"),
    ({"a": []}, {}, ValueError, "has no learning rates"),
    ({"a": ["x"]}, {}, ValueError, "expected the schedule 'a' as a list of numbers"),
    ({"a": 0.1}, {}, ValueError, "expected the schedule 'a' as a list of numbers"),
    ({"a": [0.1]}, {"steps_per_epoch": 0}, ValueError, "steps_per_epoch as an int >= 1"),
    ({"a": [0.1]}, {"steps_per_epoch": 2.0}, ValueError, "steps_per_epoch as an int >= 1"),
    ({"a": [0.1]}, {"ax": "axes"}, TypeError, "matplotlib Axes"),
])
def test_plot_schedules_bad_input(schedules, kwargs, error, words):
    with pytest.raises(error, match=words):
        plot_schedules(schedules, **kwargs)
    plt.close("all")
