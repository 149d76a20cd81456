"""`make handout`: build/zero-grad-course-handout.zip, the course as a class receives it.

What is in it: the lessons as `make workbooks` copies them, without outputs and with the
explanation under each "Predict" folded (so no answer shows before its cell runs; one click
opens it), and the files beside them, `utils/` (the checks give feedback, with hints before answers),
`requirements.txt`, `pyproject.toml`, a Makefile with the learner's commands only, and a README
for learners saying how to start. What is not: the solutions, and every sentence of a lesson
that points at them; the tests (they hold worked solutions) and the benchmarks; Binder and CI.

Standard library only and no git: it works from a downloaded ZIP of the repository.

    python -m utils.handout [--output build/zero-grad-course-handout.zip]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from utils.workbooks import ROOT, cleared, companions, lessons, write_notebook

NAME = "zero-grad-course"
OUTPUT = ROOT / "build" / f"{NAME}-handout.zip"
# A sentence of a lesson that points at its solutions, and what the hand-out says instead.
SOLUTIONS_SENTENCE = re.compile(r"[^.!?\n]*(?:\n[^.!?\n]*)*?`?\[?solutions/[^\s`)\]]*[^.!?]*[.!?]")
INSTEAD = ("Your teacher has the worked solutions. After three tries a check shows its answer; "
           "to see it sooner, add `reveal=True` to the check call.")
INSTEAD_SHORT = "Your teacher has the worked solutions; try first."  # where the cell says reveal=True already
# A mention of a file of the repository that the hand-out leaves out, e.g. `tests/test_claims_09.py`.
NOT_SHIPPED = re.compile(r"`([^`\n]*?(?<![\w./])(?:\.\./)?(?:tests|binder|build|\.ci)/[^`\n]*)`")
ELSEWHERE = " in the course's repository"


def rewrite(text: str) -> str:
    """A lesson's Markdown as the hand-out says it: no pointer at solutions it lacks, and files it
    leaves out named as the repository's."""
    if "solutions/" in text:
        instead = INSTEAD_SHORT if "reveal=True" in text else INSTEAD
        text = SOLUTIONS_SENTENCE.sub(lambda m: re.match(r"\s*", m.group(0)).group(0) + instead, text)
    return NOT_SHIPPED.sub(lambda m: m.group(0) + ("" if text[m.end():].startswith(ELSEWHERE) else ELSEWHERE),
                           text)

MAKEFILE = """\
# The commands of the course hand-out (README.md says more).
#   make lab        set up .venv/, make your copies in workbooks/, open JupyterLab at lesson 01
#   make workbooks  make the copies only (a copy you worked in is never overwritten)
#   make workbook NB=03   start lesson 03 afresh (your old copy moves to workbooks/previous/)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
WB_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
NEEDS = The course needs Python 3.11 or newer, and $(PYTHON) is $$($(PYTHON) --version 2>&1): \\
        name another, e.g. make lab PYTHON=python3.12

.PHONY: setup lab workbooks workbook

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
\t@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "$(NEEDS)" >&2; exit 1; }
\t$(PYTHON) -m venv $(VENV)
\t$(PY) -m pip install --quiet -r requirements.txt
\t$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
\ttouch $(STAMP)

lab: $(STAMP) workbooks
\t$(PY) -m utils.workbooks lab $(ROOT_FLAG)

workbooks:
\t$(WB_PY) -m utils.workbooks make

workbook:
\t@[ "$(origin NB)" = "command line" ] || { echo "usage: make workbook NB=03" >&2; exit 2; }
\t$(WB_PY) -m utils.workbooks refresh $(NB)
"""


