"""Learner copies of the lessons ("workbooks"): `make workbooks`, `make workbook NB=03`, `make lab`.

The tracked notebooks in notebooks/ keep their outputs: they are the reference that strict nbval
checks and that a reader sees on the repository's web page. A learner works in a copy, in
workbooks/ (git-ignored), made with every output and execution count cleared, and with the
answer to every "Predict" folded away, so that no answer is on screen before its cell runs;
using the course leaves `git status` clean. Files beside the lessons that are not notebooks (a
training script, a data folder) are copied along; solutions/ is not.

A Predict pair is a Markdown cell holding "**Predict:**", the code cell(s) right after it, and
the Markdown cell after those, which explains what the code shows. In the copy that
explanation is folded into an HTML disclosure (`<details>`), which JupyterLab renders as one
line, "▶ Run the cell above, then click here to read what it shows."; one click unfolds it.
Only the explanation is folded: where that cell goes on with a heading (the next section) or
with the next "**Predict:**" paragraph, it is split there and the rest stays visible as a cell
of its own. Unfolding is not saved in the notebook, so it leaves a copy untouched.

A copy the learner has worked in is never overwritten. workbooks/.handed-out.json records a
fingerprint of each copy as handed out (cell types, sources, outputs, execution counts); a copy
whose fingerprint differs has been worked in. An untouched copy follows its lesson when the
lesson changes. `refresh` starts one lesson afresh on purpose and moves the old copy to
workbooks/previous/ instead of deleting it.

Standard library only (no torch, no nbformat), so `make handout` and `make workbooks` run from
a downloaded ZIP with any Python 3.10+.

    python -m utils.workbooks make            # every lesson (what `make workbooks` runs)
    python -m utils.workbooks refresh 03      # lesson 03 afresh (`make workbook NB=03`)
    python -m utils.workbooks lab [ARGS...]   # copies, settings, then JupyterLab at 01's copy
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FOLDER = "workbooks"
RECORD = ".handed-out.json"
PREVIOUS = "previous"
LESSON = re.compile(r"^\d\d-.+\.ipynb$")
SKIP = {"solutions", "__pycache__", ".ipynb_checkpoints"}
# JupyterLab 4.6: no "get notified about Jupyter news?" pop-up over notebook 01 on first open.
LAB_SETTINGS = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}
NBVAL_MARK = re.compile(r"^[ \t]*# NBVAL_[A-Z_]+[ \t]*\n", re.M)
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled")
PREDICT = "**Predict:**"
# What a folded answer shows before it is opened: nothing of the answer, only how to see it.
SUMMARY = {1: "Run the cell above, then click here to read what it shows.",
           2: "Run the cells above, then click here to read what they show."}
FOLD_OPEN = "<details>\n<summary>"
FOLD_CLOSE = "</details>"
HEADING = re.compile(r"^ {0,3}#{1,6}(\s|$)")
FENCE = re.compile(r"^ {0,3}(```|~~~)")


def lessons(root: Path = ROOT) -> list[Path]:
    """The lesson notebooks, notebooks/NN-*.ipynb, in order (solutions excluded)."""
    return sorted(p for p in (root / "notebooks").glob("*.ipynb") if LESSON.match(p.name))


def companions(root: Path = ROOT) -> list[Path]:
    """Files beside the lessons that are not notebooks (scripts, data), relative to notebooks/."""
    found = []
    for path in sorted((root / "notebooks").rglob("*")):
        rel = path.relative_to(root / "notebooks")
        if path.is_file() and path.suffix != ".ipynb" and not any(
                part in SKIP or part.startswith((".", "_")) for part in rel.parts):
            found.append(rel)
    return found


def _markdown_source(text: str, depth: str, local: set[str]) -> str:
    """Point relative links and `solutions/...` mentions of a lesson at the lesson's folder."""
    def fix(target: str) -> str:
        path = target.split("#")[0]
        if re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", target) or LESSON.match(path) or path in local:
            return target  # a URL, an anchor, an absolute path, or a file copied alongside
        return f"{depth}notebooks/{target}"

    text = re.sub(r"\]\(([^)\s]+)\)", lambda m: f"]({fix(m.group(1))})", text)
    return re.sub(r"`(solutions/[^`]+)`", lambda m: f"`{fix(m.group(1))}`", text)


