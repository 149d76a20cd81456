"""`%load_ext utils.guard` in a notebook: guard every optimizer created afterwards (notebook 08).

    %load_ext utils.guard      # from now on every new optimizer is guarded; findings are warnings
    %unload_ext utils.guard    # removes every hook, then prints a summary

Findings are Python warnings pointing at the cell's line, so the usual filters apply
(`warnings.simplefilter("error", ZeroGradWarning)` stops at the first one). Optimizers
created before `%load_ext` are not guarded: create them again, or wrap them in ZeroGradGuard.
"""

from __future__ import annotations

from typing import Any

from utils.guard import auto


def load_ipython_extension(ipython: Any) -> None:
    """Called by `%load_ext utils.guard`."""
    if auto.installed():  # loaded already (IPython usually says so itself), or the command line is running
        print("utils.guard: every new optimizer is already guarded; %unload_ext utils.guard first to start afresh.")
        return
    auto.install()
    print("utils.guard: every optimizer created from now on is guarded; "
          "%unload_ext utils.guard removes every hook.")


def unload_ipython_extension(ipython: Any) -> None:
    """Called by `%unload_ext utils.guard`: remove every guard and hook, then summarise."""
    if not auto.installed():
        print("utils.guard: nothing to unload (%load_ext utils.guard was not run).")
        return
    made = auto.uninstall()
    print(auto.summary(made))
