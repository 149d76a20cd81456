"""Instant feedback for exercises, with a hint ladder: every notebook's checks use it (01 on).

A check prints one verdict and returns it: right, or "not yet" with what is wrong about the
answer. The expected answer is withheld until it is earned (the third wrong try of that
check, `REVEAL_AFTER`) or asked for (`reveal=True` on the check call):

    ✘ Not yet: w.grad after three backward() calls
       got:      12
       hint:     12 is one call's gradient: what happens to it on the second call?
       answer:   shown from try 3 on; to see it now, run
                 ex01.check_grad_after_three_calls(answer, reveal=True)

How a check module uses it (utils/ex01.py is the model):

- `@exercise` on every public check. It adds `reveal=False` to the check's signature, counts
  the wrong tries of that check in this kernel (a `...` placeholder is not a try), stops a
  learner's function still running after `TIME_LIMIT_S` seconds (`@exercise(time_limit_s=60)`
  for a slow exercise; SIGALRM, so on Unix in the main thread, which is where a notebook cell
  runs), and turns anything the check raises into a verdict: never a traceback.
- `verdict(passed, what, wanted=..., got=..., hint=..., expected=...)`:
  `wanted`: what *kind* of answer is needed ("a number", "a tensor of shape (3, 1)",
  "one backward() per micro-batch"); always shown, so never the answer itself.
  `got`: what the learner's answer is or did; always shown.
  `hint`: what is wrong about it: a named mistake, a direction, an order of magnitude, a
  question to ask oneself; never the answer or the solution's code. A list of hints is a
  ladder: the n-th wrong try shows rung n (the last rung from then on).
  `expected`: the answer (a value, a tensor, or text that gives it away); shown only once
  revealed, then beside `got` with as many digits as it takes for the two to differ.
- `check_number(answer, expected, what=, hint=, mistakes=[(value, why), ...])` and
  `check_tensor(...)` do all of it for a value: placeholder, wrong type or shape, a known
  mistake's hint, otherwise the direction of the miss ("too large", "the sign is wrong",
  "more than 10 times too small").
- `call_learner_function(fn, *args, what=, errors=[(piece of message, hint), ...])` calls a
  learner's function: (True, result), or (False, a verdict) when it is no function, is still
  the cell's unwritten `...` body (`unwritten(fn)`: not a try), or raises.
- `show_pair(a, b)` formats two values shown side by side so that they never print alike.
- `same_code(fn, handed_out)` tells a cell left as handed out (a buggy loop to mend) from a
  mended one: answer it with `verdict(..., counts=False)`, so that Run All spends no try.
- Tests call `reset_tries()` first (an autouse fixture): the counts live for the process.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import signal
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from utils.answers import (  # noqa: F401 (part of this module's interface)
    _safe_repr, _short, _show_pair, as_number, describe, direction, same_code, show, show_pair, unwritten,
)

RIGHT = "✔ Right:"
NOT_YET = "✘ Not yet:"
REVEAL_AFTER = 3  # the expected answer shows from this wrong try of one check on
TIME_LIMIT_S = 20.0  # how long one check may run a learner's function
WIDTH = 88  # verdict lines wrap at spaces to fit a projector, like the notebooks' code
_tries: dict[str, int] = {}  # wrong tries per check, for this kernel


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check: `bool(verdict)` says whether the answer passed."""

    passed: bool
    message: str
    counts: bool = True  # False for a placeholder `...`: not a try

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    def _ipython_display_(self) -> None:
        """Show nothing as the cell's value: the check has printed the message already."""


@dataclass(frozen=True)
class _Attempt:
    key: str  # which check: module.function
    call: str  # how to ask for the answer, e.g. "ex01.check_x(answer, reveal=True)"
    reveal: bool


_attempt: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("attempt", default=None)


class OutOfTime(BaseException):
    """Raised inside a learner's function that runs too long (BaseException: `except Exception`
    in the learner's code does not swallow it)."""


def reset_tries() -> None:
    """Forget every wrong try (tests call it; a teacher can, to start a class afresh)."""
    _tries.clear()


def tries(check: Callable[..., Any]) -> int:
    """How many wrong tries of `check` this kernel has seen."""
    return _tries.get(getattr(check, "_exercise_key", ""), 0)


def _line(label: str, text: str) -> str:
    return textwrap.fill(text, WIDTH, initial_indent=f"   {label:<9} ", subsequent_indent=" " * 13,
                         break_long_words=False, break_on_hyphens=False)