def _text(source: Any) -> str:
    return "".join(source) if isinstance(source, list) else str(source)


def _asks(text: str) -> bool:
    """Whether Markdown asks a Predict question: "**Predict:**" outside fenced code, in a cell
    that is not a folded answer."""
    if unfold(text) is not None:
        return False
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and PREDICT in line:
            return True
    return False


def split_answer(text: str) -> tuple[str, str]:
    """Split the Markdown after a Predict pair into (the answer, what follows it).

    The answer ends before the first heading (the next section) or before the paragraph that
    holds the next "**Predict:**" question, whichever comes first; fenced code is not looked
    into. What follows starts at that line ("" if nothing does); the answer loses its trailing
    blank lines.
    """
    lines = text.splitlines(keepends=True)
    fenced, paragraph = False, 0
    for k, line in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
        if fenced or FENCE.match(line):
            continue
        if not line.strip():
            paragraph = k + 1
        elif HEADING.match(line):
            return "".join(lines[:k]).rstrip(), "".join(lines[k:])
        elif PREDICT in line:
            return "".join(lines[:paragraph]).rstrip(), "".join(lines[paragraph:])
    return text.rstrip(), ""


def fold(answer: str, code_cells: int = 1) -> str:
    """The answer as a closed disclosure: one line says how to see it, one click opens it.
    (The blank lines let Markdown inside the HTML block render as Markdown.)"""
    return f"{FOLD_OPEN}{SUMMARY[min(code_cells, 2)]}</summary>\n\n{answer}\n\n{FOLD_CLOSE}"


def unfold(text: str) -> str | None:
    """The answer inside a folded cell's source, or None if the source is not one."""
    if not (text.startswith(FOLD_OPEN) and text.rstrip().endswith(FOLD_CLOSE)):
        return None
    inner = text.split("</summary>", 1)[1]
    return inner[:inner.rstrip().rindex(FOLD_CLOSE)].strip("\n")


def _new_id(cell: dict[str, Any], taken: set[str]) -> str | None:
    """An id for the cell split off `cell`: nbformat 4.5 ids are unique, [A-Za-z0-9_-]{1,64}."""
    if "id" not in cell:
        return None
    base, n = f"{cell['id'][:56]}-next", 1
    found = base
    while found in taken:
        n += 1
        found = f"{base}{n}"
    taken.add(found)
    return found


def hide_answers(notebook: dict[str, Any]) -> dict[str, Any]:
    """Fold the answer of every Predict pair (see the module's docstring); in place, and returns
    the notebook. Folding a notebook already folded changes nothing."""
    cells = notebook.get("cells", [])
    taken = {c["id"] for c in cells if "id" in c}
    i = 0
    while i < len(cells):
        cell = cells[i]
        i += 1
        if cell.get("cell_type") != "markdown" or not _asks(_text(cell.get("source", ""))):
            continue
        j = i
        while j < len(cells) and cells[j].get("cell_type") == "code":
            j += 1
        if j == i or j == len(cells) or cells[j].get("cell_type") != "markdown":
            continue  # no code, or no explanation after it
        text = _text(cells[j].get("source", ""))
        answer, rest = split_answer(text)
        if unfold(text) is not None or not answer.strip():
            i = j  # folded already, or no answer before the next heading or question: look at it
            continue
        cells[j]["source"] = fold(answer, j - i).splitlines(keepends=True)
        if rest:
            after = {"cell_type": "markdown", "metadata": {}, "source": rest.splitlines(keepends=True)}
            if (new := _new_id(cells[j], taken)) is not None:
                after["id"] = new
            cells.insert(j + 1, after)
        i = j + 1  # the rest, which may hold the next Predict
    return notebook


