"""`python -m utils.guard script.py [args...]`: an unchanged script, every optimizer guarded.

Most runs call the command line's `main()` in this process (fast); two run the real
`python -m utils.guard` in a new process, to prove the entry point and the exit status.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from utils.guard import auto, clears
from utils.guard.cli import FOUND, main

ROOT = Path(__file__).resolve().parents[1]

HEADER = """\
import sys
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
X, y = torch.randn(16, 3), torch.randn(16, 1)
"""

CORRECT = HEADER + """\
for epoch in range(3):
    for i in range(0, 16, 4):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X[i:i + 4]), y[i:i + 4])
        loss.backward()
        optimizer.step()
print("final loss", round(loss.item(), 4), "args", sys.argv[1:], "name", __name__)
"""

FORGOT = HEADER + """\
for i in range(0, 16, 4):
    loss = torch.nn.functional.mse_loss(model(X[i:i + 4]), y[i:i + 4])
    loss.backward()
    optimizer.step()  # line 11
print("trained")
"""


def write(folder: Path, name: str, text: str, header: str = "") -> Path:
    path = folder / name
    path.write_text(header + textwrap.dedent(text))
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert not auto.installed() and not clears.installed()  # nothing left behind


def test_a_correct_script_runs_as_usual_and_exits_0(in_tmp, capsys):
    write(in_tmp, "train.py", CORRECT)
    assert main(["train.py", "--lr", "0.1"]) == 0
    out, err = capsys.readouterr()
    assert "args ['--lr', '0.1'] name __main__" in out  # its own output and arguments, as if run directly
    assert err == "utils.guard: 1 optimizer guarded (SGD), 12 steps checked: no findings.\n"


def test_a_buggy_script_is_reported_with_its_file_and_line_and_exits_3(in_tmp, capsys):
    write(in_tmp, "train.py", FORGOT)
    assert main(["train.py"]) == FOUND == 3
    out, err = capsys.readouterr()
    assert out == "trained\n"
    lines = err.splitlines()
    assert lines[0].startswith("utils.guard: train.py:11: StaleGradientWarning: step 2: optimizer.step() is "
                               "about to use .grad that still holds gradients that step 1 already used, "
                               "in 4 of 4 parameters (0.weight, 0.bias, 2.weight, 2.bias).")
    assert len([line for line in lines if "StaleGradientWarning: step" in line]) == 3  # as they happen
    assert "the summary at the end counts them" in lines[2]
    assert lines[-2:] == ["utils.guard: 1 optimizer guarded (SGD), 4 steps checked: 3 findings.",
                          "  StaleGradientWarning x 3: the first at train.py:11, step 2 of optimizer 1 (SGD)"]
    assert "/tmp/" not in err and str(in_tmp) not in err  # no machine paths


def test_options_gradient_accumulation_steps_and_max_warnings(in_tmp, capsys):
    write(in_tmp, "leak.py", header=HEADER, text="""\
        gradient_accumulation_steps = 3
        for epoch in range(2):
            for i in range(4):  # 4 micro-batches per epoch: one is left over
                loss = torch.nn.functional.mse_loss(model(X[4 * i:4 * i + 4]), y[4 * i:4 * i + 4])
                (loss / gradient_accumulation_steps).backward()
                if (i + 1) % gradient_accumulation_steps == 0:
                    optimizer.step()
                    optimizer.zero_grad()
        """)
    assert main(["leak.py"]) == 0  # without the option, windows are not counted
    assert main(["--gradient-accumulation-steps", "3", "--max-warnings", "0", "leak.py"]) == FOUND
    err = capsys.readouterr().err
    assert "StaleGradientWarning: step" not in err  # none printed (--max-warnings 0) ...
    assert "StaleGradientWarning x 1: the first at leak.py:14, step 2" in err  # ... but counted


def test_the_scripts_own_exit_status_is_kept(in_tmp, capsys):
    write(in_tmp, "fails.py", CORRECT + "sys.exit(5)\n")
    assert main(["fails.py"]) == 5
    write(in_tmp, "message.py", FORGOT + "sys.exit('stopping early')\n")
    assert main(["message.py"]) == 1  # sys.exit("text") prints the text and exits 1, as Python does
    err = capsys.readouterr().err
    assert "stopping early" in err and "StaleGradientWarning x 3" in err
    assert "the script exited with status 1; that status is kept." in err
    write(in_tmp, "fine.py", CORRECT + "sys.exit(0)\n")
    assert main(["fine.py"]) == 0


def test_a_script_that_raises_gets_its_traceback_and_the_summary(in_tmp, capsys):
    write(in_tmp, "raises.py", FORGOT + "1 / 0\n")
    assert main(["raises.py"]) == 1
    err = capsys.readouterr().err
    assert 'File "' in err and "raises.py\", line 13, in <module>" in err
    assert "ZeroDivisionError: division by zero" in err
    assert "runpy" not in err and "utils/guard" not in err  # the script's frames only
    assert "StaleGradientWarning x 3" in err and "the script raised ZeroDivisionError with status 1" in err
    write(in_tmp, "broken.py", "for i in range(3)\n    pass\n")
    assert main(["broken.py"]) == 1
    err = capsys.readouterr().err
    assert "SyntaxError" in err and "could not be compiled" in err
    assert "no optimizer was created, so nothing was checked" in err


@pytest.mark.parametrize("argv, words", [
    (["missing.py"], "no such file: 'missing.py' (give the path of your training script"),
    (["."], "'.' is a folder; give the training script inside it"),
])
def test_bad_paths_get_a_clear_message_and_status_2(in_tmp, capsys, argv, words):
    assert main(argv) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    ([], "give the training script to run"),
    (["--gradient-accumulation-steps", "0", "train.py"], "--gradient-accumulation-steps must be at least 1"),
    (["--gradient-accumulation-steps", "two", "train.py"], "invalid int value: 'two'"),
    (["--max-warnings", "-1", "train.py"], "--max-warnings must be 0 or more"),
])
def test_bad_options_get_usage_and_status_2(in_tmp, capsys, argv, words):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m utils.guard") and words in err


def test_the_script_sees_its_own_folder_first_on_sys_path(in_tmp, capsys):
    folder = in_tmp / "project"
    folder.mkdir()
    write(folder, "helpers.py", "VALUE = 42\n")
    write(folder, "train.py", "import sys\nimport helpers\nprint(helpers.VALUE, sys.argv[0])\n")
    before = sys.path[:]
    assert main(["project/train.py"]) == 0
    assert "42 project/train.py" in capsys.readouterr().out
    assert sys.path == before


def test_gans_two_optimizers_are_both_guarded_and_named(in_tmp, capsys):
    write(in_tmp, "gan.py", """\
        import torch
        torch.manual_seed(0)
        netG, netD = torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)
        optimizerG = torch.optim.Adam(netG.parameters(), lr=0.01)
        optimizerD = torch.optim.Adam(netD.parameters(), lr=0.01)
        softplus = torch.nn.functional.softplus
        for i in range(4):
            real, noise = torch.randn(8, 3), torch.randn(8, 2)
            softplus(-netD(real)).mean().backward()  # netD.zero_grad() forgotten
            fake = netG(noise)
            softplus(netD(fake.detach())).mean().backward()
            optimizerD.step()
            netG.zero_grad()
            softplus(-netD(fake)).mean().backward()
            optimizerG.step()
        """)
    assert main(["gan.py"]) == FOUND
    err = capsys.readouterr().err
    assert "gan.py:12: StaleGradientWarning: step 2:" in err and "(weight, bias)" in err
    assert "2 optimizers guarded (2 Adam), 8 steps checked" in err
    assert "of optimizer 2 (Adam)" in err  # optimizerD, the second one created


def run_module(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "utils.guard", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)


def test_python_dash_m_utils_guard_end_to_end(tmp_path):
    write(tmp_path, "train.py", FORGOT)
    write(tmp_path, "ok.py", CORRECT)
    found = run_module(["train.py"], tmp_path)
    assert found.returncode == 3, found.stderr
    assert found.stdout == "trained\n"
    assert "train.py:11: StaleGradientWarning: step 2:" in found.stderr
    clean = run_module(["ok.py", "x"], tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert "args ['x'] name __main__" in clean.stdout and "no findings" in clean.stderr


def test_nothing_of_the_guard_outlives_a_run(in_tmp, capsys):
    init, zero_grad, module_zero_grad = (torch.optim.Optimizer.__init__, torch.optim.Optimizer.zero_grad,
                                         torch.nn.Module.zero_grad)
    write(in_tmp, "train.py", FORGOT + "raise KeyboardInterrupt\n")
    assert main(["train.py"]) == 130
    assert (torch.optim.Optimizer.__init__, torch.optim.Optimizer.zero_grad, torch.nn.Module.zero_grad) == (
        init, zero_grad, module_zero_grad)
    assert "was interrupted" in capsys.readouterr().err


def test_inside_a_kernel_with_the_extension_loaded_it_says_to_unload_first(in_tmp, capsys):
    write(in_tmp, "train.py", CORRECT)
    auto.install()
    try:
        assert main(["train.py"]) == 2
    finally:
        auto.uninstall()
    assert "already guarded here (by %load_ext utils.guard?): run %unload_ext utils.guard first" in (
        capsys.readouterr().err)


def test_an_optimizer_the_guard_cannot_take_runs_unchecked(in_tmp, capsys, monkeypatch):
    import utils.guard.checker as checker

    def refuse(*args, **kwargs):
        raise RuntimeError("no names today")

    monkeypatch.setattr(checker, "find_names", refuse)
    write(in_tmp, "train.py", CORRECT)
    assert main(["train.py"]) == 0  # the script ran to its end
    out, err = capsys.readouterr()
    assert "final loss" in out
    assert "utils.guard: could not guard a SGD (RuntimeError: no names today); it runs unchecked." in err


# -- review: scripts as real projects run them -------------------------------------------------------------
def test_a_module_runs_as_python_dash_m_runs_it_relative_imports_included(in_tmp, capsys):
    package = in_tmp / "review_project"
    package.mkdir()
    write(package, "__init__.py", "")
    write(package, "settings.py", "LR = 0.1\n")
    write(package, "train.py", FORGOT.replace("lr=0.1", "lr=LR").replace(
        "import torch\n", "import torch\n\nfrom .settings import LR\n", 1).replace(
        'print("trained")', 'print("trained", __name__, sys.argv[1:], sys.argv[0].endswith("train.py"))'))
    before = sys.path[:]
    assert main(["--max-warnings", "1", "-m", "review_project.train", "--epochs", "2"]) == FOUND
    out, err = capsys.readouterr()
    assert out == "trained __main__ ['--epochs', '2'] True\n"  # as python -m review_project.train runs it
    assert "train.py:13: StaleGradientWarning: step 2:" in err  # two lines more: the import
    assert err.count("StaleGradientWarning: step") == 1  # --max-warnings 1 was the guard's, not the module's
    assert sys.path == before


@pytest.mark.parametrize("argv, words", [
    (["-m", "no_such_module_here"], "no module named 'no_such_module_here': run from the folder where"),
    (["-m", "review_package"], "'review_package' is a package without __main__.py: give the module to run, "
                               "e.g. -m review_package.train"),
])
def test_a_module_that_cannot_be_run_gets_a_clear_message_and_status_2(in_tmp, capsys, argv, words):
    (in_tmp / "review_package").mkdir()
    write(in_tmp / "review_package", "__init__.py", "")
    assert main(argv) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["-m"], "-m needs a module name"),
    (["train.py", "-m", "x"], None),  # after the script, -m is the script's own argument
    (["-m", "x", "train.py"], None),  # after the module, train.py is the module's argument
])
def test_dash_m_is_parsed_as_python_parses_it(in_tmp, capsys, argv, words):
    write(in_tmp, "train.py", "import sys\nprint(sys.argv[1:])\n")
    if words is None:
        status = main(argv)
        out, err = capsys.readouterr()
        if argv[0] == "train.py":
            assert status == 0 and out == "['-m', 'x']\n"
        else:
            assert status == 2 and "no module named 'x'" in err
        return
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and words in capsys.readouterr().err


def test_if_name_main_scripts_and_sys_exit_codes(in_tmp, capsys):
    write(in_tmp, "train.py", """\
        import sys
        import torch


        def train():
            model = torch.nn.Linear(3, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            for _ in range(3):
                optimizer.zero_grad()
                model(torch.ones(2, 3)).sum().backward()
                optimizer.step()


        if __name__ == "__main__":
            train()
            sys.exit(int(sys.argv[1]))
        """)
    assert main(["train.py", "0"]) == 0
    assert main(["train.py", "4"]) == 4
    err = capsys.readouterr().err
    assert err.count("1 optimizer guarded (SGD), 3 steps checked: no findings.") == 2
    assert "the script exited with status 4; that status is kept." in err


def test_a_script_reading_stdin_reads_it(in_tmp, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("3\n"))
    write(in_tmp, "train.py", "import sys\nprint('read', sys.stdin.readline().strip())\n")
    assert main(["train.py"]) == 0
    assert capsys.readouterr().out == "read 3\n"


def test_processes_the_script_starts_are_named_as_unguarded(tmp_path):
    """torch.multiprocessing.spawn's workers run in new processes: the summary says so, and how to guard them."""
    write(tmp_path, "spawn.py", """\
        import torch
        import torch.multiprocessing as mp


        def worker(rank):
            model = torch.nn.Linear(2, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            for _ in range(3):
                model(torch.ones(1, 2)).sum().backward()
                optimizer.step()  # zero_grad() forgotten, in the worker


        if __name__ == "__main__":
            mp.spawn(worker, nprocs=2)
            print("spawned")
        """)
    done = run_module(["spawn.py"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "spawned\n"
    assert "the script started 2 processes of its own; optimizers created in them are not guarded" in done.stderr
    assert "torchrun -m utils.guard train.py" in done.stderr
