"""Guard every optimizer a program creates (notebook 08): the engine of the command line and the extension.

`install()` wraps `torch.optim.Optimizer.__init__`: each optimizer built afterwards gets a
`ZeroGradGuard` the moment its parameters are known. `uninstall()` puts `__init__` back and
removes every guard (each reports what it saw last), and returns them for a summary.
An explicit `ZeroGradGuard` on an optimizer that already has an automatic one takes over
its reporting while it lives, so nothing is reported twice.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from typing import Any, Callable

import torch

from utils.guard.checker import ZeroGradGuard, check_options
from utils.guard.findings import Finding
from utils.guard.sites import cell_name, place

_state: dict[str, Any] = {"init": None, "guards": [], "options": {}}


def install(*, report: Callable[[Finding], None] | None = None, max_warnings: int | None = 3,
            gradient_accumulation_steps: int | None = None) -> None:
    """From now on, guard every optimizer when it is created; `report` gets each finding shown."""
    if _state["init"] is not None:
        raise RuntimeError("every optimizer is already guarded; call uninstall() first")
    options = {"report": report, "max_warnings": max_warnings,
               "gradient_accumulation_steps": gradient_accumulation_steps}
    check_options(**options)
    original = torch.optim.Optimizer.__init__

    @functools.wraps(original)
    def init_and_guard(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if any(guard.optimizer is self for guard in _state["guards"]):  # one built twice over
            return
        try:
            _state["guards"].append(ZeroGradGuard(self, **options, _automatic=True))
        except Exception as error:  # the program goes on, this optimizer unchecked
            print(f"utils.guard: could not guard a {type(self).__name__} ({type(error).__name__}: "
                  f"{error}); it runs unchecked.", file=sys.stderr)

    _state.update(init=original, guards=[], options=options)
    torch.optim.Optimizer.__init__ = init_and_guard


def installed() -> bool:
    """Is every new optimizer being guarded now (by the command line or the notebook extension)?"""
    return _state["init"] is not None


def guards() -> list[ZeroGradGuard]:
    """The guards made so far, oldest first."""
    return list(_state["guards"])


def uninstall() -> list[ZeroGradGuard]:
    """Put `Optimizer.__init__` back and remove every guard made; return them (for a summary)."""
    if _state["init"] is None:
        return []
    torch.optim.Optimizer.__init__ = _state["init"]
    made, _state["guards"], _state["init"] = _state["guards"], [], None
    for guard in made:
        guard.remove()
    return made


def summary(made: list[ZeroGradGuard]) -> str:
    """A few lines on what the guards saw: optimizers, steps, findings by class with the first place."""
    if not made:
        return "utils.guard: no optimizer was created, so nothing was checked."
    kinds = Counter(g.kind for g in made)
    names = ", ".join(f"{n} {k}" if n > 1 else k for k, n in kinds.items())
    steps = sum(g.steps for g in made)
    findings = [(g, f) for g in made for f in g.findings]
    head = (f"utils.guard: {len(made)} optimizer{'s' * (len(made) != 1)} guarded ({names}), "
            f"{steps} step{'s' * (steps != 1)} checked")
    if not findings:
        return head + ": no findings."
    lines = [head + f": {len(findings)} finding{'s' * (len(findings) != 1)}."]
    by_kind = Counter(f.kind.__name__ for _, f in findings)
    for kind, count in by_kind.items():
        guard, first = next((g, f) for g, f in findings if f.kind.__name__ == kind)
        number = made.index(guard) + 1
        if first.filename and cell_name(first.filename):  # cells are numbered by run: the warning says which
            where = "in a notebook cell, "
        else:
            where = f"at {place(first.filename, first.lineno)}, " if first.filename else ""
        lines.append(f"  {kind} x {count}: the first {where}step {first.step} of optimizer {number} "
                     f"({guard.kind})")
    return "\n".join(lines)
