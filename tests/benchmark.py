"""Time each notebook under nbval as a ratio to the floor: `make bench` (README, "Speed").

It also prints each notebook's peak memory: the largest resident set of any one process of
the run (nbval, the kernel, workers the kernel starts), as the operating system accounts it.
Binder gives a session 2 GB.

The floor is the nbval time of a one-cell notebook that only runs `import torch`: kernel
start, torch import and nbval's own work, which no lesson can avoid. Rounds alternate the
floor and every notebook, and the ratio of medians is printed, so a machine that is busy
or slow shifts both alike. This is a report, not a test: it never fails on a slow result.

Usage: python tests/benchmark.py [--repeats N] [NOTEBOOK ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GOAL = 1.6
GOALS = {"07-": 2.5,  # notebook 07 starts real worker processes (issue: "≤ 2.5× the floor")
         "09-": 3.0}  # notebook 09 trains a real CNN on real data, and runs the checker as a command


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


def nbval_run(path: Path) -> tuple[float, float]:
    """Run strict nbval on one notebook in a new process: (wall seconds, peak MB of one process)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
               str(path)]
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # usage covers every waited-for descendant
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            log.seek(0)
            raise SystemExit(f"{path.name} fails under nbval; fix it before timing it:\n{log.read()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


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
        nbval_run(floor)  # warm-up: file caches, bytecode
        times: dict[Path, list[float]] = {p: [] for p in [floor, *notebooks]}
        peaks: dict[Path, float] = {p: 0.0 for p in times}
        for round_ in range(args.repeats):
            for path in times:
                seconds, peak = nbval_run(path)
                times[path].append(seconds)
                peaks[path] = max(peaks[path], peak)
            print(f"round {round_ + 1}/{args.repeats} done", file=sys.stderr)
        floor_median = statistics.median(times[floor])
    print(f"floor (one cell, import torch): median {floor_median:.2f} s over {args.repeats} runs, "
          f"peak {peaks[floor]:.0f} MB")
    print(f"{'notebook':58} {'median s':>8} {'ratio':>6} {'goal':>5}      {'peak MB':>7}")
    for path in notebooks:
        median = statistics.median(times[path])
        ratio, goal = median / floor_median, goal_for(path)
        mark = "ok  " if ratio <= goal else "SLOW"
        name = str(path.relative_to(ROOT) if path.is_absolute() else path)
        print(f"{name:58} {median:8.2f} {ratio:6.2f} {goal:5.1f} {mark} {peaks[path]:7.0f}")


if __name__ == "__main__":
    main()
