"""How a verdict speaks of answers: describe what was passed, format numbers, say how a number
misses, and tell an unwritten function from a written one (utils.exercises uses these; every
lesson's checks may too).
"""

from __future__ import annotations

import dis
import inspect
import math
from typing import Any

import torch


def _safe_repr(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # a learner's class with a broken __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any, limit: int = 120) -> str:
    try:
        text = " ".join(str(value).split())
    except Exception:  # a learner's exception with a broken __str__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(value: Any) -> str:
    """Say what a value is in a learner's words: type, and dtype and shape for a tensor."""
    try:
        return _describe(value)
    except Exception:  # a learner's object that breaks getattr, repr or len
        return f"a {type(value).__name__} object"


def _describe(value: Any) -> str:
    if value is Ellipsis:
        return "... (the placeholder)"
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        grad = ", requires_grad" if value.requires_grad else ""
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}{grad}".replace("torch.", "")
    if inspect.isclass(value):
        return f"the class {value.__name__} (not an instance of it)"
    if inspect.isgenerator(value):
        return "a generator (values not yet made: wrap it in list(...))"
    if callable(value):
        return f"the function {getattr(value, '__name__', type(value).__name__)}"
    return f"{type(value).__name__} {_safe_repr(value)}"


def show(value: Any, digits: int = 4) -> str:
    """Format a number or a small tensor for a verdict, rounded to `digits` significant digits."""
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.numel() == 0:
            return describe(value)
        values = value.detach().cpu().double().flatten().tolist()
        text = ", ".join(f"{v:.{digits}g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
        return f"tensor([{text}]) of shape {tuple(value.shape)}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return value if isinstance(value, str) else _safe_repr(value, 200)


def _show_pair(expected: Any, got: Any) -> tuple[str, str]:
    """Format expected and got with as many digits as it takes for different values to differ."""
    for digits in (4, 6, 9, 17):
        a, b = show(expected, digits), show(got, digits)
        if a != b:
            return a, b
    if isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor) and expected.shape == got.shape:
        e, g = expected.detach().cpu().double().flatten(), got.detach().cpu().double().flatten()
        i = int((e != g).nonzero()[0]) if bool((e != g).any()) else 0
        return f"{a}; element {i}: {e[i].item()!r}", f"{b}; element {i}: {g[i].item()!r}"
    return a, b


_NOTHING = {"RESUME", "NOP", "LOAD_CONST", "RETURN_VALUE", "RETURN_CONST"}


def unwritten(fn: Any) -> bool:
    """Whether `fn` is a function whose body does nothing yet (`...`, `pass`, a docstring)."""
    if not inspect.isfunction(fn):
        return False
    try:
        instructions = list(dis.get_instructions(fn))
    except Exception:
        return False
    return all(i.opname in _NOTHING and (i.opname not in ("LOAD_CONST", "RETURN_CONST") or i.argval is None)
               for i in instructions)


def _code_key(code: Any) -> tuple[Any, ...]:
    consts = tuple(_code_key(c) if inspect.iscode(c) else (type(c).__name__, repr(c)) for c in code.co_consts)
    return code.co_code, consts, code.co_names, code.co_varnames, code.co_freevars


def same_code(fn: Any, reference: Any) -> bool:
    """Whether `fn` is a function with the code of `reference`, whatever its name, lines or comments:
    a cell left as handed out (a buggy loop to mend), which a check may answer with counts=False."""
    if not (inspect.isfunction(fn) and inspect.isfunction(reference)):
        return False
    return _code_key(fn.__code__) == _code_key(reference.__code__)


def as_number(answer: Any) -> float | None:
    """Return `answer` as a float if it is a real number or a one-element tensor, else None."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, (int, float)):
        return float(answer)
    if isinstance(answer, torch.Tensor) and answer.numel() == 1 and not answer.is_complex():
        return float(answer.detach().cpu().double())
    if type(answer).__module__ == "numpy" and getattr(answer, "size", 0) == 1:
        try:
            return float(answer.item())  # a NumPy scalar
        except (TypeError, ValueError):
            return None
    return None


def direction(number: float, expected: float) -> str:
    """Say how a wrong number misses, without saying where the answer is."""
    if math.isnan(number) or math.isinf(number):
        return f"{number} is not a finite number"
    if number == 0:
        return "it is not 0"
    if number * expected < 0 or expected == 0:
        return "the sign is wrong" if expected != 0 else "too far from 0"
    ratio = abs(number) / abs(expected) if expected else 1.0
    side = "too far from 0" if ratio > 1 else "too close to 0"
    if ratio >= 10 or ratio <= 0.1:
        return f"off by more than a factor of 10: {side}"
    return side


def show_pair(expected: Any, got: Any) -> tuple[str, str]:
    """Format two values to show side by side (always shown, so never the answer itself):
    with as many digits as it takes for different values to print differently."""
    def numbers(value: Any) -> list[float] | None:
        values = [as_number(v) for v in value] if isinstance(value, (list, tuple)) else None
        return None if values is None or None in values else values  # type: ignore[return-value]

    a, b = numbers(expected), numbers(got)
    if a is None or b is None:
        return _show_pair(expected, got)
    for digits in (4, 6, 9, 17):
        texts = tuple("[" + ", ".join(f"{v:.{digits}g}" for v in values) + "]" for values in (a, b))
        if texts[0] != texts[1]:
            break
    return texts[0], texts[1]
