"""utils.workbooks: learner copies without outputs and with every Predict answer folded, never
overwritten once worked in; `make lab`.

Each test works on a copy of the course in a temporary folder, never on the repository's own
workbooks/.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils import workbooks

ROOT = Path(__file__).resolve().parents[1]
LESSONS = workbooks.lessons(ROOT)
PREDICT = "**Predict:**"


@pytest.fixture
def course(tmp_path):
    """A copy of the course's notebooks (and a companion file for a lesson, like 09's script)."""
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    (tmp_path / "notebooks" / "01-helper.py").write_text("VALUE = 1\n")
    (tmp_path / "notebooks" / "data").mkdir(exist_ok=True)
    (tmp_path / "notebooks" / "data" / "table.csv").write_text("a,b\n1,2\n")
    return tmp_path


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def first_lesson(course: Path) -> Path:
    return workbooks.lessons(course)[0]


def work_in(path: Path) -> None:
    """What a learner does: run a cell (an output and a count appear) and edit a source."""
    nb = load(path)
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["execution_count"] = 1
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["mine\n"]}]
    code["source"] = ["# my note\n"] + code["source"]
    path.write_text(json.dumps(nb))


def change_lesson(path: Path) -> None:
    nb = load(path)
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": ["A new paragraph."]})
    path.write_text(json.dumps(nb))


def test_there_are_lessons():
    assert LESSONS and all(p.name[:2].isdigit() for p in LESSONS)
    assert not any("solutions" in p.parts for p in LESSONS)


def text(cell: dict) -> str:
    return "".join(cell["source"])


def answer_in(cell: dict) -> str | None:
    """The Markdown folded in a copy's cell, read from its HTML independently of utils.workbooks,
    or None if the cell is not folded."""
    m = re.fullmatch(r"<details>\n<summary>([^<\n]+)</summary>\n\n(.*)\n\n</details>", text(cell), re.S)
    return m.group(2) if cell["cell_type"] == "markdown" and m else None


def align(original: list[dict], copy: list[dict]) -> list[tuple[dict, list[dict]]]:
    """Pair each cell of a lesson with its cell(s) in the copy: the same cell, a folded answer,
    or a folded answer and the rest of its cell split off after it (a heading, the next
    Predict). Fails where the copy holds anything else."""
    def text(cell: dict) -> str:  # links out of workbooks/ to solutions/ are repointed
        return re.sub(r"\.\./notebooks/(?=solutions/)", "", "".join(cell["source"]))

    pairs, m = [], 0
    for cell in original:
        assert m < len(copy), f"the copy ends before the lesson's cell {text(cell)[:60]!r}"
        answer = answer_in(copy[m])
        if answer is None or text(cell) == text(copy[m]):
            pairs.append((cell, copy[m:m + 1]))
            m += 1
        elif text(cell).rstrip() == answer:
            pairs.append((cell, copy[m:m + 1]))
            m += 1
        else:
            assert text(cell).startswith(answer), f"a fold holds what its cell did not: {answer[:80]!r}"
            rest = text(copy[m + 1]) if m + 1 < len(copy) else ""
            gap = text(cell)[len(answer):len(text(cell)) - len(rest)]
            assert rest and text(cell).endswith(rest) and len(answer) + len(rest) <= len(text(cell)) \
                and not gap.strip(), f"the rest of {answer[:60]!r} is lost"
            pairs.append((cell, copy[m:m + 2]))
            m += 2
    assert m == len(copy), f"the copy has cells its lesson has not: {[text(c)[:60] for c in copy[m:]]}"
    return pairs


def test_every_lesson_gets_a_copy_without_outputs_tags_kept(course):
    """Nothing else changes: every cell is there, in order, with its type, tags and id; code
    loses only its outputs, counts and nbval's markers; Markdown only its folds."""
    report = workbooks.make(course, quiet=True)
    for lesson in workbooks.lessons(course):
        assert report[lesson.name] == "made"
        original, copy = load(lesson), load(course / "workbooks" / lesson.name)
        ids = [c["id"] for c in copy["cells"]]
        assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i) for i in ids)
        for a, bs in align(original["cells"], copy["cells"]):
            b = bs[0]
            assert a["cell_type"] == b["cell_type"] and a.get("id") == b.get("id")
            assert a.get("metadata", {}).get("tags") == b.get("metadata", {}).get("tags")
            if b["cell_type"] == "code":
                assert b["outputs"] == [] and b["execution_count"] is None
                kept = [line for line in text(a).splitlines() if not line.startswith("# NBVAL_")]
                assert text(b).splitlines() == kept
            elif answer_in(b) is None:
                assert text(b) == text(a).replace("solutions/", "../notebooks/solutions/")
            for extra in bs[1:]:
                assert extra["cell_type"] == "markdown" and extra["metadata"] == {}
        assert copy["metadata"].get("kernelspec") == original["metadata"].get("kernelspec")


