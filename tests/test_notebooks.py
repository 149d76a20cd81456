"""Every notebook keeps the house style and stores outputs that nbval can check (STYLE.md)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
SOLUTIONS = sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))
# What may differ between runs or machines, and so be marked NBVAL_IGNORE_OUTPUT.
VARIABLE = ("describe_environment", "torch.utils.benchmark", "Timer", "max_memory_allocated")
MACHINE_PATH = re.compile(r"(/work/|/tmp/|/root/|/home/\w+/|site-packages)")


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_there_are_lessons_each_with_its_solutions():
    assert LESSONS, "no notebooks found"
    for lesson in LESSONS:
        assert (ROOT / "notebooks" / "solutions" / f"{lesson.stem}-solutions.ipynb").exists(), lesson.name


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=lambda p: p.name)
def test_outputs_are_stored_from_one_fresh_run(path):
    cells = [c for c in code_cells(load(path)) if source(c).strip()]
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1))


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=lambda p: p.name)
def test_errors_only_where_tagged_and_no_machine_paths(path):
    for cell in code_cells(load(path)):
        tags = cell.get("metadata", {}).get("tags", [])
        for out in cell["outputs"]:
            if out["output_type"] == "error":
                assert "raises-exception" in tags, source(cell)[:60]
            text = json.dumps(out.get("text", "")) + json.dumps(out.get("data", {}).get("text/plain", ""))
            text += json.dumps(out.get("traceback", []))  # `make execute` tidies these
            assert not MACHINE_PATH.search(text), f"output shows a path of this machine: {source(cell)[:60]}"


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=lambda p: p.name)
def test_code_fits_a_projector(path):
    for cell in code_cells(load(path)):
        for line in source(cell).splitlines():
            assert len(line) <= 88, f"{len(line)} characters: {line}"
        assert "import *" not in source(cell)


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_follows_the_arc(path):
    markdown = "\n".join(source(c) for c in load(path)["cells"] if c["cell_type"] == "markdown")
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    for needed in ("**You will learn**", "## Setup", "## What you saw", "## Exercises", "## Learn more"):
        assert needed in markdown, f"{path.name} lacks {needed!r}"
    assert any(re.match(r"## 1\. ", h) for h in headings), "numbered sections start at 1"
    assert "Predict" in markdown, "ask the learner to predict before a key cell"


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=lambda p: p.name)
def test_the_setup_cell_ignores_only_its_versions(path):
    ignored = [c for c in code_cells(load(path)) if "NBVAL_IGNORE_OUTPUT" in source(c)]
    for cell in ignored:
        text = source(cell)
        assert any(word in text for word in VARIABLE), f"only versions, timings and device memory may be ignored: {text[:80]}"
