"""utils.exercises: every answer gets a printed verdict, the answer only once earned or asked for."""

import signal
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from utils import exercises
from utils.exercises import (
    NOT_YET, REVEAL_AFTER, RIGHT, Verdict, call_learner_function, check_number, check_tensor, describe,
    direction, exercise, reset_tries, show_pair, tries, verdict,
)


@pytest.fixture(autouse=True)
def fresh_tries():
    reset_tries()


@exercise
def check_answer(answer, *, expected=36.0):
    """A check like the notebooks' ones, for these tests."""
    return check_number(answer, expected, what="w.grad", hint=["first rung", "second rung"],
                        mistakes=[(12.0, "one call only")])


def test_right_number(capsys):
    result = check_answer(36)
    assert isinstance(result, Verdict) and result.passed and bool(result)
    assert capsys.readouterr().out.startswith(f"{RIGHT} w.grad is 36")


@pytest.mark.parametrize("answer", [36.0, torch.tensor(36.0), torch.tensor([36.0]), np.float32(36.0)])
def test_numbers_in_any_form_are_accepted(answer):
    assert check_answer(answer)


def test_the_answer_shows_only_from_the_third_wrong_try(capsys):
    for attempt in range(1, REVEAL_AFTER + 2):
        assert not check_answer(12)
        out = capsys.readouterr().out
        assert out.startswith(f"{NOT_YET} w.grad") and "got:      12" in out and "one call only" in out
        if attempt < REVEAL_AFTER:
            assert "36" not in out, f"try {attempt} gave the answer away:\n{out}"
            assert "check_answer(answer, reveal=True)" in out
        else:
            assert "expected: 36" in out
    assert tries(check_answer) == REVEAL_AFTER + 1


def test_reveal_shows_the_answer_at_once_even_before_a_try(capsys):
    assert not check_answer(..., reveal=True)
    out = capsys.readouterr().out
    assert "expected: 36" in out and "replace the ..." in out
    assert not check_answer(12, reveal=True)
    assert "expected: 36" in capsys.readouterr().out


def test_an_unwritten_function_is_a_placeholder_not_a_try(capsys):
    def learner(x):
        ...  # your code here

    @exercise
    def check_function(fn):
        ok, result = call_learner_function(fn, 1, what="f")
        return result if not ok else verdict(False, "f", got=result, expected=2)

    for _ in range(REVEAL_AFTER + 1):
        assert not check_function(learner)
    out = capsys.readouterr().out
    assert "write the body of learner" in out and tries(check_function) == 0 and "expected" not in out
    assert not check_function(lambda x: 1)
    assert tries(check_function) == 1


@pytest.mark.parametrize("source, empty", [("def f(x): ...", True), ("def f(x):\n    pass", True),
                                           ('def f(x):\n    """Doc."""', True), ("def f(x): return 0", False),
                                           ("def f(x): return x", False), ("def f(x):\n    x.grad = None", False),
                                           ("async def f(x): ...", False), ("f = lambda x: None", True),
                                           ("f = lambda x: ...", False)])
def test_unwritten_tells_an_empty_body_from_a_written_one(source, empty):
    namespace = {}
    exec(source, namespace)
    assert exercises.unwritten(namespace["f"]) is empty


def test_placeholder_is_not_a_try(capsys):
    for _ in range(REVEAL_AFTER + 1):
        assert not check_answer(...)
    out = capsys.readouterr().out
    assert "36" not in out and "replace the ..." in out and tries(check_answer) == 0


def test_hint_ladder_climbs_one_rung_per_try_and_says_the_direction(capsys):
    check_answer(50)
    first = capsys.readouterr().out
    check_answer(-50)
    second = capsys.readouterr().out
    check_answer(1e4)
    third = capsys.readouterr().out
    assert "too far from 0. First rung" in first and "second rung" not in first
    assert "the sign is wrong. Second rung" in second
    assert "more than a factor of 10" in third and "Second rung" in third


def test_counts_are_per_check(capsys):
    @exercise
    def check_other(answer):
        return check_number(answer, 36.0, what="other")

    check_answer(1)
    check_answer(2)
    check_other(1)
    assert "36" not in capsys.readouterr().out
    assert tries(check_answer) == 2 and tries(check_other) == 1


@pytest.mark.parametrize("answer, words", [("36", "text in quotes (a str)"), ([36], "a list holding one number"),
                                           (True, "bool True"), (torch.ones(2), "float32 tensor of shape (2,)"),
                                           (int, "the class int"), (None, "None")])
