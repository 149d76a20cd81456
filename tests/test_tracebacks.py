"""utils.tracebacks: an error shows the notebook's own failing line and the message, with no
library frames and no machine paths; the exception itself, and nbval's view of it, unchanged."""

import re
import subprocess
import sys

import nbclient
import nbformat
import pytest

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SETUP = "from utils.tracebacks import short_tracebacks\nshort_tracebacks()"
CELLS = [
    "import torch\nw = torch.ones(2, requires_grad=True)\nloss = (w * w).sum()\nloss.backward()\nloss.backward()",
    "def f(x):\n    return g(x)\n\n\ndef g(x):\n    return torch.ones(2) @ torch.ones(x)",
    "y = 1\nf(3)",
    "try:\n    {}['a']\nexcept KeyError as error:\n    raise ValueError('wrapped') from error",
    "x = (1,",
    "from utils.workbooks import cleared\ncleared(None)",
    "print('still running')",
]


def run(cells: list[str]) -> list:
    nb = nbformat.v4.new_notebook()
    for source in cells:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = ["raises-exception"]
        nb.cells.append(cell)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    return nb.cells


@pytest.fixture(scope="module")
def short_and_full():
    return run([SETUP] + CELLS), run(["pass"] + CELLS)


def errors(cell) -> list:
    return [o for o in cell.outputs if o.output_type == "error"]


def text(output) -> str:
    return ANSI.sub("", "\n".join(output.traceback))


def test_the_message_follows_the_failing_line_of_the_cell(short_and_full):
    short, full = short_and_full
    tb = text(errors(short[1])[0])
    assert "----> 5 loss.backward()" in tb and "Cell In[2], line 5" in tb
    lines = tb.splitlines()
    marked = next(i for i, line in enumerate(lines) if line.startswith("----> 5"))
    assert lines[marked + 2].startswith("RuntimeError: Trying to backward through the graph a second time")
    assert len(tb.splitlines()) < len(text(errors(full[1])[0]).splitlines())


def test_frames_of_cells_stay_frames_of_libraries_go(short_and_full):
    short, _ = short_and_full
    tb = text(errors(short[3])[0])
    assert "Cell In[4], line 2" in tb and "in f(x)" in tb and "in g(x)" in tb
    for cell in short[1:]:
        for output in errors(cell):
            assert not re.search(r"site-packages|/work/|/tmp/|/home/|\.py:\d+|File ", text(output)), text(output)


def test_the_exception_is_unchanged_for_nbval(short_and_full):
    short, full = short_and_full
    for a, b in zip(short[1:], full[1:]):
        assert [(o.ename, o.evalue) for o in errors(a)] == [(o.ename, o.evalue) for o in errors(b)]
    assert short[-1].outputs[0].text == "still running\n"


def test_chained_errors_and_syntax_errors_still_read_well(short_and_full):
    short, _ = short_and_full
    chained = text(errors(short[4])[0])
    assert "KeyError: 'a'" in chained and "ValueError: wrapped" in chained and "direct cause" in chained
    syntax = text(errors(short[5])[0])
    assert "SyntaxError" in syntax and "x = (1," in syntax


def test_an_error_raised_inside_the_repositorys_helpers_shows_no_path(short_and_full):
    short, full = short_and_full
    assert errors(short[6]) and "utils/workbooks.py" not in text(errors(short[6])[0])
    assert [o.ename for o in errors(short[6])] == [o.ename for o in errors(full[6])]


def test_full_tracebacks_undoes_it():
    cells = run([SETUP, "from utils.tracebacks import full_tracebacks\nfull_tracebacks()", CELLS[0]])
    assert "site-packages" in text(errors(cells[2])[0]) or "File " in text(errors(cells[2])[0])


def test_outside_ipython_it_does_nothing():
    code = "from utils.tracebacks import short_tracebacks, full_tracebacks\nshort_tracebacks(); full_tracebacks()"
    subprocess.run([sys.executable, "-c", code], check=True)
