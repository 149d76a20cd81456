"""Short tracebacks in a notebook: your cell's failing line, then the message (every lesson).

A failing `loss.backward()` prints some 40 lines of torch internals, with the machine's file
paths, and the message a screen below the code. After `short_tracebacks()` (the setup cell of
each lesson), an error shows only the frames of the notebook's own cells, IPython's
"Cell In[5], line 3" with the failing line marked, and the message right under it:

    RuntimeError                              Traceback (most recent call last)
    Cell In[5], line 3
          1 loss = mse(w)
          2 loss.backward()
    ----> 3 loss.backward()

    RuntimeError: Trying to backward through the graph a second time ...

The exception itself is unchanged (type and message, so nbval compares them as before), and a
cell tagged `raises-exception` still counts as failing. It uses IPython's own hook for custom
exception handling (`InteractiveShell.set_custom_exc`); `full_tracebacks()` undoes it.
"""

from __future__ import annotations

import re
import types
from typing import Any

_CELL_FILE = re.compile(r"^<ipython-input-|ipykernel_\d+[/\\]")


def _is_cell(shell: Any, frame: types.FrameType) -> bool:
    name = frame.f_code.co_filename
    return name in getattr(shell.compile, "_filename_map", {}) or bool(_CELL_FILE.search(name))


def _frames(tb: types.TracebackType | None) -> list[types.TracebackType]:
    found = []
    while tb is not None:
        found.append(tb)
        tb = tb.tb_next
    return found


def cells_only(shell: Any, tb: types.TracebackType | None, *, leading: bool = True) -> types.TracebackType | None:
    """The traceback without frames outside notebook cells (IPython's own leading frames kept
    with `leading`, since IPython skips them by count)."""
    frames = _frames(tb)
    first = next((i for i, f in enumerate(frames) if _is_cell(shell, f.tb_frame)), None)
    if first is None:
        return tb if leading else None
    kept = (frames[:first] if leading else []) + [f for f in frames[first:] if _is_cell(shell, f.tb_frame)]
    rebuilt = None
    for f in reversed(kept):
        rebuilt = types.TracebackType(rebuilt, f.tb_frame, f.tb_lasti, f.tb_lineno)
    return rebuilt


def _show_short(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> None:
    if issubclass(etype, SyntaxError):
        shell.showsyntaxerror()
        return
    seen = {id(value)}
    chained = value.__cause__ or value.__context__
    while chained is not None and id(chained) not in seen:  # errors raised while handling others
        seen.add(id(chained))
        chained.__traceback__ = cells_only(shell, chained.__traceback__, leading=False)
        chained = chained.__cause__ or chained.__context__
    shell.showtraceback((etype, value, cells_only(shell, tb)), tb_offset=tb_offset)


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def short_tracebacks() -> None:
    """Show errors as the notebook's own failing lines and the message (outside IPython: nothing)."""
    if (shell := _shell()) is not None:
        shell.set_custom_exc((Exception,), _show_short)


def full_tracebacks() -> None:
    """Undo `short_tracebacks()`: IPython's full tracebacks again."""
    if (shell := _shell()) is not None:
        shell.set_custom_exc((), None)
