"""Time each notebook under nbval as a ratio to the floor: `make bench` (README, "Speed").

The floor is the nbval time of a one-cell notebook that only runs `import torch`: kernel
start, torch import and nbval's own work, which no lesson can avoid. Rounds alternate the
floor and every notebook, and the ratio of medians is printed, so a machine that is busy
or slow shifts both alike. This is a report, not a test: it never fails on a slow result.

Usage: python tests/benchmark.py [--repeats N] [NOTEBOOK ...]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GOAL = 1.6
GOALS = {"05-": 2.5}  # notebook 05 starts real worker processes (issue: "≤ 2.5× the floor")


def goal_for(path: Path) -> float:
    return next((goal for prefix, goal in GOALS.items() if path.name.startswith(prefix)), DEFAULT_GOAL)


def make_floor(folder: Path) -> Path:
    """Write and return the floor notebook: one cell, `import torch`, run once like the lessons."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("import torch")
    cell.execution_count = 1
    nb.cells.append(cell)
    path = folder / "floor.ipynb"
    nbformat.write(nb, path)
    return path


def nbval_seconds(path: Path) -> float:
    """Run strict nbval on one notebook in a new process; return its wall time in seconds."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
               str(path)]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{path.name} fails under nbval; fix it before timing it:\n{result.stdout[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook and solution")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of floor + notebooks (default 3)")
    args = parser.parse_args()
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("**/*.ipynb"))
    notebooks = [p for p in notebooks if ".ipynb_checkpoints" not in p.parts]
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    with tempfile.TemporaryDirectory() as folder:
        floor = make_floor(Path(folder))
        nbval_seconds(floor)  # warm-up: file caches, bytecode
        times: dict[Path, list[float]] = {p: [] for p in [floor, *notebooks]}
        for round_ in range(args.repeats):
            for path in times:
                times[path].append(nbval_seconds(path))
            print(f"round {round_ + 1}/{args.repeats} done", file=sys.stderr)
        floor_median = statistics.median(times[floor])
    print(f"floor (one cell, import torch): median {floor_median:.2f} s over {args.repeats} runs")
    print(f"{'notebook':58} {'median s':>8} {'ratio':>6} {'goal':>5}")
    for path in notebooks:
        median = statistics.median(times[path])
        ratio, goal = median / floor_median, goal_for(path)
        mark = "ok" if ratio <= goal else "SLOW"
        print(f"{str(path.relative_to(ROOT) if path.is_absolute() else path):58} {median:8.2f} {ratio:6.2f} "
              f"{goal:5.1f} {mark}")


if __name__ == "__main__":
    main()