def unfenced(markdown: str) -> str:
    """Markdown without its fenced code blocks (an unclosed fence runs to the end)."""
    return re.sub(r"^```.*?(^```[^\n]*$|\Z)", "", markdown, flags=re.M | re.S)


def predict_pairs(cells: list[dict]) -> list[tuple[int, int]]:
    """(index of a Markdown cell holding a Predict question, index of the Markdown cell after
    the code cells that follow it). A fold is no question (its "**Predict:**" is in fenced code)."""
    pairs = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "markdown" and PREDICT in unfenced(text(cell)) and answer_in(cell) is None:
            j = i + 1
            while j < len(cells) and cells[j]["cell_type"] == "code":
                j += 1
            if j > i + 1 and j < len(cells):
                pairs.append((i, j))
    return pairs


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.name[:2] for p in LESSONS])
def test_every_predict_answer_is_folded_in_the_copy(lesson):
    """Each "**Predict:**" of the lesson is followed, in the copy, by its code and then a fold
    that says how to open it and holds the explanation, nothing of the next section."""
    original = load(lesson)["cells"]
    copy = workbooks.cleared(load(lesson))["cells"]
    questions = sum(text(c).count(PREDICT) for c in original if c["cell_type"] == "markdown")
    pairs = predict_pairs(copy)
    assert questions >= 3 and len(pairs) == questions, f"{len(pairs)} pairs for {questions} questions"
    for i, j in pairs:
        answer = answer_in(copy[j])
        assert answer is not None, f"not folded: {text(copy[j])[:80]!r}"
        assert not any(re.match(r" {0,3}#{1,6}\s", line) for line in answer.splitlines()), answer[:80]
        assert PREDICT not in answer and answer.strip()
        summary = re.search(r"<summary>(.*)</summary>", text(copy[j])).group(1)
        assert summary == ("Run the cell above, then click here to read what it shows." if j - i == 2 else
                           "Run the cells above, then click here to read what they show.")
    folds = [c for c in copy if answer_in(c) is not None]
    assert len(folds) == len(pairs), "a fold where no Predict asked"


def test_the_fold_is_split_so_that_the_next_heading_and_question_stay_visible():
    """Lesson 02, section 1: the answer's cell goes on with section 2's heading; 05 with a ###
    heading; 06 with the next question in the same cell, no heading between."""
    cases = [("02", "With `zero_grad()` the loss falls", "## 2. A two-line diagnostic"),
             ("05", "Clipped on every step", "### The learning-rate scheduler"),
             ("06", "`unscale_` records, per optimizer", "And `scaler.update()`? **Predict:**")]
    for number, answer_start, rest_start in cases:
        lesson = next(p for p in LESSONS if p.name.startswith(number))
        copy = workbooks.cleared(load(lesson))["cells"]
        k = next(k for k, c in enumerate(copy) if (answer_in(c) or "").startswith(answer_start))
        assert text(copy[k + 1]).startswith(rest_start) and answer_in(copy[k + 1]) is None
        assert rest_start.split()[0] not in answer_in(copy[k])
    splits = 0
    for lesson in LESSONS:
        for a, bs in align(load(lesson)["cells"], workbooks.cleared(load(lesson))["cells"]):
            if len(bs) == 2:
                splits += 1
                first = text(bs[1]).split("\n\n")[0]
                assert re.match(r"#{2,3} ", first) or PREDICT in first, first[:80]
    assert splits >= len(cases)


def test_folding_twice_changes_nothing():
    """`make handout` ships folded lessons, and a learner's `make workbooks` copies them again."""
    for lesson in LESSONS:
        once = workbooks.cleared(load(lesson))
        assert workbooks.cleared(json.loads(json.dumps(once)), depth="") == once


