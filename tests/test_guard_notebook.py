"""`%load_ext utils.guard` / `%unload_ext utils.guard` in an IPython shell: every optimizer guarded, every hook gone."""

from __future__ import annotations

import linecache
import warnings

import pytest
import torch
from torch.optim.optimizer import _global_optimizer_post_hooks

from utils.guard import StaleGradientWarning, ZeroGradGuard, ZeroGradWarning, auto, clears

IPython = pytest.importorskip("IPython")

LOOP = """
torch.manual_seed(0)
model = torch.nn.Linear(3, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for i in range(3):
    model(torch.ones(2, 3)).sum().backward()
    optimizer.step()
"""


@pytest.fixture
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell("import torch")
    yield shell
    if "utils.guard" in shell.extension_manager.loaded:
        shell.run_line_magic("unload_ext", "utils.guard")
    InteractiveShell.clear_instance()  # no IPython shell left behind for other tests
    assert not auto.installed() and not clears.installed()


def _originals():
    return (torch.optim.Optimizer.__init__, torch.optim.Optimizer.zero_grad, torch.nn.Module.zero_grad,
            len(_global_optimizer_post_hooks))


def test_load_guards_every_new_optimizer_and_unload_removes_every_hook(shell, capsys):
    before = _originals()
    shell.run_line_magic("load_ext", "utils.guard")
    assert "every optimizer created from now on is guarded" in capsys.readouterr().out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = shell.run_cell(LOOP)
    assert result.success
    assert [w.category for w in caught] == [StaleGradientWarning] * 2
    assert caught[0].filename.startswith("Cell In[") and caught[0].lineno == 6  # as IPython names cells
    finding = auto.guards()[0].findings[0]
    assert linecache.getline(finding.filename, finding.lineno).strip() == "optimizer.step()"
    model = shell.user_ns["model"]
    assert all(len(p._backward_hooks or {}) == 1 for p in model.parameters())
    shell.run_line_magic("unload_ext", "utils.guard")
    out = capsys.readouterr().out
    assert "1 optimizer guarded (SGD), 3 steps checked: 2 findings." in out
    assert "StaleGradientWarning x 2: the first in a notebook cell, step 2 of optimizer 1 (SGD)" in out
    assert _originals() == before
    assert all(not p._backward_hooks and not p._post_accumulate_grad_hooks for p in model.parameters())
    with warnings.catch_warnings(record=True) as caught:  # unloaded: the same loop is not watched
        warnings.simplefilter("always")
        shell.run_cell(LOOP)
    assert caught == []


def test_optimizers_created_before_loading_are_not_guarded(shell, capsys):
    shell.run_cell(LOOP.replace("for i in range(3)", "for i in range(0)"))
    shell.run_line_magic("load_ext", "utils.guard")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shell.run_cell("for i in range(3):\n    model(torch.ones(2, 3)).sum().backward()\n    optimizer.step()\n")
    assert caught == []
    shell.run_line_magic("unload_ext", "utils.guard")
    assert "no optimizer was created, so nothing was checked" in capsys.readouterr().out


def test_warnings_can_stop_the_cell_at_the_first_bad_step(shell, capsys):
    shell.run_line_magic("load_ext", "utils.guard")
    shell.run_cell("import warnings\nfrom utils.guard import ZeroGradWarning\n"
                   "warnings.simplefilter('error', ZeroGradWarning)")
    try:
        result = shell.run_cell(LOOP)
    finally:
        shell.run_cell("warnings.resetwarnings()")
    assert isinstance(result.error_in_exec, StaleGradientWarning)
    assert shell.user_ns["i"] == 1  # stopped inside the second step, before it changed anything


def test_an_explicit_guard_takes_over_reporting_from_the_automatic_one(shell, capsys):
    shell.run_line_magic("load_ext", "utils.guard")
    shell.run_cell(LOOP.replace("for i in range(3)", "for i in range(0)"))
    optimizer, model = shell.user_ns["optimizer"], shell.user_ns["model"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ZeroGradGuard(optimizer, model=model) as mine:
            for _ in range(3):
                model(torch.ones(2, 3)).sum().backward()
                optimizer.step()
    assert len(mine.findings) == 2 and len(caught) == 2  # reported once, by the explicit guard
    assert all(issubclass(w.category, ZeroGradWarning) for w in caught)
    shell.run_line_magic("unload_ext", "utils.guard")
    assert "3 steps checked: no findings" in capsys.readouterr().out


def test_loading_twice_is_harmless_and_reload_works(shell, capsys):
    shell.run_line_magic("load_ext", "utils.guard")
    shell.run_line_magic("load_ext", "utils.guard")  # IPython says it is already loaded
    assert "already loaded" in capsys.readouterr().out
    shell.run_line_magic("reload_ext", "utils.guard")
    assert auto.installed()
    shell.run_line_magic("unload_ext", "utils.guard")
    assert not auto.installed()


def test_the_extension_functions_called_twice_or_out_of_order_only_say_so(shell, capsys):
    from utils.guard import load_ipython_extension, unload_ipython_extension

    unload_ipython_extension(shell)  # never loaded
    assert capsys.readouterr().out == "utils.guard: nothing to unload (%load_ext utils.guard was not run).\n"
    load_ipython_extension(shell)
    load_ipython_extension(shell)  # a second time, without IPython's own check: no error
    out = capsys.readouterr().out
    assert "already guarded; %unload_ext utils.guard first" in out
    unload_ipython_extension(shell)
    assert not auto.installed()
    shell.run_line_magic("unload_ext", "utils.guard")  # IPython's own answer, nothing raised
    assert "not loaded" in capsys.readouterr().out
