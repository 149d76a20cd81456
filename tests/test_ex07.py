"""utils.ex07: the checks of notebook 07 accept right answers and explain the common wrong ones."""

import contextlib

import pytest

from utils import ex07


def accumulation_steps_for(effective_batch_size, world_size, train_batch_size):  # the solution
    steps, left_over = divmod(effective_batch_size, world_size * train_batch_size)
    if left_over:
        raise ValueError("not a whole number of micro-steps")
    return steps


def test_exercise_1_right(capsys):
    assert ex07.check_accumulation_steps_for(accumulation_steps_for)
    assert "with a ValueError" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda e, w, t: e // t, "you left out world_size"),
        (lambda e, w, t: e // w, "you left out train_batch_size"),
        (lambda e, w, t: e, "that is the effective batch itself"),
        (lambda e, w, t: e / (w * t), "return an int"),
        (lambda e, w, t: None, "your function returns None"),
        (lambda e, w, t: e * w * t, "solve effective = world_size"),
        (lambda e, w, t: e // (w * t), "3 × 4 × 2 is not 32"),  # forgets the ValueError
        (lambda e, w, t: 1 / 0 if e == 32 and w == 3 else e // (w * t), "raise ValueError(...) when"),
        (lambda e, w: e, "it raised TypeError"),
        (..., "replace the ..."),
        (4, "pass its name"),
    ],
)
def test_exercise_1_wrong(answer, words, capsys):
    assert not ex07.check_accumulation_steps_for(answer)
    assert words in capsys.readouterr().out


def test_exercise_2(capsys):
    assert ex07.check_loss_divisor(8)
    assert ex07.check_loss_divisor(8.0)
    capsys.readouterr()
    for wrong, words in [(32, "DDP already divides"), (4, "DDP already averages"), (1, "8 times too big"),
                         (2, "already averages over the train_batch_size"), (..., "replace the ...")]:
        assert not ex07.check_loss_divisor(wrong)
        assert words in capsys.readouterr().out
    assert not ex07.check_loss_divisor("8")
    assert "expected: a number such as 8" in capsys.readouterr().out


def test_exercise_2_divisor_is_worked_out_with_torch():
    assert ex07._divisor_for(4, 8) == pytest.approx(8.0, rel=1e-12)
    assert ex07._divisor_for(2, 3) == pytest.approx(3.0, rel=1e-12)


def sync_context(model, micro_step, gradient_accumulation_steps):  # the solution
    if micro_step < gradient_accumulation_steps - 1:
        return model.no_sync()
    return contextlib.nullcontext()


def test_exercise_3_right(capsys):
    assert ex07.check_sync_context(sync_context)
    assert "all but the last" in capsys.readouterr().out


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda model, m, k: contextlib.nullcontext(), "every micro-batch all-reduces"),
        (lambda model, m, k: model.no_sync(), "nothing is ever all-reduced"),
        (lambda model, m, k: model.no_sync() if m > 0 else contextlib.nullcontext(), "sync on the last"),
        (lambda model, m, k: model.no_sync() if m != 1 else contextlib.nullcontext(), "only the last micro-step"),
        (lambda model, m, k: model.no_sync, "call it: model.no_sync()"),
        (lambda model, m, k: None, "something `with` can enter"),
        (lambda model, m, k: model.sync(), "it raised AttributeError"),
        (..., "replace the ..."),
    ],
)
def test_exercise_3_wrong(answer, words, capsys):
    assert not ex07.check_sync_context(answer)
    assert words in capsys.readouterr().out


def test_the_stand_in_model_restores_syncing_after_an_error():
    model = ex07.FakeDDP()
    with pytest.raises(KeyError), model.no_sync():
        assert not model.syncing
        raise KeyError("inside")
    assert model.syncing
