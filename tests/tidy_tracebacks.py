"""Strip this machine's paths from the tracebacks stored in notebooks (run by `make execute`).

A cell that fails on purpose (tagged `raises-exception`) stores its traceback, and the
traceback names the files of the machine that ran it: `/home/you/.venv/lib/python3.11/
site-packages/torch/_tensor.py`. nbval does not compare tracebacks, but readers of the stored
notebook see them. This rewrites library paths as `.../torch/_tensor.py` and paths inside the
repository as `utils/launcher.py`, and leaves everything else alone.

Usage: python tests/tidy_tracebacks.py NOTEBOOK ...
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = re.compile(r"/[^\s\"'\x1b:]*?/(?:site|dist)-packages/")


def tidy(text: str) -> str:
    """Return a traceback line with library and repository paths made machine-independent."""
    return LIBRARY.sub(".../", text).replace(f"{ROOT}/", "")


def tidy_notebook(path: Path) -> int:
    """Tidy one notebook in place; return how many traceback lines changed."""
    nb = nbformat.read(path, as_version=4)
    changed = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                lines = [tidy(line) for line in output["traceback"]]
                changed += sum(a != b for a, b in zip(lines, output["traceback"]))
                output["traceback"] = lines
    if changed:
        nbformat.write(nb, path)
    return changed


if __name__ == "__main__":
    for name in sys.argv[1:]:
        tidy_notebook(Path(name))
