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


# Links between lessons, and short tracebacks in the cells that fail on purpose (issue 15) ----

ANSI = re.compile(r"\x1b\[[0-9;]*m")
NAV = re.compile(r"\b(Next|Back):\s*(.*)", re.S)
LINK = re.compile(r"^\[([^\]]+)\]\(([^)\s]+)\)")


def title(path: Path) -> str:
    """A notebook's title: its first `# ` heading, spaces normalised."""
    for cell in load(path)["cells"]:
        if cell["cell_type"] == "markdown" and (m := re.search(r"^# (.+)$", source(cell), re.M)):
            return " ".join(m.group(1).split())
    return ""


def nav_lines(path: Path) -> list[tuple[str, str]]:
    """Each "Next:"/"Back:" of a lesson's Markdown: (which, what follows it, up to the next line break
    that ends a list item), with wrapped lines joined."""
    found = []
    for cell in load(path)["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for item in re.split(r"\n(?=\s*[-*] |\s*$)", source(cell)):
            if m := NAV.search(item):
                found.append((m.group(1), " ".join(m.group(2).split())))
    return found


def title_matches(text: str, target: Path) -> bool:
    """Link text names the target lesson: its whole title, or the part before the subtitle's colon."""
    full = title(target)
    return " ".join(text.split()) in (full, full.split(":")[0].strip())


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_every_next_and_back_line_is_a_link_to_a_lesson(path):
    lines = nav_lines(path)
    if path != LESSONS[-1]:
        assert any(which == "Next" for which, _ in lines), f"{path.name} has no Next: line"
    for which, rest in lines:
        m = LINK.match(rest)
        assert m, f"{path.name}: {which}: is not a Markdown link: {rest[:80]}"
        target = path.parent / m.group(2).split("#")[0]
        assert target.is_file() and target in LESSONS, f"{path.name}: {which}: opens {m.group(2)}, no lesson"
        assert title_matches(m.group(1), target), f"{path.name}: [{m.group(1)}] vs {title(target)!r}"


def calls_short_tracebacks(nb: dict) -> int | None:
    """The index of the first code cell that calls short_tracebacks(), if any."""
    cells = code_cells(nb)
    return next((i for i, c in enumerate(cells) if re.search(r"^short_tracebacks\(\)", source(c), re.M)), None)


def check_short_tracebacks(path: Path) -> None:
    nb = load(path)
    cells = code_cells(nb)
    first = calls_short_tracebacks(nb)
    failing = [i for i, c in enumerate(cells) if "raises-exception" in c.get("metadata", {}).get("tags", [])]
    assert first is not None and all(first < i for i in failing), \
        f"{path.name}: call short_tracebacks() in the setup cell, before the first failing cell"
    for i in failing:
        for out in cells[i]["outputs"]:
            if out["output_type"] == "error":
                text = ANSI.sub("", "\n".join(out["traceback"]))
                assert not re.search(r"site-packages|\.py:\d+|^File ", text, re.M), \
                    f"{path.name}: a library frame in the stored traceback of: {source(cells[i])[:60]}"
                assert "Cell In[" in text and re.search(r"--+>", text), f"{path.name}: {source(cells[i])[:60]}"


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=lambda p: p.name)
def test_every_failing_cell_shows_its_line_and_message_together(path):
    nb = load(path)
    if any("raises-exception" in c.get("metadata", {}).get("tags", []) for c in code_cells(nb)):
        check_short_tracebacks(path)
