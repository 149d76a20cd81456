"""The guard's warnings and findings (notebook 08): what it reports, and where in your code."""

from __future__ import annotations

import linecache
import warnings
from dataclasses import dataclass

from utils.guard.sites import Stack, cell_name, location


class ZeroGradWarning(UserWarning):
    """Base class of the guard's warnings: filter both with `warnings.simplefilter(..., ZeroGradWarning)`."""


class StaleGradientWarning(ZeroGradWarning):
    """`optimizer.step()` is about to use a `.grad` that holds contributions that do not belong to this step."""


class DiscardedGradientWarning(ZeroGradWarning):
    """Gradients computed since the last step were cleared before any step used them."""


@dataclass(frozen=True)
class Finding:
    """One warning's content: the step it is about, its class, the parameters, the message, your line."""

    step: int
    kind: type[ZeroGradWarning]
    names: tuple[str, ...]
    message: str
    filename: str | None = None  # the line of your code the warning points at
    lineno: int | None = None


def make_finding(step: int, kind: type[ZeroGradWarning], names: list[str], message: str,
                 frames: Stack) -> Finding:
    """A finding pointing at the innermost line of `frames` (your code)."""
    filename, lineno = location(frames)
    return Finding(step, kind, tuple(names), message, filename, lineno)


def warn(finding: Finding, frames: Stack) -> None:
    """Issue a finding as a Python warning pointing at your line (filters and "error" apply)."""
    module_globals = frames[0][2] if frames else {}
    filename, lineno = finding.filename or "<unknown>", finding.lineno or 0
    filename = cell_name(filename) or filename  # "Cell In[5]" rather than a notebook's temporary file
    try:  # prime the source cache, so the warning can show the line (a loader may fail: stdin, zip)
        linecache.getline(filename, lineno, module_globals)
    except Exception:
        pass
    warnings.warn_explicit(
        finding.message, finding.kind, filename, lineno,
        module=module_globals.get("__name__", "utils.guard"),
        registry=module_globals.setdefault("__warningregistry__", {}) if frames else None,
    )
