"""tests/tidy_tracebacks.py: stored tracebacks lose this machine's paths, nothing else."""

import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).parent))  # tidy_tracebacks.py is a script beside this file
from tidy_tracebacks import ROOT, tidy, tidy_notebook  # noqa: E402


def test_library_and_repository_paths_are_shortened():
    line = "File \x1b[0;32m/home/you/.venv/lib/python3.11/site-packages/torch/_tensor.py:625\x1b[0m"
    assert tidy(line) == "File \x1b[0;32m.../torch/_tensor.py:625\x1b[0m"
    assert tidy(f"File {ROOT}/utils/launcher.py:120, in run_job") == "File utils/launcher.py:120, in run_job"
    assert tidy("RuntimeError: grad can be implicitly created only for scalar outputs") == (
        "RuntimeError: grad can be implicitly created only for scalar outputs"
    )


def test_notebook_is_rewritten_in_place(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 / 0")
    cell.outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                                           traceback=["/usr/lib/python3/dist-packages/x.py:1", "plain"])]
    nb.cells.append(cell)
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert tidy_notebook(path) == 1
    assert nbformat.read(path, as_version=4).cells[0].outputs[0]["traceback"] == [".../x.py:1", "plain"]
    assert tidy_notebook(path) == 0
