"""Where in your code something happened, and the comment that marks a clear as intended (notebook 08).

A warning names the innermost line outside torch and this package: your `optimizer.step()`,
your `zero_grad()`, or the line of a library you call. A finding is not reported when any
line of the calling code ends with the comment `# zero_grad: intended`, for example
`optimizer.zero_grad()  # zero_grad: intended` after gradients computed only to be read.
"""

from __future__ import annotations

import linecache
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

PRAGMA = "# zero_grad: intended"
_PRAGMA = re.compile(r"#\s*zero_grad:\s*intended\b", re.IGNORECASE)
_SKIP = (str(Path(__file__).resolve().parent) + os.sep, str(Path(torch.__file__).resolve().parent) + os.sep)

Frame = tuple[str, int, dict[str, Any]]  # file name, line number, the module's globals (for its source)
Stack = tuple[Frame, ...]


def stack(skip: int = 1) -> Stack:
    """The calling code's frames, innermost first, without those of torch and of this package."""
    frame = sys._getframe(skip)
    frames = []
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(_SKIP):
            frames.append((name, frame.f_lineno, frame.f_globals))
        frame = frame.f_back
    return tuple(frames)


def location(frames: Stack) -> tuple[str | None, int | None]:
    """The file and line a warning points at: the innermost frame of the calling code."""
    if not frames:
        return None, None
    name, line, _ = frames[0]
    return name, line


def cell_name(filename: str) -> str | None:
    """"Cell In[5]" for a notebook cell's code (as IPython names it in tracebacks), else None."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    label = shell.compile.format_code_name(filename) if shell is not None else None
    return f"{label[0]} {label[1]}" if label else None


def short_path(filename: str | None) -> str:
    """A path relative to the current folder when it is inside it: no machine paths in reports."""
    if not filename:
        return "<unknown>"
    try:
        relative = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if relative.startswith("..") else relative


def place(filename: str | None, lineno: int | None) -> str:
    """Where a finding points, for people: "train.py:29", or "Cell In[5], line 3" in a notebook."""
    cell = cell_name(filename) if filename else None
    return f"{cell}, line {lineno}" if cell else f"{short_path(filename)}:{lineno}"


def intended(frames: Stack) -> bool:
    """Does any line of the calling code carry the comment `# zero_grad: intended`?"""
    for name, line, module_globals in frames:
        if _PRAGMA.search(linecache.getline(name, line, module_globals)):
            return True
    return False
