"""utils.ex03: the checks of notebook 03 accept right answers and explain wrong ones."""

import warnings

import pytest
import torch

from utils import ex03
from utils.exercises import RIGHT


def train_manually(W, b, X, y, lr, num_steps):  # the solution
    for _ in range(num_steps):
        loss = ((X @ W + b - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad
        W.grad = None
        b.grad = None


def train_manually_zeroing_in_place(W, b, X, y, lr, num_steps):  # also right
    for _ in range(num_steps):
        if W.grad is not None:
            W.grad.zero_()
            b.grad.zero_()
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            W.add_(W.grad, alpha=-lr)
            b.add_(b.grad, alpha=-lr)


def train_manually_as_written(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        W.grad.data.zero_()
        b.grad.data.zero_()
        ((X @ W + b - y) ** 2).mean().backward()
        W -= lr * W.grad.data
        b -= lr * b.grad.data


def train_manually_without_clearing(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad


def train_manually_rebinding(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        W = W - lr * W.grad
        b = b - lr * b.grad


def train_manually_without_no_grad(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        W -= lr * W.grad
        W.grad = None


def train_manually_with_a_vector_loss(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).backward()


def train_manually_with_the_sum(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).sum().backward()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad
        W.grad, b.grad = None, None


def placeholder(W, b, X, y, lr, num_steps):
    ...


def test_exercise_1_accepts_the_modern_loops(capsys):
    assert ex03.check_manual_loop(train_manually)
    assert ex03.check_manual_loop(train_manually_zeroing_in_place)
    assert capsys.readouterr().out.count(RIGHT) == 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (train_manually_as_written, "W.grad is None until the first backward()"),
        (train_manually_without_clearing, "clear W.grad and b.grad every step"),
        (train_manually_rebinding, "is not a leaf"),
        (train_manually_without_no_grad, "torch.no_grad()"),
        (train_manually_with_a_vector_loss, "reduce the loss to one number"),
        (train_manually_with_the_sum, "((X @ W + b - y) ** 2).mean()"),
        (placeholder, "replace the ..."),
        (lambda W, b, X, y, lr, num_steps: 1 / 0, "it raised ZeroDivisionError"),
    ],
)
def test_exercise_1_explains_each_wrong_loop(capsys, wrong, hint):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rebinding loop reads .grad of a non-leaf
        assert not ex03.check_manual_loop(wrong)
    assert hint in capsys.readouterr().out


@pytest.mark.parametrize("bad", [..., None, 3, "train_manually"])
def test_exercise_1_bad_types_get_a_verdict(capsys, bad):
    assert not ex03.check_manual_loop(bad)
    out = capsys.readouterr().out
    assert "expected: a function" in out


def test_exercise_2(capsys):
    assert ex03.momentum_on_zeros() == pytest.approx(0.09)
    assert ex03.check_momentum_on_zeros(0.09)
    assert ex03.check_momentum_on_zeros(torch.tensor(0.09))
    capsys.readouterr()
    for wrong, hint in [(0, "momentum buffer still holds"), (0.1, "step 1's move"), (0.9, "lr times it"),
                        (0.19, "not added again"), (-0.09, "a distance is positive")]:
        assert not ex03.check_momentum_on_zeros(wrong)
        assert hint in capsys.readouterr().out
    assert not ex03.check_momentum_on_zeros(...)
    assert "replace the ..." in capsys.readouterr().out
    assert not ex03.check_momentum_on_zeros("0.09")
    assert "expected: a number" in capsys.readouterr().out


def test_exercise_3_truth_is_computed_by_torch():
    moving = {name for name, make in ex03.CANDIDATES.items() if ex03.moves_on_zeros(make)}
    assert moving == {"RMSprop momentum=0.9", "Adamax", "NAdam"}
    assert not any(ex03.moves_on_zeros(make, set_to_none=True) for make in ex03.CANDIDATES.values())
    assert set(ex03.WHY) == set(ex03.CANDIDATES)


def test_exercise_3(capsys):
    right = {"RMSprop momentum=0.9", "Adamax", "NAdam"}
    assert ex03.check_which_move(right)
    assert ex03.check_which_move(sorted(right))
    assert ex03.check_which_move(["RMSprop  momentum=0.9", "Adamax", "NAdam"])  # spaces forgiven
    capsys.readouterr()
    assert not ex03.check_which_move(right | {"Adagrad"})
    assert "Adagrad stays" in capsys.readouterr().out
    assert not ex03.check_which_move({"Adamax", "RMSprop momentum=0.9"})
    assert "NAdam moves" in capsys.readouterr().out
    assert not ex03.check_which_move(set(ex03.CANDIDATES))
    out = capsys.readouterr().out
    assert "Adagrad stays" in out and "RMSprop stays" in out


@pytest.mark.parametrize("bad, text", [(..., "replace the ..."), ("Adamax", "expected: a set of names"),
                                       (3, "expected: a set of names"), ({"adam"}, "copy the names")])
def test_exercise_3_bad_input_gets_a_verdict(capsys, bad, text):
    assert not ex03.check_which_move(bad)
    assert text in capsys.readouterr().out
