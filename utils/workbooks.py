"""Learner copies of the lessons ("workbooks"): `make workbooks`, `make workbook NB=03`, `make lab`.

The tracked notebooks in notebooks/ keep their outputs: they are the reference that strict nbval
checks and that a reader sees on the repository's web page. A learner works in a copy, in
workbooks/ (git-ignored), made with every output and execution count cleared, so that no
"Predict" answer is on screen before its cell runs and using the course leaves `git status`
clean. Files beside the lessons that are not notebooks (a training script, a data folder) are
copied along; solutions/ is not.

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


def cleared(notebook: dict[str, Any], *, depth: str = "../", local: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A copy of a notebook with outputs and execution counts cleared, tags kept, and nbval's
    marker comments (`# NBVAL_IGNORE_OUTPUT`) taken out of the code.

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
    return nb


def fingerprint(notebook: dict[str, Any]) -> str:
    """What a learner changes by working: cell types, sources, outputs, execution counts."""
    def text(source: Any) -> str:
        return "".join(source) if isinstance(source, list) else str(source)

    cells = [[c.get("cell_type"), text(c.get("source", "")), c.get("outputs", []), c.get("execution_count")]
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
