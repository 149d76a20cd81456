"""The set-up: utils is importable from the repo, its style sheet loads, importing changes nothing."""

import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

import utils

ROOT = Path(__file__).resolve().parents[1]


def test_utils_is_imported_from_this_repository():
    assert Path(utils.__file__).resolve().is_relative_to(ROOT / "utils")


def test_utils_imports_from_another_folder(tmp_path):
    """nbval starts kernels in the notebook's folder: utils must not depend on the cwd."""
    code = "import utils, utils.ex01; print(utils.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()).resolve().is_relative_to(ROOT)


def test_importing_utils_changes_no_rcparams_and_no_seed():
    code = (
        "import matplotlib, torch; before = dict(matplotlib.rcParams); state = torch.random.get_rng_state()\n"
        "import utils, utils.device, utils.data, utils.plotting, utils.printing, utils.exercises, utils.ex01\n"
        "import utils.workbooks, utils.handout, utils.tracebacks, utils.answers\n"
        "assert dict(matplotlib.rcParams) == before, 'rcParams changed on import'\n"
        "assert torch.equal(torch.random.get_rng_state(), state), 'global seed changed on import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_course_style_is_projector_sized_and_colour_blind_safe():
    with plt.style.context("utils.course"):
        rc = matplotlib.rcParams
        assert rc["font.size"] >= 14 and rc["lines.linewidth"] >= 2.5 and rc["axes.grid"]
        assert tuple(rc["figure.figsize"]) == (6.4, 4.0)
        cycle = list(rc["axes.prop_cycle"])
        assert cycle[0]["color"].lower().lstrip("#") == "3f90da"  # Petroff's palette
        styles = [c["linestyle"] for c in cycle]
        assert len(set(map(str, styles))) == len(styles), "each colour needs its own line style"


def test_requirements_are_exact_pins_with_a_reason_each():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pins = [(i, line) for i, line in enumerate(lines) if line.strip() and not line.startswith("#")]
    assert pins
    for i, line in pins:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.+]*", line.strip()), line
        assert lines[i - 1].startswith("#"), f"{line} needs a comment above it saying why it is there"


def test_make_refuses_a_python_too_old_for_the_pins(tmp_path):
    """matplotlib 3.11 and scikit-learn 1.9 need Python 3.11: say so, instead of pip's 'no matching
    distribution'."""
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo Python 3.10.12; exit 0; fi\nexit 1\n')
    fake.chmod(0o755)
    env = dict(__import__("os").environ, MAKEFLAGS="")
    result = subprocess.run(["make", "-C", str(ROOT), "setup", f"PYTHON={fake}", f"VENV={tmp_path / 'venv'}"],
                            capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "needs Python 3.11 or newer" in result.stderr, result.stderr
    assert not (tmp_path / "venv").exists()
    from importlib.metadata import metadata

    needs = {name: metadata(name)["Requires-Python"] for name in ("matplotlib", "scikit-learn")}
    assert ">=3.11" in needs.values(), f"the pins no longer need 3.11 ({needs}): lower the Makefile's check"