def verdict(
    passed: bool,
    what: str,
    *,
    wanted: str = "",
    got: Any = None,
    hint: str | Sequence[str] = "",
    expected: Any = None,
    counts: bool = True,
) -> Verdict:
    """Print and return a verdict on `what`; `expected` shows only once revealed (module doc)."""
    if passed:
        message = textwrap.fill(f"{RIGHT} {what}.", WIDTH, subsequent_indent="   ", break_long_words=False,
                                break_on_hyphens=False)
        print(message)
        return Verdict(True, message)
    attempt = _attempt.get()
    key = attempt.key if attempt else what
    try_number = _tries.get(key, 0) + 1
    reveal = attempt is not None and attempt.reveal or (counts and try_number >= REVEAL_AFTER)
    lines = [textwrap.fill(f"{NOT_YET} {what}", WIDTH, subsequent_indent="   ", break_long_words=False,
                           break_on_hyphens=False)]
    if wanted:
        lines.append(_line("wanted:", wanted))
    shown_expected, shown_got = _show_pair(expected, got) if expected is not None else (None, show(got))
    if expected is not None and reveal:
        lines.append(_line("expected:", shown_expected))
    if got is not None:
        lines.append(_line("got:", shown_got))
    if hint:
        rungs = [hint] if isinstance(hint, str) else list(hint)
        lines.append(_line("hint:", rungs[min(try_number, len(rungs)) - 1]))
    if expected is not None and not reveal and counts:
        lines.append(_line("answer:", f"shown from try {REVEAL_AFTER} on" + ("; to see it now, run" if attempt else "")))
        if attempt:
            lines.append(" " * 13 + attempt.call)
    elif expected is None and attempt is not None and attempt.reveal:
        lines.append(_line("answer:", "no single value to show here: the lines above say what to "
                           "change"))
    message = "\n".join(lines)
    print(message)
    if attempt is None and counts:
        _tries[key] = try_number
    return Verdict(False, message, counts)


def _placeholder(answer: Any, what: str, expected: Any = None) -> Verdict | None:
    """The verdict on an answer not yet given (`...`, or a function with only `...`): no try."""
    if answer is Ellipsis:
        hint = "replace the ... with your answer, then run the cell again"
    elif unwritten(answer):
        hint = f"write the body of {answer.__name__}: replace its ... with your code, then run the cell again"
    else:
        return None
    return verdict(False, what, hint=hint, expected=expected if (a := _attempt.get()) and a.reveal else None,
                   counts=False)


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise OutOfTime in this thread after `seconds` (Unix main thread; elsewhere no limit)."""
    if seconds <= 0 or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def out_of_time(signum: int, frame: Any) -> None:
        while frame is not None:  # never inside an import: a half-imported module breaks the kernel
            if frame.f_code.co_filename.startswith("<frozen importlib"):
                signal.setitimer(signal.ITIMER_REAL, 0.05)
                return
            frame = frame.f_back
        raise OutOfTime

    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, out_of_time)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:  # someone else's alarm was running: give it back what is left
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3))


def _title(check: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """What a verdict is about when the check itself could not say: the learner's function."""
    name = getattr(args[0], "__name__", None) if args and callable(args[0]) else None
    return f"{name}(...)" if isinstance(name, str) and name.isidentifier() else check.__name__


def exercise(check: Callable[..., Verdict] | None = None, *, time_limit_s: float | None = None) -> Any:
    """Decorate a check: `reveal=`, a try counter, a time limit and a verdict whatever happens."""
    if check is None:
        return functools.partial(exercise, time_limit_s=time_limit_s)
    key = f"{check.__module__}.{check.__qualname__}"
    params = [p.name for p in inspect.signature(check).parameters.values()]
    call = f"{check.__module__.rsplit('.', 1)[-1]}.{check.__name__}({params[0] if params else ''}, reveal=True)"

    @functools.wraps(check)
    def run(*args: Any, reveal: bool = False, **kwargs: Any) -> Verdict:
        if _attempt.get() is not None:  # called from another check: that one counts
            return check(*args, **kwargs)
        token = _attempt.set(_Attempt(key, call, bool(reveal)))
        limit = TIME_LIMIT_S if time_limit_s is None else time_limit_s
        try:
            with _time_limit(limit):
                result = check(*args, **kwargs)
            if not isinstance(result, Verdict):
                result = verdict(False, check.__name__, got=f"the check returned {describe(result)}")
        except OutOfTime:
            result = verdict(False, _title(check, args), got=f"your function was still running after "
                             f"{limit:g} s", hint="does a loop never end? Is something much larger than "
                             "the exercise's data?")
        except (Exception, SystemExit) as error:  # a learner's object that breaks even the checking
            result = verdict(False, _title(check, args), got=f"checking it raised {type(error).__name__}: "
                             f"{_short(error)}", hint="pass the kind of answer the cell asks for")
        finally:
            _attempt.reset(token)
        if not result.passed and result.counts:
            _tries[key] = _tries.get(key, 0) + 1
        return result

    run._exercise_key = key  # type: ignore[attr-defined]
    return run


