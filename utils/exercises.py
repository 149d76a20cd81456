"""Instant feedback for exercises: every notebook's checks are built from these (notebook 01 on).

A check prints one verdict and returns it: right, or "not yet" with what was expected, what
it got and a hint. A wrong answer, a wrong type, a wrong shape or a learner's function that
raises all get a verdict, never a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

RIGHT = "✔ Right:"
NOT_YET = "✘ Not yet:"


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check: `bool(verdict)` says whether the answer passed."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    def _ipython_display_(self) -> None:
        """Show nothing as the cell's value: the check has printed the message already."""


def describe(value: Any) -> str:
    """Say what a value is in a learner's words: type, and dtype and shape for a tensor."""
    if value is Ellipsis:
        return "... (the placeholder)"
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}".replace("torch.", "")
    if callable(value):
        return f"the function {getattr(value, '__name__', repr(value))}"
    return f"{type(value).__name__} {value!r}"[:80]


def show(value: Any) -> str:
    """Format a number or a small tensor for a verdict, rounded to 4 significant digits."""
    if isinstance(value, torch.Tensor):
        values = value.detach().cpu().double().flatten().tolist()
        text = ", ".join(f"{v:.4g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        return f"tensor([{text}]) of shape {tuple(value.shape)}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value)


def verdict(passed: bool, what: str, *, expected: Any = None, got: Any = None, hint: str = "") -> Verdict:
    """Print and return a verdict on `what`; a failing one shows expected, got and the hint."""
    if passed:
        message = f"{RIGHT} {what}."
    else:
        lines = [f"{NOT_YET} {what}"]
        if expected is not None:
            lines.append(f"   expected: {expected if isinstance(expected, str) else show(expected)}")
        if got is not None:
            lines.append(f"   got:      {got if isinstance(got, str) else show(got)}")
        if hint:
            lines.append(f"   hint:     {hint}")
        message = "\n".join(lines)
    print(message)
    return Verdict(passed, message)


def _placeholder(answer: Any, what: str) -> Verdict | None:
    if answer is Ellipsis:
        return verdict(False, what, hint="replace the ... with your answer, then run the cell again")
    return None


def as_number(answer: Any) -> float | None:
    """Return `answer` as a float if it is a real number or a one-element tensor, else None."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, (int, float)):
        return float(answer)
    if isinstance(answer, torch.Tensor) and answer.numel() == 1 and not answer.is_complex():
        return float(answer.detach().cpu().double())
    if hasattr(answer, "dtype") and hasattr(answer, "item") and getattr(answer, "size", 0) == 1:
        return float(answer.item())  # a NumPy scalar
    return None


def check_number(
    answer: Any,
    expected: float,
    *,
    what: str,
    hint: str = "",
    mistakes: Sequence[tuple[float, str]] = (),
    rel_tol: float = 1e-5,
) -> Verdict:
    """Check a numeric answer against `expected`; `mistakes` maps known wrong values to hints."""
    if (early := _placeholder(answer, what)) is not None:
        return early
    number = as_number(answer)
    if number is None:
        return verdict(False, what, expected=f"a number such as {show(float(expected))}", got=describe(answer))
    if math.isclose(number, expected, rel_tol=rel_tol, abs_tol=1e-8):
        return verdict(True, f"{what} is {show(float(expected))}")
    for wrong, why in mistakes:
        if math.isclose(number, wrong, rel_tol=rel_tol, abs_tol=1e-8):
            hint = why
            break
    return verdict(False, what, expected=float(expected), got=number, hint=hint)


def check_tensor(
    answer: Any,
    expected: torch.Tensor,
    *,
    what: str,
    hint: str = "",
    mistakes: Sequence[tuple[torch.Tensor, str]] = (),
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> Verdict:
    """Check a tensor answer: its type, then its shape, then its values (to a tolerance)."""
    if (early := _placeholder(answer, what)) is not None:
        return early
    shape = tuple(expected.shape)
    if not isinstance(answer, torch.Tensor):
        return verdict(False, what, expected=f"a tensor of shape {shape}", got=describe(answer), hint=hint)
    if tuple(answer.shape) != shape:
        return verdict(False, what, expected=f"a tensor of shape {shape}", got=describe(answer), hint=hint)
    got = answer.detach().cpu().double()
    if torch.allclose(got, expected.detach().cpu().double(), rtol=rtol, atol=atol):
        return verdict(True, what)
    for wrong, why in mistakes:
        if torch.allclose(got, wrong.detach().cpu().double(), rtol=rtol, atol=atol):
            hint = why
            break
    return verdict(False, what, expected=expected, got=got, hint=hint)


def call_learner_function(fn: Any, *args: Any, what: str) -> tuple[bool, Any]:
    """Call a learner's function: (True, its result), or (False, a printed Verdict saying why not)."""
    if (early := _placeholder(fn, what)) is not None:
        return False, early
    if not callable(fn):
        return False, verdict(False, what, expected="a function (pass its name, without calling it)", got=describe(fn))
    try:
        return True, fn(*args)
    except Exception as error:  # the learner's code: report, never a traceback
        return False, verdict(
            False, what, expected="your function to return a value", got=f"it raised {type(error).__name__}: {error}"
        )
