"""utils.ex07: the checks of notebook 07 accept right answers, enforce the task, and explain the
common wrong ones without giving the answer away."""

import contextlib
import json
from pathlib import Path

import pytest

from utils import ex07
from utils.exercises import NOT_YET, RIGHT, reset_tries, tries


@pytest.fixture(autouse=True)
def fresh_tries():
    reset_tries()


def flat(out: str) -> str:
    return " ".join(out.split())  # verdicts wrap lines at spaces


def accumulation_steps_for(effective_batch_size, world_size, train_batch_size):  # the solution
    steps, left_over = divmod(effective_batch_size, world_size * train_batch_size)
    if left_over:
        raise ValueError("not a whole number of micro-steps")
    return steps


def only_world_size_checked(effective_batch_size, world_size, train_batch_size):
    if effective_batch_size % world_size:
        raise ValueError("does not divide")
    return effective_batch_size // (world_size * train_batch_size)


def only_train_batch_size_checked(effective_batch_size, world_size, train_batch_size):
    if effective_batch_size % train_batch_size:
        raise ValueError("does not divide")
    return effective_batch_size // (world_size * train_batch_size)


def test_exercise_1_right(capsys):
    assert ex07.check_accumulation_steps_for(accumulation_steps_for)
    assert "with a ValueError" in flat(capsys.readouterr().out)


def test_the_not_fitting_cases_include_one_where_world_size_divides_but_the_product_does_not():
    assert (32, 2, 3) in ex07.NOT_FITTING and 32 % 2 == 0 and 32 % (2 * 3)
    for effective, world_size, train_batch_size in ex07.NOT_FITTING:
        assert effective % (world_size * train_batch_size)
    for effective, world_size, train_batch_size in ex07.FITTING:
        assert effective % (world_size * train_batch_size) == 0


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda e, w, t: e // t, "you left out world_size"),
        (lambda e, w, t: e // w, "you left out train_batch_size"),
        (lambda e, w, t: e, "that is the effective batch itself"),
        (lambda e, w, t: e / (w * t), "return an int"),
        (lambda e, w, t: None, "write the body of <lambda>"),
        (lambda e, w, t: print(end=""), "your function returns None"),
        (lambda e, w, t: e * w * t, "samples per step, not 32"),
        (lambda e, w, t: e // (w * t), "3 × 4 × 2 = 24, not 32"),  # forgets the ValueError
        (only_world_size_checked, "accumulation_steps_for(32, 2, 3) to raise ValueError"),
        (only_train_batch_size_checked, "accumulation_steps_for(32, 3, 4) to raise ValueError"),
        (lambda e, w, t: 1 / 0 if e % (w * t) else e // (w * t), "raise ValueError(...) yourself"),
        (lambda e, w: e, "it raised TypeError"),
        (..., "replace the ..."),
        (4, "pass its name"),
        (int, "the class int"),
    ],
)
def test_exercise_1_wrong(answer, words, capsys):
    assert not ex07.check_accumulation_steps_for(answer)
    out = flat(capsys.readouterr().out)
    assert words in out and "expected:" not in out


def test_exercise_1_the_expected_value_waits_for_the_third_try(capsys):
    wrong = lambda e, w, t: e // t  # noqa: E731
    for _ in range(2):
        ex07.check_accumulation_steps_for(wrong)
        assert "expected:" not in capsys.readouterr().out
    ex07.check_accumulation_steps_for(wrong)
    assert "expected: accumulation_steps_for(32, 2, 4) == 4" in flat(capsys.readouterr().out)


def test_exercise_2(capsys):
    assert ex07.check_loss_divisor(8)
    assert ex07.check_loss_divisor(8.0)
    capsys.readouterr()
    for wrong, words in [(32, "DDP already divides"), (4, "DDP already averages"), (1, "how many does backward()"),
                         (2, "already averages over the train_batch_size"), (..., "replace the ...")]:
        reset_tries()
        assert not ex07.check_loss_divisor(wrong)
        out = flat(capsys.readouterr().out)
        assert words in out and "8 times" not in out and "expected:" not in out
    assert not ex07.check_loss_divisor("8")
    assert "without quotes" in capsys.readouterr().out


def test_exercise_2_divisor_is_worked_out_with_torch():
    assert ex07._divisor_for(4, 8) == pytest.approx(8.0, rel=1e-12)
    assert ex07._divisor_for(2, 3) == pytest.approx(3.0, rel=1e-12)


def sync_context(model, micro_step, gradient_accumulation_steps):  # the solution
    if micro_step < gradient_accumulation_steps - 1:
        return model.no_sync()
    return contextlib.nullcontext()


def test_exercise_3_right(capsys):
    assert ex07.check_sync_context(sync_context)
    assert "all but the last" in flat(capsys.readouterr().out)


class Hostile:
    def __getattr__(self, name):
        raise RuntimeError(f"no {name}")


class BrokenContext:
    def __enter__(self):
        raise KeyError("broken")

    def __exit__(self, *args):
        return False


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda model, m, k: contextlib.nullcontext(), "every micro-step all-reduces"),
        (lambda model, m, k: model.no_sync(), "no micro-step all-reduces"),
        (lambda model, m, k: model.no_sync() if m > 0 else contextlib.nullcontext(), "but at micro-step 0"),
        (lambda model, m, k: model.no_sync() if m != 1 else contextlib.nullcontext(), "but at micro-step 1"),
        (lambda model, m, k: model.no_sync, "call it: model.no_sync()"),
        (lambda model, m, k: contextlib.nullcontext, "that is the class nullcontext"),
        (lambda model, m, k: None, "write the body of <lambda>"),
        (lambda model, m, k: [None][m], "something `with` can enter"),
        (lambda model, m, k: Hostile(), "something `with` can enter"),
        (lambda model, m, k: BrokenContext(), "`with` on it raised KeyError"),
        (lambda model, m, k: model.sync(), "it raised AttributeError"),
        (..., "replace the ..."),
        (contextlib.nullcontext, "the class nullcontext"),
    ],
)
def test_exercise_3_wrong(answer, words, capsys):
    assert not ex07.check_sync_context(answer)
    assert words in flat(capsys.readouterr().out)