def check_number(
    answer: Any,
    expected: float,
    *,
    what: str,
    hint: str | Sequence[str] = "",
    mistakes: Sequence[tuple[float, str]] = (),
    rel_tol: float = 1e-5,
) -> Verdict:
    """Check a numeric answer against `expected`; `mistakes` maps known wrong values to hints."""
    if (early := _placeholder(answer, what, float(expected))) is not None:
        return early
    number = as_number(answer)
    if number is None:
        if isinstance(answer, str):
            return verdict(False, what, wanted="a number", got="text in quotes (a str)",
                           hint="write the number itself, without quotes", expected=float(expected))
        if isinstance(answer, (tuple, list)) and len(answer) == 1 and as_number(answer[0]) is not None:
            hint = ("a comma after the number makes a tuple: remove it" if isinstance(answer, tuple) else
                    "write the number itself, without the brackets")
            return verdict(False, what, wanted="a number", got=f"a {type(answer).__name__} holding one number",
                           hint=hint, expected=float(expected))
        return verdict(False, what, wanted="a number (an int, a float or a one-element tensor)",
                       got=describe(answer), expected=float(expected))
    if math.isclose(number, expected, rel_tol=rel_tol, abs_tol=1e-8):
        return verdict(True, f"{what} is {show(float(expected))}")
    for wrong, why in mistakes:
        if math.isclose(number, wrong, rel_tol=rel_tol, abs_tol=1e-8):
            return verdict(False, what, got=number, hint=why, expected=float(expected))
    rungs = [hint] if isinstance(hint, str) else list(hint)
    way = direction(number, expected)
    rungs = [f"{way}. {r[:1].upper()}{r[1:]}" if r else way for r in rungs]
    return verdict(False, what, got=number, hint=rungs, expected=float(expected))


def check_tensor(
    answer: Any,
    expected: torch.Tensor,
    *,
    what: str,
    hint: str | Sequence[str] = "",
    mistakes: Sequence[tuple[torch.Tensor, str]] = (),
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> Verdict:
    """Check a tensor answer: its type, then its shape, then its values (to a tolerance)."""
    if (early := _placeholder(answer, what, expected)) is not None:
        return early
    shape = tuple(expected.shape)
    if not isinstance(answer, torch.Tensor) or tuple(answer.shape) != shape or answer.is_complex():
        return verdict(False, what, wanted=f"a tensor of shape {shape}", got=describe(answer), hint=hint,
                       expected=expected)
    got = answer.detach().cpu().double()
    if torch.allclose(got, expected.detach().cpu().double(), rtol=rtol, atol=atol):
        return verdict(True, what)
    for wrong, why in mistakes:
        if torch.allclose(got, wrong.detach().cpu().double(), rtol=rtol, atol=atol):
            return verdict(False, what, got=got, hint=why, expected=expected)
    return verdict(False, what, got=got, hint=hint, expected=expected)


def call_learner_function(
    fn: Any, *args: Any, what: str, errors: Sequence[tuple[str, str]] = ()
) -> tuple[bool, Any]:
    """Call a learner's function: (True, its result), or (False, a printed Verdict saying why not).

    `errors` maps a piece of an error message to a hint, for the errors the task invites.
    """
    if (early := _placeholder(fn, what)) is not None:
        return False, early
    if inspect.isclass(fn) or not callable(fn):
        return False, verdict(False, what, wanted="a function (pass its name, without calling it)",
                              got=describe(fn))
    try:
        return True, fn(*args)
    except SystemExit as error:  # exit() or sys.exit() in a notebook cell's function
        return False, verdict(False, what, wanted="your function to return a value",
                              got=f"it called exit() (SystemExit: {_short(error.code)})",
                              hint="return the result instead of exiting")
    except Exception as error:  # the learner's code: report, never a traceback
        text = _short(error)
        hint = next((why for piece, why in errors if piece in text), "read the error, mend, run again")
        return False, verdict(False, what, wanted="your function to return a value",
                              got=f"it raised {type(error).__name__}: {text}", hint=hint)