def title(path: Path) -> str:
    """A lesson's title: the first Markdown heading of its first cell."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and (m := re.search(r"^#\s+(.+)$", text, re.M)):
            return m.group(1).strip()
    return path.stem


def readme(root: Path = ROOT) -> str:
    """The learners' README: how to start, how to work, what each lesson is."""
    rows = "\n".join(f"| {p.name[:2]} | `workbooks/{p.name}` | {title(p)} |" for p in lessons(root))
    return f"""# Why `optimizer.zero_grad()` matters: the course, as handed out

Notebooks in Python and PyTorch. Each idea is shown by code you run, a plot, and a number.

## Start

On Linux or macOS, with Python 3.11 or newer and an internet connection:

```bash
make lab
```

The first time, this makes `.venv/` and installs the pinned packages of `requirements.txt`
(PyTorch among them: several minutes). Then it makes your own copies of the lessons in
`workbooks/` and opens JupyterLab at lesson 01 in your browser (it also prints the address,
with its token). `make lab PYTHON=python3.12` names another Python; on Debian or Ubuntu,
`sudo apt install python3-venv` first if `venv` says that `ensurepip` is missing.

Every lesson runs on a CPU. On Linux, PyPI's PyTorch also brings several GB of CUDA
libraries; without an NVIDIA GPU, install PyTorch's CPU build first, then `make lab` installs
the rest (the CPU build satisfies the pin `torch==2.13.0`):

```bash
python3 -m venv .venv
.venv/bin/python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
make lab
```

Without `make` (Windows: `py -3` instead of `python3`, and `.venv\\Scripts\\python` instead of
`.venv/bin/python`):

```bash
python3 -m venv .venv
.venv/bin/python -m pip install -r requirements.txt
.venv/bin/python -m pip install --no-deps --no-build-isolation -e .
.venv/bin/python -m utils.workbooks lab
```

## How to work

- Work in `workbooks/`: those copies are yours. `notebooks/` keeps the lessons as handed out.
- Read top to bottom. Where a lesson asks you to **predict**, write your guess down first,
  then run the cell. What the cell shows is explained right under it, folded: click
  "▶ Run the cell above, then click here to read what it shows." to open it.
- A few cells fail on purpose, to show an error before its fix: they say so.
- Exercises: each check prints ✔ or ✘ with a hint about what is wrong. After three tries it
  shows the answer; add `reveal=True` to the check call to see it sooner.
- `make lab` again never overwrites a copy you have worked in. To start lesson 03 afresh:
  `make workbook NB=03` (your old copy moves to `workbooks/previous/`).
- Presentation: View → Appearance → Presentation Mode, and Ctrl+B hides the file browser.

## The lessons

| # | Your copy | Lesson |
|---|---|---|
{rows}
"""


def build(root: Path = ROOT, output: Path | None = None) -> Path:
    """Build the hand-out zip; return its path. Fails if a lesson still points at solutions."""
    output = output or root / "build" / f"{NAME}-handout.zip"
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / NAME
        (top / "notebooks").mkdir(parents=True)
        local = frozenset([p.name for p in lessons(root)] + [r.as_posix() for r in companions(root)])
        for lesson in lessons(root):
            nb = cleared(json.loads(lesson.read_text(encoding="utf-8")), depth="", local=local)
            for cell in nb["cells"]:
                text = "".join(cell["source"])
                if cell["cell_type"] == "markdown":
                    text = rewrite(text)
                    cell["source"] = text.splitlines(keepends=True)
                if "solutions/" in text or "-solutions.ipynb" in text:
                    raise SystemExit(f"{lesson.name}: a cell still points at solutions the hand-out lacks:\n"
                                     f"{text[:300]}\nWrite it as one sentence: Solutions are in "
                                     "`solutions/NN-name-solutions.ipynb`; try first.")
                unnamed = [m.group(0) for m in re.finditer(
                    r"(?<![\w./])(?:\.\./)?(?:tests|binder|build|\.ci)/[\w./*-]*", text)
                    if cell["cell_type"] == "code" or ELSEWHERE not in text[m.end():m.end() + 60]]
                for path in unnamed:
                    print(f"warning: {lesson.name} mentions {path}, which the hand-out does not include",
                          file=sys.stderr)
            write_notebook(nb, top / "notebooks" / lesson.name)
        for rel in companions(root):
            (top / "notebooks" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / "notebooks" / rel, top / "notebooks" / rel)
        (top / "utils").mkdir()
        for path in sorted((root / "utils").rglob("*")):
            rel = path.relative_to(root / "utils")
            if path.is_file() and path.suffix in (".py", ".mplstyle") and "__pycache__" not in rel.parts:
                (top / "utils" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, top / "utils" / rel)
        for name in ("requirements.txt", "pyproject.toml"):
            shutil.copy2(root / name, top / name)
        (top / "Makefile").write_text(MAKEFILE, encoding="utf-8")
        (top / "README.md").write_text(readme(root), encoding="utf-8")
        (top / ".gitignore").write_text("/.venv/\n/workbooks/\n*.egg-info/\n__pycache__/\n.ipynb_checkpoints/\n")
        output.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(top.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(tmp).as_posix())
    return output


def main(argv: list[str]) -> None:
    """Command line: build the hand-out and say where it is."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=None)
    path = build(output=parser.parse_args(argv).output)
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: the hand-out for a class "
          "(lessons without outputs, no solutions); learners unzip it and run `make lab` (its README.md)")


if __name__ == "__main__":
    main(sys.argv[1:])
