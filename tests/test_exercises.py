"""utils.exercises: every answer gets a printed verdict, never a traceback."""

import numpy as np
import pytest
import torch

from utils.exercises import NOT_YET, RIGHT, Verdict, call_learner_function, check_number, check_tensor, describe


def test_right_number(capsys):
    result = check_number(36, 36.0, what="w.grad")
    assert isinstance(result, Verdict) and result.passed and bool(result)
    assert capsys.readouterr().out.startswith(f"{RIGHT} w.grad is 36")


@pytest.mark.parametrize("answer", [36.0, torch.tensor(36.0), torch.tensor([36.0]), np.float32(36.0)])
def test_numbers_in_any_form_are_accepted(answer):
    assert check_number(answer, 36.0, what="x")


def test_wrong_number_shows_expected_got_and_the_matching_hint(capsys):
    result = check_number(12, 36.0, what="w.grad", hint="general", mistakes=[(12.0, "one call only")])
    out = capsys.readouterr().out
    assert not result and out.startswith(f"{NOT_YET} w.grad")
    assert "expected: 36" in out and "got:      12" in out and "hint:     one call only" in out


def test_placeholder_asks_for_an_answer(capsys):
    assert not check_number(..., 1.0, what="x")
    assert "replace the ..." in capsys.readouterr().out


@pytest.mark.parametrize("answer, words", [("36", "str '36'"), ([36], "list [36]"), (True, "bool True"),
                                           (torch.ones(2), "float32 tensor of shape (2,)")])
def test_number_of_the_wrong_type_says_so(answer, words, capsys):
    assert not check_number(answer, 36.0, what="x")
    out = capsys.readouterr().out
    assert "expected: a number such as 36" in out and words in out


def test_tensor_checks_type_then_shape_then_values(capsys):
    expected = torch.tensor([[1.0], [2.0]])
    assert check_tensor(expected.clone().double(), expected, what="g")
    assert not check_tensor([1.0, 2.0], expected, what="g")
    assert "expected: a tensor of shape (2, 1)" in capsys.readouterr().out
    assert not check_tensor(torch.ones(2), expected, what="g")
    assert "got:      a float32 tensor of shape (2,)" in capsys.readouterr().out
    assert not check_tensor(2 * expected, expected, what="g", mistakes=[(2 * expected, "doubled")])
    out = capsys.readouterr().out
    assert "tensor([1, 2]) of shape (2, 1)" in out and "hint:     doubled" in out


def test_learner_function_that_raises_gets_a_verdict(capsys):
    def broken(x):
        return 1 / 0

    ok, result = call_learner_function(broken, 1, what="f")
    assert not ok and not result
    assert "it raised ZeroDivisionError: division by zero" in capsys.readouterr().out


def test_learner_gives_a_value_instead_of_a_function(capsys):
    ok, result = call_learner_function(3, what="f")
    assert not ok
    assert "a function (pass its name, without calling it)" in capsys.readouterr().out


def test_verdict_shows_nothing_more_in_a_notebook():
    verdict = Verdict(True, "fine")
    assert verdict._ipython_display_() is None and str(verdict) == "fine"


def test_describe_is_short():
    assert describe(...) == "... (the placeholder)"
    assert len(describe("x" * 500)) <= 80