markdown_line = st.one_of(
    st.sampled_from(["", "", "## A heading", "### A sub-heading", "**Predict:** what now?",
                     "Why: it adds.", "```", "# in a fence?", "- a list item"]),
    st.text(alphabet="ab #*`$\n", max_size=12))
cell = st.one_of(
    st.builds(lambda lines: {"cell_type": "markdown", "metadata": {}, "source": "\n".join(lines)},
              st.lists(markdown_line, max_size=6)),
    st.builds(lambda: {"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [],
                       "execution_count": None}))


@settings(max_examples=1000, deadline=None)
@given(st.lists(cell, max_size=10))
def test_folding_any_notebook_loses_nothing_and_is_stable(cells):
    """Whatever the Markdown: every fold follows a Predict's code, unfolded with what was split
    off it gives the cell back, and folding again changes nothing."""
    for k, c in enumerate(cells):
        c["id"] = f"c{k}-next" if k % 3 == 2 else f"c{k}"  # ids a split could want
    original = json.loads(json.dumps({"cells": cells}))
    once = workbooks.hide_answers(json.loads(json.dumps(original)))
    align(original["cells"], once["cells"])
    for i, j in predict_pairs(once["cells"]):
        assert answer_in(once["cells"][j]) is not None or not workbooks.split_answer(text(once["cells"][j]))[0]
    assert workbooks.hide_answers(json.loads(json.dumps(once))) == once
    ids = [c["id"] for c in once["cells"]]
    assert len(set(ids)) == len(ids)


def test_predict_cells_show_nothing_before_they_run(course):
    workbooks.make(course, quiet=True)
    for lesson in workbooks.lessons(course):
        cells = load(course / "workbooks" / lesson.name)["cells"]
        for i, cell in enumerate(cells[:-1]):
            if cell["cell_type"] == "markdown" and "Predict" in "".join(cell["source"]):
                following = next(c for c in cells[i + 1:] if c["cell_type"] == "code")
                assert following["outputs"] == [], f"{lesson.name}: a Predict answer is on screen"


def test_files_beside_the_lessons_come_along_and_solutions_do_not(course):
    workbooks.make(course, quiet=True)
    assert (course / "workbooks" / "01-helper.py").read_text() == "VALUE = 1\n"
    assert (course / "workbooks" / "data" / "table.csv").exists()
    assert not (course / "workbooks" / "solutions").exists()


def test_links_out_of_the_copies_folder_point_back_at_notebooks(course):
    lesson = first_lesson(course)
    nb = load(lesson)
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": [
        "Solutions are in `solutions/x-solutions.ipynb`; see [the next lesson](02-next.ipynb), "
        "[solutions](solutions/x-solutions.ipynb#top), [docs](https://pytorch.org/docs), "
        "[the helper](01-helper.py) and [a section](#setup)."]})
    lesson.write_text(json.dumps(nb))
    workbooks.make(course, quiet=True)
    text = "".join(load(course / "workbooks" / lesson.name)["cells"][-1]["source"])
    assert "`../notebooks/solutions/x-solutions.ipynb`" in text
    assert "(../notebooks/solutions/x-solutions.ipynb#top)" in text
    for kept in ("(02-next.ipynb)", "(https://pytorch.org/docs)", "(01-helper.py)", "(#setup)"):
        assert kept in text


def test_a_copy_worked_in_is_never_overwritten(course):
    workbooks.make(course, quiet=True)
    lesson = first_lesson(course)
    copy = course / "workbooks" / lesson.name
    work_in(copy)
    mine = copy.read_bytes()
    change_lesson(lesson)
    report = workbooks.make(course, quiet=True)
    assert copy.read_bytes() == mine
    assert report[lesson.name].startswith("kept: you have worked in it; its lesson has changed since")
    helper = course / "workbooks" / "01-helper.py"
    helper.write_text("VALUE = 2  # mine\n")
    (course / "notebooks" / "01-helper.py").write_text("VALUE = 3\n")
    workbooks.make(course, quiet=True)
    assert helper.read_text() == "VALUE = 2  # mine\n"


