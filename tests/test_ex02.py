"""utils.ex02: the checks of notebook 02 accept right answers and explain wrong ones."""

import pytest
import torch

from utils import ex02
from utils.exercises import reset_tries


@pytest.fixture(autouse=True)
def fresh_tries():
    reset_tries()


def mse(model, X, y):
    return torch.nn.functional.mse_loss(model(X), y)


def train_loop(model, optimizer, X, y, num_steps):  # the solution
    losses = []
    for _ in range(num_steps):
        optimizer.zero_grad()
        loss = mse(model, X, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_loop_zeroing_last(model, optimizer, X, y, num_steps):  # also right
    losses = []
    for _ in range(num_steps):
        loss = mse(model, X, y)
        loss.backward()
        optimizer.step()
        model.zero_grad()
        losses.append(loss)  # tensors are accepted too
    return losses


def train_loop_forgetting(model, optimizer, X, y, num_steps):
    losses = []
    for _ in range(num_steps):
        loss = mse(model, X, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_loop_zeroing_between(model, optimizer, X, y, num_steps):  # the broken loop of the exercise
    losses = []
    for _ in range(num_steps):
        loss = mse(model, X, y)
        loss.backward()
        optimizer.zero_grad()
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_loop_one_step_short(model, optimizer, X, y, num_steps):
    return train_loop(model, optimizer, X, y, num_steps - 1)


def train_loop_sum_loss(model, optimizer, X, y, num_steps):  # the wrong loss: sum, not mean
    losses = []
    for _ in range(num_steps):
        optimizer.zero_grad()
        loss = ((model(X) - y) ** 2).sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_loop_own_optimizer(model, optimizer, X, y, num_steps):  # ignores the optimizer it was given
    return train_loop(model, torch.optim.SGD(model.parameters(), lr=0.05), X, y, num_steps)


def train_loop_by_hand(model, optimizer, X, y, num_steps):  # SGD by hand: not the optimizer's step()
    losses = []
    for _ in range(num_steps):
        model.zero_grad()
        loss = mse(model, X, y)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
        losses.append(loss.item())
    return losses


def test_exercise_1(capsys):
    assert ex02.check_grad_at_step_three(-13.44)
    assert ex02.check_grad_at_step_three(torch.tensor(-13.44))
    for wrong, words in [(-2.64, "third step's own gradient"), (-3.84, "*with* zero_grad holds"),
                         (-14.64, "adds the gradients of the loop *with*"), (-18, "assumes w never moved"),
                         (13.44, "wrong sign"), (-1.0, "Which w does each"), (-6, "the first gradient only"),
                         (-10.8, "after the second backward()")]:
        capsys.readouterr()
        reset_tries()
        assert not ex02.check_grad_at_step_three(wrong)
        out = capsys.readouterr().out
        assert words in out and "13.44" not in out.replace("got:      13.44", ""), out
    assert not ex02.check_grad_at_step_three(...)
    assert "replace the ..." in capsys.readouterr().out


def test_exercise_1_on_paper_never_echoes_the_answer_before_asked(capsys):
    for answer in ["-13.44", "-13.44", ...]:
        assert not ex02.check_grad_at_step_three(answer)
    out = capsys.readouterr().out
    assert "13.44" not in out and "without quotes" in out
    assert not ex02.check_grad_at_step_three(-1.0)  # the third wrong try
    assert "expected: -13.44" in capsys.readouterr().out


def test_exercise_2_right_answers():
    assert ex02.check_train_loop(train_loop)
    assert ex02.check_train_loop(train_loop_zeroing_last)


@pytest.mark.parametrize(
    "fn, words",
    [
        (train_loop_forgetting, "never clears .grad"),
        (train_loop_zeroing_between, "they never moved"),
        (train_loop_own_optimizer, "0 step() call(s)"),
        (train_loop_by_hand, "20 backward() and 0 step() call(s)"),
        (train_loop_one_step_short, "a list of 20 losses"),
        (train_loop_sum_loss, "is the loss the mean squared error of model(X) and y"),
        (lambda model, optimizer, X, y, num_steps: None, "write the body of <lambda>"),
        (lambda model, optimizer, X, y, num_steps: print("no loop yet"), "replace the ... with the loop"),
        (lambda model, optimizer, X, y, num_steps: "done", "append loss.item()"),
        (lambda model, optimizer, X, y, num_steps: 1 / 0, "it raised ZeroDivisionError"),
        (lambda model, optimizer, X, y, num_steps: [0.0] * num_steps, "0 backward() and 0 step() call(s)"),
        (lambda model, optimizer, X, y, num_steps: train_loop(model, optimizer, X, y, 20),
         "use the argument num_steps"),
        (lambda model: [], "it raised TypeError"),
        (..., "replace the ..."),
        ([1.0, 2.0], "pass its name"),
    ],
)
def test_exercise_2_wrong_answers_get_a_specific_hint(fn, words, capsys):
    assert not ex02.check_train_loop(fn)
    out = capsys.readouterr().out
    assert words in " ".join(out.split()) and "expected:" not in out, out


def test_exercise_3(capsys):
    assert ex02.check_momentum_settings((1.0, 0.0))
    assert ex02.check_momentum_settings([1, 0])
    assert ex02.check_momentum_settings((torch.tensor(1.0), 0))
    for wrong, words in [((0.9, 0.0), "friction"), ((0.0, 0.0), "plain SGD"), ((1.0, 0.5), "(1 - dampening) = 0.5"),
                         ((-1.0, 0.0), "SGD said: Invalid momentum value"), ((2.0, 0.0), "the history grows"),
                         ((float("nan"), 0.0), "not a number")]:
        capsys.readouterr()
        reset_tries()
        assert not ex02.check_momentum_settings(wrong)
        out = capsys.readouterr().out
        assert words in out and "expected:" not in out, wrong
    for bad in [..., 1.0, (1.0,), ("1", "0"), None, (True, False)]:
        capsys.readouterr()
        assert not ex02.check_momentum_settings(bad)
        out = capsys.readouterr().out
        assert "replace the ..." in out or "a pair of numbers (momentum, dampening)" in out, bad


def test_exercise_3_shows_the_losses_apart_and_the_pair_only_when_asked(capsys):
    assert not ex02.check_momentum_settings((0.999999, 0.0))
    out = capsys.readouterr().out
    wanted = out.split("wanted:", 1)[1].split("got:", 1)[0].split("zero_grad,", 1)[1]
    got = out.split("got:", 1)[1].split("hint:", 1)[0].split("settings,", 1)[1]
    assert " ".join(wanted.split()) != " ".join(got.split()), out
    assert not ex02.check_momentum_settings((0.9, 0.0), reveal=True)
    assert "expected: (momentum, dampening) = (1, 0)" in capsys.readouterr().out