def test_number_of_the_wrong_type_says_so_without_the_answer(answer, words, capsys):
    assert not check_answer(answer)
    out = capsys.readouterr().out
    assert "wanted:   a number" in out and words in out and "36" not in out.replace("[36]", "").replace('"36"', "")


def test_a_string_holding_the_answer_is_not_echoed(capsys):
    assert not check_number("-13.44", -13.44, what="w.grad")
    out = capsys.readouterr().out
    assert "13.44" not in out and "without quotes" in out


def test_tensor_checks_type_then_shape_then_values(capsys):
    expected = torch.tensor([[1.0], [2.0]])
    assert check_tensor(expected.clone().double(), expected, what="g")
    assert not check_tensor([1.0, 2.0], expected, what="g")
    assert "wanted:   a tensor of shape (2, 1)" in capsys.readouterr().out
    assert not check_tensor(torch.ones(2), expected, what="g")
    assert "got:      a float32 tensor of shape (2,)" in capsys.readouterr().out
    reset_tries()  # two wrong tries of "g" so far: the third would show the answer
    assert not check_tensor(2 * expected, expected, what="g", mistakes=[(2 * expected, "doubled")])
    out = capsys.readouterr().out
    assert "tensor([2, 4]) of shape (2, 1)" in out and "hint:     doubled" in out
    assert "tensor([1, 2])" not in out, "the expected tensor is withheld on a first try"


def test_learner_function_that_raises_gets_a_verdict_and_a_matching_hint(capsys):
    def broken(x):
        return 1 / 0

    ok, result = call_learner_function(broken, 1, what="f", errors=[("division by zero", "check the divisor")])
    assert not ok and not result
    out = capsys.readouterr().out
    assert "it raised ZeroDivisionError: division by zero" in out and "check the divisor" in out


@pytest.mark.parametrize("value, words", [(3, "int 3"), (int, "the class int"), (None, "None")])
def test_learner_gives_something_else_than_a_function(value, words, capsys):
    ok, result = call_learner_function(value, what="f")
    assert not ok and isinstance(result, Verdict)
    out = capsys.readouterr().out
    assert "a function (pass its name, without calling it)" in out and words in out


def test_a_function_that_never_returns_is_stopped(monkeypatch, capsys):
    monkeypatch.setattr(exercises, "TIME_LIMIT_S", 0.3)

    @exercise
    def check_loop(fn):
        ok, result = call_learner_function(fn, what="f")
        return result if not ok else verdict(True, "f")

    def forever():
        while True:
            try:
                time.sleep(0.01)
            except Exception:  # a learner's catch-all does not swallow the time limit
                pass

    start = time.monotonic()
    result = check_loop(forever)
    assert not result and time.monotonic() - start < 5
    assert "still running after 0.3 s" in capsys.readouterr().out
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "the alarm is switched off afterwards"


def test_an_outer_alarm_survives_a_check(monkeypatch):
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        assert check_answer(36)
        time.sleep(0.8)
        assert fired == [1]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_check_that_breaks_still_answers_with_a_verdict(capsys):
    class Hostile:
        def __repr__(self):
            raise RuntimeError("no repr")

        def __float__(self):
            raise RuntimeError("no float")

    @exercise
    def check_broken(answer):
        raise KeyError(answer)

    assert isinstance(check_broken(Hostile()), Verdict)
    assert "checking it raised KeyError" in capsys.readouterr().out
    assert isinstance(check_answer(Hostile()), Verdict)

    @exercise
    def check_returns_nothing(answer):
        return None

    assert not check_returns_nothing(1)


def test_reveal_is_a_keyword_of_every_decorated_check():
    assert not check_answer(12, reveal=False)
    assert check_answer.__name__ == "check_answer" and "A check like" in check_answer.__doc__


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False), st.floats(allow_nan=False, allow_infinity=False))
def test_different_numbers_never_print_alike(a, b):
    shown = show_pair(a, b)
    tensors = show_pair(torch.tensor([a, 1.0], dtype=torch.float64), torch.tensor([b, 1.0], dtype=torch.float64))
    lists = show_pair([1.0, a], [1.0, b])
    if a != b:
        assert shown[0] != shown[1] and tensors[0] != tensors[1] and lists[0] != lists[1]