def test_an_untouched_copy_follows_its_lesson(course):
    workbooks.make(course, quiet=True)
    lesson = first_lesson(course)
    copy = course / "workbooks" / lesson.name
    # JupyterLab opening and saving a copy (another layout, cell ids) is not working in it.
    nb = load(copy)
    for i, cell in enumerate(nb["cells"]):
        cell["id"] = f"cell-{i}"
    copy.write_text(json.dumps(nb, indent=2))
    assert workbooks.make(course, quiet=True)[lesson.name] == "up to date"
    change_lesson(lesson)
    assert workbooks.make(course, quiet=True)[lesson.name] == "updated (you had not changed it)"
    assert "A new paragraph." in "".join(load(copy)["cells"][-1]["source"])


def test_opening_the_folds_and_saving_leaves_a_copy_untouched(course):
    """A fold opens in the browser only: what JupyterLab saves after a learner read every answer
    (cells re-rendered, metadata it adds) is not work, and the copy still follows its lesson."""
    workbooks.make(course, quiet=True)
    lesson = first_lesson(course)
    copy = course / "workbooks" / lesson.name
    nb = load(copy)
    for c in nb["cells"]:
        if answer_in(c) is not None:
            c["metadata"]["jupyter"] = {"source_hidden": False}
            c["source"] = text(c)  # a string, as some front ends write it
    copy.write_text(json.dumps(nb, indent=2))
    assert workbooks.make(course, quiet=True)[lesson.name] == "up to date"
    change_lesson(lesson)
    assert workbooks.make(course, quiet=True)[lesson.name] == "updated (you had not changed it)"


def test_an_untouched_copy_made_before_folding_gets_the_folds(course):
    """A learner who ran `make workbooks` before answers were folded, and has not worked in a
    copy since, gets the folded copy; a copy worked in stays as it is."""
    folder = course / "workbooks"
    folder.mkdir()
    record = {}
    for lesson in workbooks.lessons(course)[:2]:
        old = workbooks.cleared(load(lesson))
        for c in old["cells"]:  # unfold, as copies were made before
            if (answer := answer_in(c)) is not None:
                c["source"] = answer
        workbooks.write_notebook(old, folder / lesson.name)
        record[lesson.name] = {"from": f"notebooks/{lesson.name}", "fingerprint": workbooks.fingerprint(old)}
    (folder / workbooks.RECORD).write_text(json.dumps(record))
    a, b = workbooks.lessons(course)[:2]
    work_in(folder / b.name)
    report = workbooks.make(course, quiet=True)
    assert report[a.name] == "updated (you had not changed it)"
    assert any(answer_in(c) is not None for c in load(folder / a.name)["cells"])
    assert report[b.name].startswith("kept: you have worked in it")


def test_a_copy_without_a_record_counts_as_worked_in_unless_it_is_fresh(course):
    workbooks.make(course, quiet=True)
    lesson = first_lesson(course)
    (course / "workbooks" / workbooks.RECORD).unlink()
    assert workbooks.make(course, quiet=True)[lesson.name] == "up to date"
    (course / "workbooks" / workbooks.RECORD).unlink()
    work_in(course / "workbooks" / lesson.name)
    assert workbooks.make(course, quiet=True)[lesson.name].startswith("kept")


def test_refresh_starts_afresh_and_moves_the_old_copy_aside(course, capsys):
    workbooks.make(course, quiet=True)
    lesson = first_lesson(course)
    copy = course / "workbooks" / lesson.name
    work_in(copy)
    (course / "workbooks" / "01-helper.py").write_text("VALUE = 2  # mine\n")
    mine = copy.read_bytes()
    assert workbooks.refresh(lesson.name[:2], course) == copy
    assert load(copy) == workbooks.cleared(load(lesson), local=frozenset(workbooks._sources(course)))
    old = sorted((course / "workbooks" / "previous").iterdir())
    assert [p.read_bytes() for p in old if p.suffix == ".ipynb"] == [mine]
    assert any(p.read_text() == "VALUE = 2  # mine\n" for p in old if p.suffix == ".py")
    assert (course / "workbooks" / "01-helper.py").read_text() == "VALUE = 1\n"
    assert "previous/" in capsys.readouterr().out
    assert workbooks.make(course, quiet=True)[lesson.name] == "up to date"


@pytest.mark.parametrize("which", ["1", "01", "01-", "notebooks/{name}", "workbooks/{name}", "{stem}"])
def test_refresh_understands_how_people_name_a_lesson(course, which):
    lesson = first_lesson(course)
    assert workbooks.resolve(which.format(name=lesson.name, stem=lesson.stem), course) == lesson


