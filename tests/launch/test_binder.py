"""Binder reads binder/ as intended: Python 3.11, CPU-only PyTorch, utils installed by postBuild,
the learners' copies made and JupyterLab's course settings written, the badge opening 01's copy."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from utils import workbooks

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"


def dockerfile() -> str:
    """The Dockerfile repo2docker would build, without Docker (`--no-build --debug`)."""
    r2d = shutil.which("jupyter-repo2docker", path=str(Path(sys.executable).parent))
    result = subprocess.run([r2d, "--no-build", "--debug", str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout + result.stderr


def test_repo2docker_reads_python_requirements_and_postbuild():
    text = dockerfile()
    assert "Building conda environment for python=3.11" in text
    assert re.search(r'pip install --no-cache-dir -r "binder/requirements.txt"', text)
    assert "RUN ./binder/postBuild" in text
    assert "environment.yml" not in text, "a binder/ folder must hold the whole configuration"


def test_binder_pins_the_cpu_build_and_matches_the_course_pins():
    binder = [line for line in (BINDER / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in binder
    assert "torch==2.13.0+cpu" in binder
    course = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    for pin in course:
        expected = "torch==2.13.0+cpu" if pin.startswith("torch==") else pin
        if not pin.startswith("hypothesis=="):  # test-only: learners on Binder do not need it
            assert expected in binder, f"binder/requirements.txt lacks {expected}"
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"


def test_postbuild_makes_utils_importable_like_make_does():
    script = (BINDER / "postBuild").read_text()
    assert (BINDER / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
    assert "pip install --no-deps --no-build-isolation -e ." in script
    assert "pip install --quiet --no-deps --no-build-isolation -e ." in (ROOT / "Makefile").read_text()


def test_postbuild_makes_the_learners_copies_and_the_lab_settings(tmp_path):
    """Run postBuild's own commands (after its pip line) on a copy of the course, with JupyterLab's
    application folder in a temporary place: the copies and the settings appear."""
    course = tmp_path / "course"
    shutil.copytree(ROOT / "notebooks", course / "notebooks")
    shutil.copytree(ROOT / "utils", course / "utils", ignore=shutil.ignore_patterns("__pycache__"))
    lines = [line for line in (BINDER / "postBuild").read_text().splitlines()
             if line.startswith("python -m utils.workbooks")]
    assert [line.split()[3] for line in lines] == ["make", "lab-settings"]
    env = dict(os.environ, JUPYTERLAB_DIR=str(tmp_path / "lab"))
    for line in lines:
        subprocess.run([sys.executable] + line.split()[1:], cwd=course, env=env, check=True, capture_output=True)
    for lesson in workbooks.lessons(ROOT):
        assert (course / "workbooks" / lesson.name).is_file()
    settings = json.loads((tmp_path / "lab" / "settings" / "overrides.d" / "zero-grad-course.json").read_text())
    assert settings == workbooks.LAB_SETTINGS


def test_readme_badge_opens_jupyterlab_at_the_copy_of_notebook_01():
    readme = (ROOT / "README.md").read_text()
    badge = re.search(r"\[!\[Binder\]\(https://mybinder.org/badge_logo.svg\)\]\((?P<url>[^)]+)\)", readme)
    assert badge, "README needs the Binder badge"
    url = badge["url"]
    assert url.startswith("https://mybinder.org/v2/gh/")
    path = url.split("urlpath=lab/tree/", 1)[1]
    first = workbooks.lessons(ROOT)[0].name
    assert path == f"{workbooks.FOLDER}/{first}", f"the badge opens {path}, not the learner's copy of {first}"
