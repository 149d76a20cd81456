"""Every exercise check answers any input with a Verdict, never an exception (property-based).

The checks are found at run time (every public `check_*` of every `utils/ex*.py`), so a check
added to a lesson is fuzzed without touching this file. Inputs are the wrong kinds a learner
can pass: None, classes, strings, numbers, tensors of any shape and dtype, containers,
generators, and functions that return any of these, raise, take the wrong arguments, spoil
their arguments, or never return.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import signal
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utils import exercises
from utils.exercises import Verdict, reset_tries

ROOT = Path(__file__).resolve().parents[1]
MODULES = [importlib.import_module(f"utils.{p.stem}") for p in sorted((ROOT / "utils").glob("ex[0-9]*.py"))]
CHECKS = [fn for module in MODULES for name, fn in vars(module).items()
          if name.startswith("check_") and inspect.isfunction(fn) and fn.__module__ == module.__name__]
WATCHDOG_S = 8  # a check that has not answered by then is a failure, not a hang of the suite

# Known failures of checks owned by other helpers, to be removed by the lead once mended
# (xfail, not strict: a check mended meanwhile passes). Keys are "module.function".
KNOWN: dict[str, str] = {
    # e.g. "ex07.check_sync_context": "issue-13 helper: RuntimeError from hasattr(answer, '__enter__')",
}


def name_of(check) -> str:
    return f"{check.__module__.rsplit('.', 1)[-1]}.{check.__name__}"


def params(checks, run: bool = True):
    """The checks as test parameters, known failures marked (not run where a failure costs a hang)."""
    return [pytest.param(c, id=name_of(c), marks=[pytest.mark.xfail(reason=KNOWN[name_of(c)], strict=False,
                                                                    run=run)]
                         if name_of(c) in KNOWN else []) for c in checks]


class Hung(BaseException):
    """The check did not answer within WATCHDOG_S."""


@contextlib.contextmanager
def watchdog(seconds: float):
    def hung(signum, frame):
        raise Hung

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def short_time_limit(monkeypatch):
    monkeypatch.setattr(exercises, "TIME_LIMIT_S", 1.0)
    reset_tries()


def answer_of(check, answer, capsys) -> Verdict:
    """Run a check on `answer`; it must return one Verdict, printed, and not pass."""
    try:
        with watchdog(WATCHDOG_S):
            result = check(answer)
    except Hung:
        pytest.fail(f"{name_of(check)} did not answer within {WATCHDOG_S} s: no time limit on the "
                    "learner's function (use @exercise)")
    except (Exception, SystemExit) as error:
        pytest.fail(f"{name_of(check)} raised {type(error).__name__}: {error} on {exercises.describe(answer)}")
    out = capsys.readouterr().out
    assert isinstance(result, Verdict), f"{name_of(check)} returned {type(result).__name__}"
    assert not result.passed, f"{name_of(check)} accepted {exercises.describe(answer)}"
    assert result.message and result.message in out, "the verdict is printed"
    return result


# What a learner may pass ---------------------------------------------------------------

CLASSES = [int, float, str, list, dict, object, type, torch.Tensor, torch.nn.Linear, torch.optim.SGD,
           contextlib.nullcontext, Verdict]
DTYPES = [torch.float32, torch.float64, torch.int64, torch.bool, torch.complex64, torch.float16]


@st.composite
def tensors(draw):
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    dtype = draw(st.sampled_from(DTYPES))
    value = draw(st.floats(allow_nan=True, allow_infinity=True, width=16))
    tensor = torch.full(shape, value if dtype.is_floating_point or dtype.is_complex else 1, dtype=dtype)
    if (dtype.is_floating_point or dtype.is_complex) and draw(st.booleans()):
        tensor.requires_grad_()
    return tensor


leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.binary(max_size=8),
    st.complex_numbers(max_magnitude=1e6), st.sampled_from(CLASSES), tensors(),
)
values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner), st.sets(st.text(max_size=8), max_size=3),
    st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=8)


def returning(value):
    def learner_function(*args, **kwargs):
        return value
    return learner_function


def raising(error):
    def learner_function(*args, **kwargs):
        raise error("raised by the learner's function")
    return learner_function


def spoiling(value):
    def learner_function(*args, **kwargs):
        for arg in args:
            tensors = [arg] if isinstance(arg, torch.Tensor) else (
                list(arg.parameters()) if isinstance(arg, torch.nn.Module) else [])
            for tensor in tensors:
                with torch.no_grad():
                    tensor.fill_(float("nan"))
                tensor.grad = None
        return value
    return learner_function


def generator_of(items):
    return (item for item in items)


ERRORS = [ValueError, TypeError, RuntimeError, ZeroDivisionError, KeyError, AttributeError, IndexError,
          StopIteration, RecursionError, NotImplementedError, AssertionError, SystemExit]
functions = st.one_of(
    st.builds(returning, values),
    st.builds(raising, st.sampled_from(ERRORS)),
    st.builds(spoiling, values),
    st.builds(returning, st.builds(generator_of, st.lists(leaves, max_size=3))),
    st.builds(returning, st.builds(returning, values)),  # returns a function
    st.sampled_from([lambda: 1, lambda x: x, print, len, torch.zeros_like, iter]),
)
answers = st.one_of(values, functions, st.builds(generator_of, st.lists(leaves, max_size=3)))


# The tests -----------------------------------------------------------------------------

def test_there_are_checks_to_fuzz():
    assert len(CHECKS) >= 10, [name_of(c) for c in CHECKS]


@pytest.mark.parametrize("check", params(CHECKS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(answer=answers)
def test_every_check_answers_any_input_with_a_verdict(check, answer, capsys):
    answer_of(check, answer, capsys)


class Hostile:
    """An object that breaks every protocol a check might use on it."""

    def __getattr__(self, name):
        raise RuntimeError(f"no {name}")

    def __repr__(self):
        raise RuntimeError("no repr")

    def __iter__(self):
        raise RuntimeError("no iter")

    def __len__(self):
        raise RuntimeError("no len")

    def __eq__(self, other):
        raise RuntimeError("no eq")

    __hash__ = None

    def __call__(self, *args, **kwargs):
        raise RuntimeError("no call")


def forever(*args, **kwargs):
    while True:
        try:
            pass
        except Exception:  # a learner's catch-all must not swallow the time limit
            pass


NASTY = [None, int, contextlib.nullcontext, torch.optim.SGD, "-13.44", "", b"x", (x for x in range(3)),
         Hostile(), returning(Hostile()), raising(ValueError), lambda: None,
         returning(None), returning(int), float("nan"), torch.tensor(float("nan")), torch.empty(0),
         torch.ones(2, 2, dtype=torch.complex64), {"a": 1}, [[]], set()]


@pytest.mark.parametrize("check", params(CHECKS))
def test_every_check_answers_the_nastiest_inputs_with_a_verdict(check, capsys):
    for answer in NASTY:
        answer_of(check, answer, capsys)


@pytest.mark.parametrize("check", params(CHECKS, run=False))
def test_every_check_stops_a_function_that_never_returns(check, capsys):
    answer_of(check, forever, capsys)


@pytest.mark.parametrize("check", params(CHECKS))
def test_every_check_uses_the_hint_ladder(check, capsys):
    assert hasattr(check, "_exercise_key"), f"decorate {name_of(check)} with @exercise (utils.exercises)"
    result = answer_of(check, ..., capsys)
    assert "replace the ..." in result.message and exercises.tries(check) == 0, "a placeholder is no try"
    for _ in range(exercises.REVEAL_AFTER - 1):
        result = answer_of(check, None, capsys)
        assert "expected:" not in result.message, "the answer shows only from the third try on"
    assert exercises.tries(check) == exercises.REVEAL_AFTER - 1
    try:
        with watchdog(WATCHDOG_S):
            asked = check(None, reveal=True)
    except TypeError as error:
        pytest.fail(f"{name_of(check)}(answer, reveal=True) raised {error}")
    assert isinstance(asked, Verdict) and not asked.passed