@pytest.mark.parametrize("which", ["99", "0", "lesson"])
def test_refresh_of_an_unknown_lesson_says_which_exist(course, which):
    with pytest.raises(SystemExit, match="pass one of: 01-"):
        workbooks.resolve(which, course)


def test_a_renamed_lesson_leaves_an_untouched_copy_gone_and_a_worked_one_kept(course):
    workbooks.make(course, quiet=True)
    a, b = workbooks.lessons(course)[:2]
    work_in(course / "workbooks" / b.name)
    a.rename(a.with_name(a.name[:3] + "renamed.ipynb"))
    b.rename(b.with_name(b.name[:3] + "renamed.ipynb"))
    report = workbooks.make(course, quiet=True)
    assert not (course / "workbooks" / a.name).exists() and report[a.name].startswith("removed")
    assert (course / "workbooks" / b.name).exists() and report[b.name].startswith("kept")


def test_using_the_course_leaves_git_status_clean(tmp_path):
    """make workbooks, then work in a copy (outputs, edits, checkpoints): git sees nothing."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".git", ".venv", "build", "workbooks", "__pycache__",
                                                              ".hypothesis", ".pytest_cache", "*.egg-info"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "course"], check=True)
    subprocess.run(["make", "-C", str(repo), "workbooks", f"PYTHON={sys.executable}"], check=True,
                   capture_output=True)
    copy = repo / "workbooks" / LESSONS[0].name
    work_in(copy)
    (repo / "workbooks" / ".ipynb_checkpoints").mkdir()
    (repo / "workbooks" / "model.pt").write_bytes(b"saved by a lesson")
    status = subprocess.run(git + ["status", "--porcelain", "--untracked-files=all"], capture_output=True,
                            text=True, check=True).stdout
    assert status == "", status


def test_make_lab_makes_the_copies_then_opens_lab_at_01s_copy():
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "lab"], capture_output=True, text=True,
                         env=dict(os.environ, MAKEFLAGS="")).stdout
    assert dry.index("utils.workbooks make") < dry.index("utils.workbooks lab")
    command = workbooks.lab_command(ROOT)
    assert f"--LabApp.default_url=/lab/tree/workbooks/{LESSONS[0].name}" in command
    assert f"--ServerApp.root_dir={ROOT}" in command and "--ip=127.0.0.1" in command


def test_make_workbook_without_nb_says_how():
    result = subprocess.run(["make", "-s", "-C", str(ROOT), "workbook"], capture_output=True, text=True)
    assert result.returncode != 0 and "make workbook NB=03" in result.stderr


def test_the_lab_settings_name_real_jupyterlab_settings(tmp_path):
    """The news pop-up setting, checked against the schema JupyterLab itself ships."""
    path = workbooks.write_lab_settings(tmp_path)
    assert path == tmp_path / "overrides.d" / "zero-grad-course.json"
    import jupyterlab

    schemas = Path(jupyterlab.__file__).parent / "schemas"
    if not schemas.is_dir():
        schemas = Path(sys.prefix) / "share" / "jupyter" / "lab" / "schemas"
    for plugin, values in json.loads(path.read_text()).items():
        package, name = plugin.rsplit(":", 1)
        schema = json.loads((schemas / package / f"{name}.json").read_text())
        for key, value in values.items():
            spec = schema["properties"][key]
            allowed = [c["const"] for c in spec.get("oneOf", [])] or None
            assert value in allowed if allowed else isinstance(value, bool), (key, value)
    assert json.loads(path.read_text())["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"


def test_lab_settings_go_to_this_environments_jupyterlab():
    assert workbooks.lab_settings_dir().is_relative_to(Path(sys.prefix))


def test_import_utils_works_where_the_copies_are(course):
    workbooks.make(course, quiet=True)
    out = subprocess.run([sys.executable, "-c", "import utils.ex01, utils; print(utils.__file__)"],
                         cwd=course / "workbooks", capture_output=True, text=True, check=True).stdout
    assert Path(out.strip()).resolve().is_relative_to(ROOT)


def test_workbooks_needs_only_the_standard_library():
    code = ("import sys, utils.workbooks, utils.handout\n"
            "assert not {'torch', 'nbformat', 'jupyterlab'} & set(sys.modules), sorted(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