def test_the_stand_in_model_restores_syncing_after_an_error():
    model = ex07.FakeDDP()
    with pytest.raises(KeyError), model.no_sync():
        assert not model.syncing
        raise KeyError("inside")
    assert model.syncing


def test_exercise_3_setting_require_backward_grad_sync_is_seen_as_ddp_sees_it(capsys):
    """Notebook 07 teaches the attribute as the alternative to no_sync(); the stand-in honours it."""
    def by_attribute(model, micro_step, gradient_accumulation_steps):
        model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        return contextlib.nullcontext()

    def attribute_never_restored(model, micro_step, gradient_accumulation_steps):
        model.require_backward_grad_sync = False
        return contextlib.nullcontext()

    assert ex07.check_sync_context(by_attribute)
    assert not ex07.check_sync_context(attribute_never_restored)
    assert "no micro-step all-reduces" in flat(capsys.readouterr().out)


def test_exercise_3_a_window_of_one_micro_step_reads_well(capsys):
    assert not ex07.check_sync_context(lambda model, m, k: model.no_sync() if m < 3 else contextlib.nullcontext())
    assert "per window of 1 micro-step" in flat(capsys.readouterr().out)


@pytest.mark.parametrize("make_int", [lambda n: __import__("numpy").int64(n), lambda n: __import__("torch").tensor(n)])
def test_exercise_1_an_int_that_range_accepts_is_an_int(make_int, capsys):
    def numpy_or_tensor(effective_batch_size, world_size, train_batch_size):
        return make_int(accumulation_steps_for(effective_batch_size, world_size, train_batch_size))

    assert ex07.check_accumulation_steps_for(numpy_or_tensor)


def test_exercise_1_a_bool_or_float_is_still_not_an_int(capsys):
    assert not ex07.check_accumulation_steps_for(lambda e, w, t: True)
    assert not ex07.check_accumulation_steps_for(lambda e, w, t: float(e // (w * t)))
    assert "return an int" in flat(capsys.readouterr().out)


# ---- review: hints name the mistake, never the condition ----------------------------------------------------------
@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda model, m, k: contextlib.nullcontext() if m == 1 else model.no_sync(), "but at micro-step 1"),
        (lambda model, m, k: contextlib.nullcontext() if m >= 2 else model.no_sync(),
         "2 micro-steps of one window all-reduce"),
        (lambda model, m, k: model.no_sync() if m == k - 1 else contextlib.nullcontext(),
         "3 micro-steps of one window all-reduce"),
        (lambda model, m, k: contextlib.nullcontext() if m == k else model.no_sync(), "no micro-step all-reduces"),
        (lambda model, m, k: contextlib.nullcontext() if m == 3 else model.no_sync(),
         "right for windows of 4 micro-steps, not of 1"),
    ],
)
def test_exercise_3_hints_never_give_the_condition(answer, words, capsys):
    assert not ex07.check_sync_context(answer)
    out = flat(capsys.readouterr().out)
    assert words in out and "expected:" not in out
    for solution in ("gradient_accumulation_steps - 1", "k - 1", "all but the last", "the last micro-batch"):
        assert solution not in out


def test_exercise_3_the_condition_waits_for_the_third_try(capsys):
    wrong = lambda model, m, k: contextlib.nullcontext() if m == 1 else model.no_sync()  # noqa: E731
    for _ in range(2):
        ex07.check_sync_context(wrong)
    assert "expected:" not in capsys.readouterr().out
    ex07.check_sync_context(wrong)
    assert "expected: an all-reduce at micro-step 3 only" in flat(capsys.readouterr().out)


def test_exercise_1_a_valueerror_where_the_sizes_fit_is_named(capsys):
    def inverted(effective_batch_size, world_size, train_batch_size):
        if effective_batch_size % (world_size * train_batch_size) == 0:
            raise ValueError("does not fit")
        return effective_batch_size // (world_size * train_batch_size)

    assert not ex07.check_accumulation_steps_for(inverted)
    out = flat(capsys.readouterr().out)
    assert "these sizes fit" in out and "accumulation_steps_for(32, 2, 4) raised" in out
    assert not ex07.check_accumulation_steps_for(lambda e, w: e)  # another error keeps the general hint
    out = flat(capsys.readouterr().out)
    assert "it raised TypeError" in out and "these sizes fit" not in out


def test_exercise_2_the_world_size_times_steps_hint_gives_no_ratio(capsys):
    assert not ex07.check_loss_divisor(32)
    out = flat(capsys.readouterr().out)
    assert "divides by world_size twice" in out and "times too small" not in out


def test_the_exercise_cells_as_handed_out_spend_no_try(capsys):
    """Run All on the lesson as handed out: every check answers its `...`, and no try is counted."""
    notebook = json.loads((Path(__file__).parents[1] / "notebooks" /
                           "07-accumulation-across-processes.ipynb").read_text())
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"
             and "ex07.check_" in "".join(c["source"])]
    assert len(cells) == 3
    for source in cells:
        exec(source, {"ex07": ex07})
    out = flat(capsys.readouterr().out)
    assert out.count(NOT_YET) == 3 and RIGHT not in out and "answer:" not in out
    assert [tries(check) for check in (ex07.check_accumulation_steps_for, ex07.check_loss_divisor,
                                       ex07.check_sync_context)] == [0, 0, 0]
