"""`make handout`: built from a downloaded ZIP of the repository (no git), it holds what a class
needs and nothing that gives answers away; unpacked, it sets up and runs a lesson headless.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from utils import handout, workbooks

ROOT = Path(__file__).resolve().parents[1]
LESSONS = workbooks.lessons(ROOT)
NOT_IN_A_DOWNLOAD = (".git", ".venv", "build", "workbooks", "__pycache__", ".hypothesis", ".pytest_cache",
                     "*.egg-info", ".ipynb_checkpoints", ".whl")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The hand-out, built by `make handout` in a copy of the repository without .git or .venv,
    with a `git` on PATH that fails: the build must not need git."""
    tmp = tmp_path_factory.mktemp("handout")
    download = tmp / "zero-grad-course-main"
    shutil.copytree(ROOT, download, ignore=shutil.ignore_patterns(*NOT_IN_A_DOWNLOAD))
    fake = tmp / "bin"
    fake.mkdir()
    (fake / "git").write_text("#!/bin/sh\necho 'git is not there in a downloaded ZIP' >&2\nexit 1\n")
    (fake / "git").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", MAKEFLAGS="")
    result = subprocess.run(["make", "-C", str(download), "handout", f"PYTHON={sys.executable}"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    archive = download / "build" / "zero-grad-course-handout.zip"
    assert archive.is_file(), result.stdout
    unpacked = tmp / "class"
    with zipfile.ZipFile(archive) as z:
        z.extractall(unpacked)
    return unpacked / handout.NAME, result


def test_the_handout_holds_the_lessons_utils_and_a_way_to_start(built):
    top, _ = built
    names = {p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file()}
    for lesson in LESSONS:
        assert f"notebooks/{lesson.name}" in names
    for needed in ("README.md", "Makefile", "requirements.txt", "pyproject.toml", "utils/__init__.py",
                   "utils/exercises.py", "utils/workbooks.py", "utils/course.mplstyle"):
        assert needed in names, needed
    for rel in workbooks.companions(ROOT):
        assert f"notebooks/{rel.as_posix()}" in names


def test_no_solutions_no_tests_no_outputs(built):
    top, _ = built
    names = [p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file()]
    assert not [n for n in names if "solutions" in n or n.startswith(("tests/", "binder/", ".ci/"))]
    for path in (top / "notebooks").glob("*.ipynb"):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            text = "".join(cell["source"])
            assert "solutions/" not in text and "-solutions.ipynb" not in text, f"{path.name}: {text[:200]}"
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


def folds(path: Path) -> int:
    return sum(c["cell_type"] == "markdown" and "".join(c["source"]).startswith("<details>\n<summary>")
               for c in json.loads(path.read_text(encoding="utf-8"))["cells"])


def test_every_predict_answer_is_folded_in_the_handout(built):
    """The hand-out's lessons are the learner copies: each Predict's explanation is folded."""
    top, _ = built
    for lesson in LESSONS:
        questions = "".join("".join(c["source"]) for c in json.loads(lesson.read_text(encoding="utf-8"))["cells"]
                            if c["cell_type"] == "markdown").count("**Predict:**")
        assert folds(top / "notebooks" / lesson.name) == questions > 0, lesson.name


def test_the_solutions_sentence_is_rewritten_not_left_dangling(built):
    top, _ = built
    for lesson in LESSONS:
        original = json.loads(lesson.read_text(encoding="utf-8"))
        if not any("solutions/" in "".join(c["source"]) for c in original["cells"]):
            continue
        nb = json.loads((top / "notebooks" / lesson.name).read_text(encoding="utf-8"))
        cell = next("".join(c["source"]) for c in nb["cells"] if "Your teacher has the worked solutions" in
                    "".join(c["source"]))
        assert cell.count("reveal=True") == 1, f"{lesson.name} says how to reveal twice: {cell}"


def test_files_the_handout_leaves_out_are_named_as_the_repositorys(built):
    top, _ = built
    for path in (top / "notebooks").glob("*.ipynb"):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            text = "".join(cell["source"])
            if cell["cell_type"] == "markdown":
                for m in handout.NOT_SHIPPED.finditer(text):
                    assert text[m.end():].startswith(handout.ELSEWHERE), f"{path.name}: {m.group(0)}"


@pytest.mark.parametrize("text, expected", [
    ("the tests in `tests/test_a.py` run 17 loops", "the tests in `tests/test_a.py` in the course's repository run"),
    ("The claim tests (`tests/test_c.py`) train", "(`tests/test_c.py` in the course's repository) train"),
    ("`python tests/bench.py` times a step", "`python tests/bench.py` in the course's repository times"),
    ("see `utils/guard/` and `notebooks/x.py`", "see `utils/guard/` and `notebooks/x.py`"),
])
def test_the_rewrite_names_where_a_left_out_file_is(text, expected):
    assert expected in handout.rewrite(text)
    assert handout.rewrite(handout.rewrite(text)) == handout.rewrite(text)


@pytest.mark.parametrize("sentence", [
    "Each check prints a hint. Solutions are in\n`solutions/01-a-solutions.ipynb`; try first.",
    "Each check prints a hint. Solutions: [here](solutions/01-a-solutions.ipynb). Then go on.",
    "Stuck? The worked answers are in `solutions/01-a-solutions.ipynb`, after you try.",
])
def test_the_rewrite_handles_the_ways_a_lesson_points_at_solutions(sentence):
    text = handout.SOLUTIONS_SENTENCE.sub(handout.INSTEAD, sentence)
    assert "solutions/" not in text and handout.INSTEAD in text
    assert text.startswith(("Each check prints a hint.", "Stuck?")) or text.startswith(handout.INSTEAD)


def test_the_readme_says_how_to_start_and_lists_every_lesson(built):
    top, _ = built
    readme = (top / "README.md").read_text(encoding="utf-8")
    assert "make lab" in readme and "workbooks/" in readme and "reveal=True" in readme
    assert "Python 3.11 or newer" in readme  # matplotlib and scikit-learn's pins need it
    assert "python -m utils.workbooks lab" in readme.replace(".venv/bin/python", "python")
    for lesson in LESSONS:
        assert handout.title(lesson) in readme and f"workbooks/{lesson.name}" in readme
    assert "solutions/" not in readme


def test_the_build_names_files_the_handout_lacks(built):
    _, result = built
    for line in result.stderr.splitlines():
        if line.startswith("warning:"):
            assert re.search(r"mentions (\.\./)?(tests|binder|build|\.ci)/", line), line


@pytest.fixture(scope="module")
def learner_env(built, tmp_path_factory):
    """The learner's set-up (`make setup` of the hand-out) without a network: the new .venv
    sees this environment's packages through a .pth file, so pip finds every pin installed."""
    top, _ = built
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(top / ".venv")], check=True)
    purelib = subprocess.run([str(top / ".venv" / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "course-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = dict(os.environ, PIP_NO_INDEX="1", MAKEFLAGS="", PATH=f"{top / '.venv' / 'bin'}:{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["make", "-C", str(top), "setup", f"PYTHON={sys.executable}"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return top, env


def test_setup_makes_utils_importable_from_the_handout_itself(learner_env):
    top, env = learner_env
    subprocess.run(["make", "-C", str(top), "workbooks"], check=True, env=env, capture_output=True)
    out = subprocess.run([str(top / ".venv" / "bin" / "python"), "-c", "import utils; print(utils.__file__)"],
                         cwd=top / "workbooks", capture_output=True, text=True, check=True, env=env).stdout
    assert Path(out.strip()).resolve().is_relative_to(top.resolve())
    for lesson in LESSONS:  # the learner's copies of the folded lessons are folded once, not twice
        copy, shipped = top / "workbooks" / lesson.name, top / "notebooks" / lesson.name
        folded = [[c["source"] for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
                   if "".join(c["source"]).startswith("<details>")] for path in (copy, shipped)]
        assert folded[0] == folded[1] and len(folded[0]) == folds(shipped) > 0, lesson.name


def test_a_lesson_runs_headless_in_the_learners_copy(learner_env, tmp_path):
    top, env = learner_env
    subprocess.run(["make", "-C", str(top), "workbooks"], check=True, env=env, capture_output=True)
    copy = top / "workbooks" / LESSONS[0].name
    result = subprocess.run([str(top / ".venv" / "bin" / "python"), "-m", "nbconvert", "--to", "notebook",
                             "--execute", str(copy), "--output-dir", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    nb = json.loads((tmp_path / copy.name).read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] for c in code), "every cell ran"
    for cell in code:
        if any(o["output_type"] == "error" for o in cell["outputs"]):
            assert "raises-exception" in cell["metadata"].get("tags", []), "".join(cell["source"])[:80]


def test_the_handout_makefile_refuses_a_python_too_old_for_the_pins(built, tmp_path):
    top, _ = built
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo Python 3.10.12; exit 0; fi\nexit 1\n')
    fake.chmod(0o755)
    result = subprocess.run(["make", "-C", str(top), "-W", "requirements.txt", "setup", f"PYTHON={fake}",
                             "VENV=never-made"], capture_output=True, text=True, env=dict(os.environ, MAKEFLAGS=""))
    assert result.returncode != 0 and "needs Python 3.11 or newer" in result.stderr, result.stderr
    assert "Python 3.10.12" in result.stderr and not (top / "never-made").exists()