def test_different_long_tensors_never_print_alike():
    a = torch.zeros(20, dtype=torch.float64)
    b = a.clone()
    b[15] = 1e-9
    shown = show_pair(a, b)
    assert shown[0] != shown[1] and "element 15" in shown[1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghij.()_-", min_size=1, max_size=30), min_size=1, max_size=40))
def test_long_lines_wrap_at_spaces_never_mid_word(words):
    hint = " ".join(words)
    out = verdict(False, "a check", hint=hint, got="x").message
    hint_lines = out.split("hint:", 1)[1].splitlines()
    assert " ".join(" ".join(line.split()) for line in hint_lines).split() == words
    assert all(len(line) <= exercises.WIDTH for line in out.splitlines() if " " in line.strip())


@pytest.mark.parametrize("number, expected, words", [
    (50, 36, "too far from 0"), (20, 36, "too close to 0"), (-5, 36, "the sign is wrong"),
    (1000, 36, "factor of 10"), (0, 36, "not 0"), (float("nan"), 36, "not a finite number"),
    (-20, -13.44, "too far from 0"), (-3, -13.44, "too close to 0"),
])
def test_direction_says_how_a_number_misses(number, expected, words):
    assert words in direction(number, expected)
    assert str(expected) not in direction(number, expected)


def test_verdict_shows_nothing_more_in_a_notebook():
    result = Verdict(True, "fine")
    assert result._ipython_display_() is None and str(result) == "fine"


def test_describe_is_short_and_names_what_learners_pass():
    assert describe(...) == "... (the placeholder)"
    assert len(describe("x" * 500)) <= 80
    assert "generator" in describe(x for x in [])
    assert "requires_grad" in describe(torch.ones(1, requires_grad=True))


def test_the_time_limit_never_interrupts_an_import(monkeypatch, tmp_path, capsys):
    """An import cut in half leaves torch unusable in the kernel: the limit waits for it to end."""
    (tmp_path / "slow_module_for_the_limit.py").write_text("import time\ntime.sleep(0.6)\nDONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(exercises, "TIME_LIMIT_S", 0.2)

    @exercise
    def check_import(fn):
        ok, result = call_learner_function(fn, what="f")
        return result if not ok else verdict(False, "f", got="it returned")

    def learner():
        import slow_module_for_the_limit

        while slow_module_for_the_limit.DONE:
            pass

    assert not check_import(learner)
    assert "still running after 0.2 s" in capsys.readouterr().out
    import slow_module_for_the_limit

    assert slow_module_for_the_limit.DONE


def test_a_learner_function_that_exits_gets_a_verdict(capsys):
    @exercise
    def check_fn(fn):
        ok, result = call_learner_function(fn, what="fn()")
        return result if not ok else verdict(True, "fn()")

    def calls_exit():
        sys.exit(3)

    @exercise
    def check_direct(fn):  # a check that calls the learner's function itself
        fn()
        return verdict(True, "fn()")

    assert not check_fn(calls_exit) and "it called exit()" in capsys.readouterr().out
    assert not check_direct(calls_exit) and "SystemExit" in capsys.readouterr().out


def test_a_function_out_of_time_is_named_in_the_verdict(monkeypatch, capsys):
    monkeypatch.setattr(exercises, "TIME_LIMIT_S", 0.2)

    @exercise
    def check_loop(fn):
        fn()
        return verdict(True, "loop")

    def batch_gradient():
        while True:
            pass

    assert not check_loop(batch_gradient)
    assert "Not yet: batch_gradient(...)" in capsys.readouterr().out


def test_same_code_tells_a_cell_left_as_handed_out_from_a_mended_one():
    from utils.exercises import same_code

    handed_out = """
def {name}(model, optimizer, batches):
    for X, y in batches:{comment}
        loss = loss_fn(model(X), y)
        loss.backward()
        optimizer.step()
"""
    mended = handed_out.replace("        loss.backward()", "        optimizer.zero_grad()\n        loss.backward()")

    def define(text, name, comment="", lines=0):
        scope = {}
        exec(compile("\n" * lines + text.format(name=name, comment=comment), "<cell>", "exec"), scope)
        return scope[name]

    reference = define(handed_out, "forgot_zero_grad")
    assert same_code(define(handed_out, "train", "  # as given", lines=40), reference)
    assert not same_code(define(mended, "train"), reference)
    assert not same_code(define(handed_out.replace("loss_fn", "mse"), "train"), reference)
    assert not same_code(lambda model, optimizer, batches: None, reference)
    assert not same_code(..., reference) and not same_code(print, reference)


@pytest.mark.parametrize("answer, words", [((12,), "a comma after the number"), ([36], "without the brackets"),
                                           ((torch.tensor(36.0),), "a comma after the number")])
def test_a_number_in_a_one_element_container_is_told_how_to_mend_it(answer, words, capsys):
    assert not check_answer(answer)
    out = capsys.readouterr().out
    assert words in out and "expected:" not in out and "36" not in out, out
