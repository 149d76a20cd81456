"""utils.ex02: the checks of notebook 02 accept right answers and explain wrong ones."""

import pytest
import torch

from utils import ex02


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


def test_exercise_1(capsys):
    assert ex02.check_grad_at_step_three(-13.44)
    assert ex02.check_grad_at_step_three(torch.tensor(-13.44))
    for wrong, words in [(-2.64, "third step's own gradient"), (-3.84, "*with* zero_grad holds"),
                         (-14.64, "adds the gradients of the loop *with*"), (-18, "assumes w never moved"),
                         (13.44, "wrong sign"), (-1.0, "add up the three gradients")]:
        capsys.readouterr()
        assert not ex02.check_grad_at_step_three(wrong)
        assert words in capsys.readouterr().out, wrong
    assert not ex02.check_grad_at_step_three(...)
    assert "replace the ..." in capsys.readouterr().out
    assert not ex02.check_grad_at_step_three("-13.44")
    assert "expected: a number such as -13.44" in capsys.readouterr().out


def test_exercise_2_right_answers():
    assert ex02.check_train_loop(train_loop)
    assert ex02.check_train_loop(train_loop_zeroing_last)


@pytest.mark.parametrize(
    "fn, words",
    [
        (train_loop_forgetting, "never clears .grad"),
        (train_loop_zeroing_between, "throws the gradient away before step() reads it"),
        (train_loop_one_step_short, "a list of 20 losses"),
        (train_loop_sum_loss, "zero_grad(), loss = loss_fn(model(X), y), backward(), step()"),
        (lambda model, optimizer, X, y, num_steps: None, "replace the ... with the loop"),
        (lambda model, optimizer, X, y, num_steps: "done", "append loss.item()"),
        (lambda model, optimizer, X, y, num_steps: 1 / 0, "it raised ZeroDivisionError"),
        (lambda model: [], "it raised TypeError"),
        (..., "replace the ..."),
        ([1.0, 2.0], "pass its name"),
    ],
)
def test_exercise_2_wrong_answers_get_a_specific_hint(fn, words, capsys):
    assert not ex02.check_train_loop(fn)
    assert words in capsys.readouterr().out


def test_exercise_3(capsys):
    assert ex02.check_momentum_settings((1.0, 0.0))
    assert ex02.check_momentum_settings([1, 0])
    assert ex02.check_momentum_settings((torch.tensor(1.0), 0))
    for wrong, words in [((0.9, 0.0), "friction"), ((0.0, 0.0), "plain SGD"), ((1.0, 0.5), "(1 - dampening) = 0.5"),
                         ((-1.0, 0.0), "SGD said: Invalid momentum value")]:
        capsys.readouterr()
        assert not ex02.check_momentum_settings(wrong)
        assert words in capsys.readouterr().out, wrong
    for bad in [..., 1.0, (1.0,), ("1", "0"), None]:
        capsys.readouterr()
        assert not ex02.check_momentum_settings(bad)
        out = capsys.readouterr().out
        assert "replace the ..." in out or "a pair of numbers (momentum, dampening)" in out, bad