def cleared(notebook: dict[str, Any], *, depth: str = "../", local: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A copy of a notebook with outputs and execution counts cleared, tags kept, nbval's
    marker comments (`# NBVAL_IGNORE_OUTPUT`) taken out of the code, and the answer of every
    Predict pair folded (`hide_answers`).

    With `depth`, relative links in Markdown that leave the copies' folder (`solutions/...`)
    are pointed back at notebooks/ from a folder `depth` below the root; `local` names the
    files copied alongside, whose links stay as they are.
    """
    nb = json.loads(json.dumps(notebook))
    for cell in nb.get("cells", []):
        for key in VOLATILE_CELL_METADATA:
            cell.get("metadata", {}).pop(key, None)
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            if NBVAL_MARK.search(source):  # test plumbing, nothing a learner needs to read
                cell["source"] = NBVAL_MARK.sub("", source).splitlines(keepends=True)
        elif cell.get("cell_type") == "markdown" and depth:
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = _markdown_source(source, depth, set(local)).splitlines(keepends=True)
    return hide_answers(nb)


def fingerprint(notebook: dict[str, Any]) -> str:
    """What a learner changes by working: cell types, sources, outputs, execution counts."""
    cells = [[c.get("cell_type"), _text(c.get("source", "")), c.get("outputs", []), c.get("execution_count")]
             for c in notebook.get("cells", [])]
    return hashlib.sha256(json.dumps(cells, sort_keys=True).encode()).hexdigest()


def _file_print(path: Path) -> str | None:
    if not path.is_file():
        return None
    if path.suffix == ".ipynb":
        try:
            return fingerprint(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, UnicodeDecodeError):
            return "unreadable"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_notebook(notebook: dict[str, Any], path: Path) -> None:
    """Write a notebook as nbformat does (sorted keys, indent 1, UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _fresh(source: Path, local: frozenset[str]) -> tuple[bytes | dict[str, Any], str]:
    """The content of a fresh copy of `source` and its fingerprint."""
    if source.suffix == ".ipynb":
        nb = cleared(json.loads(source.read_text(encoding="utf-8")), local=local)
        return nb, fingerprint(nb)
    data = source.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def _put(content: bytes | dict[str, Any], path: Path) -> None:
    if isinstance(content, dict):
        write_notebook(content, path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def _load_record(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save_record(folder: Path, record: dict[str, Any]) -> None:
    (folder / RECORD).write_text(json.dumps(record, sort_keys=True, indent=1) + "\n", encoding="utf-8")


def _sources(root: Path) -> dict[str, Path]:
    """Each copy's name in workbooks/ -> the file of notebooks/ it is made from."""
    found = {p.name: p for p in lessons(root)}
    found.update({rel.as_posix(): root / "notebooks" / rel for rel in companions(root)})
    return found


def _aside(path: Path, folder: Path) -> Path:
    """Move a copy to workbooks/previous/, stamped with the time; return where it went."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder / PREVIOUS / f"{path.stem}-{stamp}{path.suffix}"
    n = 1
    while target.exists():
        target, n = folder / PREVIOUS / f"{path.stem}-{stamp}-{n}{path.suffix}", n + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), target)
    return target


def make(root: Path = ROOT, *, quiet: bool = False) -> dict[str, str]:
    """Make or update every copy; never touch one the learner worked in. Returns name -> what happened."""
    folder = root / FOLDER
    folder.mkdir(exist_ok=True)
    record = _load_record(folder)
    report: dict[str, str] = {}
    sources = _sources(root)
    for name, source in sources.items():
        content, new = _fresh(source, frozenset(sources))
        path = folder / name
        now = _file_print(path)
        handed = record.get(name, {}).get("fingerprint")
        if now is None:
            _put(content, path)
            report[name] = "made"
        elif now == new:
            report[name] = "up to date"
        elif now == handed:  # untouched since handed out, and its lesson has changed
            _put(content, path)
            report[name] = "updated (you had not changed it)"
        else:
            report[name] = "kept: you have worked in it"
            if handed is not None and handed != new:
                report[name] += f"; its lesson has changed since (make workbook NB={name[:2]} starts afresh)"
            continue  # the record keeps what was handed out
        record[name] = {"from": source.relative_to(root).as_posix(), "fingerprint": new}
    for name in sorted(set(record) - set(sources)):  # a lesson renamed or removed
        path = folder / name
        if _file_print(path) in (None, record[name].get("fingerprint")):
            path.unlink(missing_ok=True)
            del record[name]
            report[name] = "removed (its lesson is gone; you had not changed it)"
        else:
            report[name] = "kept: you have worked in it, but its lesson is gone or renamed"
    _save_record(folder, record)
    if not quiet:
        for name, what in report.items():
            if what != "up to date":
                print(f"{FOLDER}/{name}: {what}")
        same = sum(what == "up to date" for what in report.values())
        print(f"{FOLDER}/: your copies of {len(lessons(root))} lessons and the files beside them"
              + (f", {same} of {len(report)} already up to date" if same else ""))
    return report


def resolve(which: str, root: Path = ROOT) -> Path:
    """The lesson meant by '3', '03', '03-manual-descent', or a path to a lesson or its copy."""
    name = Path(which).name
    matches = [p for p in lessons(root) if p.name == name or p.stem == name or
               (name.isdigit() and p.name[:2] == f"{int(name):02d}") or p.name.startswith(name)]
    if len(matches) != 1:
        names = ", ".join(p.name for p in lessons(root))
        raise SystemExit(f"NB={which!r} names {len(matches)} lessons; pass one of: {names}")
    return matches[0]


def refresh(which: str, root: Path = ROOT) -> Path:
    """Start one lesson afresh: the old copy (and its lesson's files) go to workbooks/previous/."""
    lesson = resolve(which, root)
    folder = root / FOLDER
    folder.mkdir(exist_ok=True)
    record = _load_record(folder)
    sources = _sources(root)
    prefix = lesson.name[:2]
    names = [lesson.name] + [n for n in sources if n != lesson.name and re.match(rf"{prefix}\D", Path(n).name)]
    for name in names:
        content, new = _fresh(sources[name], frozenset(sources))
        path = folder / name
        if path.exists() and _file_print(path) != new:
            print(f"{FOLDER}/{name}: your copy is now {_aside(path, folder).relative_to(root)}")
        _put(content, path)
        record[name] = {"from": sources[name].relative_to(root).as_posix(), "fingerprint": new}
        print(f"{FOLDER}/{name}: fresh copy")
    _save_record(folder, record)
    return folder / lesson.name


def lab_settings_dir() -> Path:
    """JupyterLab's application settings folder for this Python (where overrides.d/ lives)."""
    from jupyterlab.commands import get_app_dir  # only `lab` needs JupyterLab

    return Path(get_app_dir()) / "settings"


def write_lab_settings(settings_dir: Path | None = None) -> Path:
    """Default JupyterLab settings for the course (no news pop-up), for this environment only."""
    path = (settings_dir or lab_settings_dir()) / "overrides.d" / "zero-grad-course.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(LAB_SETTINGS, indent=2) + "\n", encoding="utf-8")
    return path


def lab_command(root: Path = ROOT) -> list[str]:
    """The command that opens JupyterLab at the copy of lesson 01 (what `make lab` runs)."""
    first = lessons(root)[0].name
    return [sys.executable, "-m", "jupyterlab", "--ip=127.0.0.1", f"--ServerApp.root_dir={root}",
            f"--LabApp.default_url=/lab/tree/{FOLDER}/{first}"]


def main(argv: list[str]) -> None:
    """Command line: make | refresh NB | lab [JupyterLab arguments]."""
    command, *rest = argv or ["make"]
    if command == "make":
        make()
    elif command == "refresh" and len(rest) == 1:
        refresh(rest[0])
    elif command == "lab-settings":
        print(write_lab_settings())
    elif command == "lab":
        make(quiet=True)  # `make lab` has just run `make workbooks`, which reported
        write_lab_settings()
        args = lab_command() + rest
        if os.name == "nt":  # Windows has no exec: run JupyterLab as a child, its exit status ours
            import subprocess

            raise SystemExit(subprocess.call(args))
        os.execv(args[0], args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
