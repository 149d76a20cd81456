"""utils.ex09: the broken-script check passes right fixes, names what is left in wrong ones, never the fix."""

from pathlib import Path

import pytest
import torch

from utils import ex09
from utils.exercises import REVEAL_AFTER, reset_tries, tries
from utils.guard import auto

ROOT = Path(__file__).resolve().parents[1]
BROKEN = (ROOT / "notebooks" / "09-broken-train.py").read_text()
FIXED = ROOT / "notebooks" / "solutions" / "09-fixed-train.py"
PARTIAL_STEP = ROOT / "notebooks" / "solutions" / "09-fixed-train-partial-step.py"

# The broken loop, line by line, and pieces to build other loops from.
ZERO_FIRST = "        optimizer.zero_grad()\n        loss = loss_fn(model(X), y)\n"
STEP = ("        if (i + 1) % gradient_accumulation_steps == 0:\n"
        "            optimizer.step()\n")


@pytest.fixture(autouse=True)
def fresh_tries():
    reset_tries()


def variant(tmp_path, text, name="train.py"):
    assert text != BROKEN or name == "copy.py"
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def edit(*pairs):
    text = BROKEN
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    return text


ZERO_AFTER_STEP = (ZERO_FIRST, "        loss = loss_fn(model(X), y)\n"), (
    STEP, STEP + "            optimizer.zero_grad()\n")
DIVIDE = ("        loss.backward()\n", "        (loss / gradient_accumulation_steps).backward()\n")
DROP = ("    for i, (X, y) in enumerate(micro_batches):\n",
        "    whole = len(micro_batches) // gradient_accumulation_steps * gradient_accumulation_steps\n"
        "    for i, (X, y) in enumerate(micro_batches[:whole]):\n")


def check(path, capsys):
    assert not auto.installed()
    result = ex09.check_broken_script(path)
    out = capsys.readouterr().out
    assert result.message in out and not auto.installed(), "printed, and every guard removed"
    assert not torch.optim.Optimizer.__init__.__name__ == "init_and_guard"
    return Said(result.passed, " ".join(result.message.split()))


class Said:
    """A verdict's outcome and its message on one line (verdicts wrap at 88 characters)."""

    def __init__(self, passed, message):
        self.passed, self.message = passed, message


# -- right fixes ---------------------------------------------------------------------------------------
def test_the_solution_passes_with_its_accuracy(capsys):
    result = check(str(FIXED), capsys)
    assert result.passed and "98.9% test accuracy" in result.message and "132 steps" in result.message


def test_stepping_on_the_partial_window_weighted_by_its_share_passes(capsys):
    result = check(str(PARTIAL_STEP), capsys)
    assert result.passed and "138 steps" in result.message and "left over" in result.message


def test_the_three_fixes_written_another_way_pass(tmp_path, capsys):
    text = edit(*ZERO_AFTER_STEP, DIVIDE, DROP)
    assert check(variant(tmp_path, text), capsys).passed
    # zero_grad at the top of each window instead of after the step
    text = edit(DIVIDE, DROP, (ZERO_FIRST, "        if i % gradient_accumulation_steps == 0:\n"
                               "            optimizer.zero_grad()\n        loss = loss_fn(model(X), y)\n"))
    assert check(variant(tmp_path, text, "other.py"), capsys).passed


def test_fixes_written_other_ways_pass(tmp_path, capsys):
    fixed = FIXED.read_text()
    summed = fixed.replace("torch.nn.CrossEntropyLoss()", 'torch.nn.CrossEntropyLoss(reduction="sum")').replace(
        "(loss / gradient_accumulation_steps)", "(loss / (gradient_accumulation_steps * train_batch_size))")
    assert check(variant(tmp_path, summed, "summed.py"), capsys).passed, "a summed loss divided by the window"
    grad_divided = fixed.replace("(loss / gradient_accumulation_steps).backward()", "loss.backward()").replace(
        "            optimizer.step()\n", "            for p in model.parameters():\n"
        "                p.grad /= gradient_accumulation_steps\n            optimizer.step()\n")
    assert check(variant(tmp_path, grad_divided, "divided.py"), capsys).passed, ".grad divided before the step"
    own = fixed.replace("            optimizer.zero_grad()  # bug 1: once per window, after the step\n",
                        "            for p in model.parameters():\n                p.grad = None\n")
    assert check(variant(tmp_path, own, "own.py"), capsys).passed, "p.grad = None by hand"


@pytest.mark.parametrize("clear, said", [
    ("optimizer.zero_grad()  # zero_grad: intended", "that silences the checker, not the bug"),
    ("for p in model.parameters():\n            if p.grad is not None:\n                p.grad.zero_()", "saw no clear"),
    ("for p in model.parameters():\n            if p.grad is not None:\n                p.grad.mul_(0)", "saw no clear"),
])
def test_a_clear_inside_the_window_that_the_checker_cannot_see_is_found(tmp_path, capsys, clear, said):
    text = FIXED.read_text().replace("        loss = loss_fn(model(X), y)\n",
                                     f"        {clear}\n        loss = loss_fn(model(X), y)\n")
    result = check(variant(tmp_path, text), capsys)
    assert not result.passed and "step 1: .grad held only part of what backward() added" in result.message
    assert said in result.message and "which lines touch .grad" in result.message


def test_a_loss_that_bypasses_loss_fn_gets_told_what_the_check_follows(tmp_path, capsys):
    text = FIXED.read_text().replace("loss = loss_fn(model(X), y)",
                                     "loss = torch.nn.functional.cross_entropy(model(X), y)")
    result = check(variant(tmp_path, text), capsys)
    assert not result.passed and "no loss went through an nn loss module" in result.message


def test_a_script_with_no_model_at_its_top_level(tmp_path, capsys):
    body = FIXED.read_text().split('"""', 2)[2]
    text = "def main():\n" + "\n".join(f"    {line}" for line in body.splitlines()) + "\n\n\nmain()\n"
    result = check(variant(tmp_path, text), capsys)
    assert not result.passed and "no variable `model` when the script ends" in result.message


def test_a_script_that_never_ends_gets_a_verdict(tmp_path, capsys, monkeypatch):
    from utils.exercises import _time_limit

    text = FIXED.read_text().replace('print(f"test accuracy', 'while True:\n    pass\nprint(f"test accuracy')
    with _time_limit(3):
        result = ex09.check_broken_script.__wrapped__(variant(tmp_path, text))
    message = " ".join(result.message.split())
    assert not result.passed and "it was still running after" in message and "does a loop never end" in message
    assert not auto.installed()


# -- what is left, one problem at a time -------------------------------------------------------------
def test_the_broken_script_gets_the_guards_finding_with_its_line(capsys):
    result = check(str(ROOT / "notebooks" / "09-broken-train.py"), capsys)
    assert not result.passed and "DiscardedGradientWarning" in result.message
    line = BROKEN.splitlines().index("        optimizer.zero_grad()") + 1
    assert f"line {line} of 09-broken-train.py (optimizer.zero_grad())" in result.message
    assert "Fix:" not in result.message, "the guard's own fix is not handed out"


def test_with_zero_grad_moved_the_leak_is_next(tmp_path, capsys):
    result = check(variant(tmp_path, edit(*ZERO_AFTER_STEP)), capsys)
    text = result.message
    assert not result.passed and "StaleGradientWarning" in text and "5 backward() calls" not in text
    assert "6 backward() calls, more than gradient_accumulation_steps=4" in text
    assert "after its last full window" in text


def test_with_the_leak_stopped_the_missing_division_is_named_by_its_size(tmp_path, capsys):
    result = check(variant(tmp_path, edit(*ZERO_AFTER_STEP, DROP)), capsys)
    text = result.message
    assert not result.passed and "each digit counts 4 times as much as in the mean over the step's 64 digits" in text
    assert "how large is the gradient of a window" in text
    assert "/ gradient_accumulation_steps" not in text, "never the fix"


def test_the_leak_alone_is_found_even_without_the_guards_window_option(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(ex09.SETTINGS, "gradient_accumulation_steps", 4)
    install = auto.install
    monkeypatch.setattr(auto, "install", lambda **kw: install(**{**kw, "gradient_accumulation_steps": None}))
    result = check(variant(tmp_path, edit(*ZERO_AFTER_STEP, DIVIDE)), capsys)
    text = result.message
    assert not result.passed and "step 23 used the gradients of 6 micro-batches" in text


def test_a_partial_window_divided_by_4_counts_half(tmp_path, capsys):
    text = edit(*ZERO_AFTER_STEP, DIVIDE, (STEP, "        if (i + 1) % gradient_accumulation_steps == 0 "
                                           "or i + 1 == len(micro_batches):\n            optimizer.step()\n"))
    result = check(variant(tmp_path, text), capsys)
    message = result.message
    assert not result.passed and "step 23: each digit counts 0.5 times" in message
    assert "partial window" in message


def test_clearing_the_leftovers_at_the_next_epoch_is_lost_work(tmp_path, capsys):
    text = edit(*ZERO_AFTER_STEP, DIVIDE, ("    for i, (X, y) in enumerate(micro_batches):\n",
                                           "    optimizer.zero_grad()\n    for i, (X, y) in enumerate(micro_batches):\n"))
    result = check(variant(tmp_path, text), capsys)
    assert not result.passed and "DiscardedGradientWarning" in result.message


@pytest.mark.parametrize("pairs, found", [
    ([(ZERO_FIRST, "        loss = loss_fn(model(X), y)\n"), DIVIDE, DROP], "StaleGradientWarning"),  # never cleared
    ([(ZERO_FIRST, "        loss = loss_fn(model(X), y)\n"), DIVIDE, DROP,
      (STEP, "        if (i + 1) % gradient_accumulation_steps == 0:\n            optimizer.zero_grad()\n"
             "            optimizer.step()\n")], "DiscardedGradientWarning"),  # cleared before the step
    ([("gradient_accumulation_steps = 4", "gradient_accumulation_steps = 1")], "gradient_accumulation_steps is 1"),
    ([("lr = 0.05", "lr = 0.01")], "lr is 0.01"),
    ([("momentum=0.9", "momentum=0.0")], "momentum=0.0"),
    ([("momentum=0.9)", "momentum=0.9, nesterov=True)")], "nesterov=True"),
    ([("momentum=0.9)", "momentum=0.9, weight_decay=1e-4)")], "weight_decay=0.0001"),
    ([("optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)",
       "optimizer = torch.optim.Adam(model.parameters(), lr=lr)")], "Adam"),
    ([("loss.backward()", "loss.backward(\n")], "does not compile"),
    ([("loss.backward()", "loss.backward()\n        raise ValueError('mine')")], "ValueError at line"),
    ([("import torch\n", "import sys\nimport torch\nsys.exit(2)\n")], "sys.exit(2)"),
    ([(STEP, "")] + list(ZERO_AFTER_STEP[:1]), "no optimizer.step()"),
])
def test_wrong_fixes_get_a_verdict_that_names_the_problem(tmp_path, capsys, pairs, found):
    result = check(variant(tmp_path, edit(*pairs)), capsys)
    assert not result.passed
    assert found in result.message


def test_the_trained_model_must_be_left_in_model(tmp_path, capsys):
    text = FIXED.read_text().replace('.1%}")\n', '.1%}")\nmodel = None\n')
    result = check(variant(tmp_path, text), capsys)
    assert not result.passed and "model is NoneType" in result.message


def test_stepping_every_micro_batch_is_not_accumulation(tmp_path, capsys):
    text = edit(*ZERO_AFTER_STEP, DIVIDE, ("if (i + 1) % gradient_accumulation_steps == 0:", "if True:"))
    result = check(variant(tmp_path, text), capsys)
    assert not result.passed and "540 steps, of [1] micro-batches" in result.message


def test_hints_climb_a_ladder_and_no_answer_value_is_revealed(tmp_path, capsys):
    changed = BROKEN.replace("lr = 0.05\n", "lr = 0.05  # a learner's note: the script is no longer as handed out\n")
    path = str(variant(tmp_path, changed))
    first = check(path, capsys)
    second = check(path, capsys)
    assert "which backward() calls should feed one step" in first.message
    assert "until optimizer.step() uses it" in second.message
    for _ in range(REVEAL_AFTER):
        last = check(path, capsys)
    assert "expected:" not in last.message
    asked = ex09.check_broken_script(path, reveal=True)
    assert "no single value to show here" in asked.message


@pytest.mark.parametrize("answer, says", [
    (..., "replace the ..."), (None, "file name of your script"), (3, "file name"), ("nope.py", "no such .py file"),
    (".", "a folder"), ("Makefile", "not a .py file"), (Path("missing.py"), "no such .py file"),
])
def test_bad_input_gets_a_verdict(answer, says, capsys):
    result = ex09.check_broken_script(answer)
    assert not result.passed and says in result.message


def test_the_check_refuses_to_run_under_the_notebook_extension(capsys):
    auto.install()
    try:
        result = ex09.check_broken_script(str(FIXED))
    finally:
        auto.uninstall()
    assert not result.passed and "%unload_ext utils.guard" in result.message


def test_the_check_leaves_the_kernels_random_state_and_argv_alone(capsys):
    import sys

    torch.manual_seed(5)
    state, argv = torch.get_rng_state(), sys.argv[:]
    ex09.check_broken_script(str(FIXED))
    assert torch.equal(torch.get_rng_state(), state) and sys.argv == argv


# -- exercise 1 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, passed, says", [
    (160, True, "is 160"), (160.0, True, "is 160"), (torch.tensor(160), True, "is 160"),
    (128, False, "one full window"), (5, False, "counts micro-batches"), (192, False, "count again"),
    (1000, False, "too far from 0"), ("160", False, "without quotes"), (..., False, "replace the ..."),
])
def test_exercise_1(answer, passed, says, capsys):
    result = ex09.check_first_step_of_epoch_two(answer)
    assert result.passed is passed and says in result.message
    assert passed or "160" not in result.message.replace("check_first", "")


# -- review: the script as handed out is no try; odd inputs --------------------------------------------
def learner_copy(tmp_path, text=BROKEN, name="09-broken-train.py"):
    """A learner's copy of the script, beside their copy of the notebook (workbooks/, not notebooks/)."""
    folder = tmp_path / "workbooks"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_the_script_as_handed_out_spends_no_try_and_reveals_nothing(tmp_path, capsys, monkeypatch):
    """Run All on a fresh copy, again and again: the untouched script gets the checker's finding, no try."""
    monkeypatch.chdir(learner_copy(tmp_path).parent)  # the notebook's cell names the file beside it
    for _ in range(REVEAL_AFTER + 1):
        result = check("09-broken-train.py", capsys)
        assert not result.passed and "DiscardedGradientWarning" in result.message
        assert "Fix:" not in result.message and "answer:" not in result.message
    assert tries(ex09.check_broken_script) == 0
    assert not check(str(ROOT / "notebooks" / "09-broken-train.py"), capsys).passed  # the original itself
    assert tries(ex09.check_broken_script) == 0
    windows = learner_copy(tmp_path, BROKEN.replace("\n", "\r\n"), "saved-on-windows.py")
    assert not check(str(windows), capsys).passed  # the same lines, saved with Windows line ends
    assert tries(ex09.check_broken_script) == 0


def test_a_changed_script_counts_as_a_try_even_if_still_broken(tmp_path, capsys):
    path = learner_copy(tmp_path, BROKEN.replace("lr = 0.05\n", "lr = 0.05  # looked at it\n"))
    assert not check(str(path), capsys).passed
    assert tries(ex09.check_broken_script) == 1


@pytest.mark.parametrize("answer, got, says", [
    (None, "got: None", "file name of your script"),
    (ex09, "got: the module utils.ex09", "as the cell hands it out"),
    ((c for c in "09-broken-train.py"), "got: a generator", "pass the script's name as text"),
    (Path, "the class Path (not an instance of it)", "file name of your script"),
    (["09-broken-train.py"], "a list holding one name", "the name itself, in quotes, without the brackets"),
    ("", "an empty name", "file name of your script"),
    ("a" * 5000 + ".py", "a name too long", "check the spelling"),
    ("09-broken-train", "no such .py file here", "add .py"),
    ("09-debug-a-real-run.ipynb", "a .ipynb file, not a .py file", "the training script, the .py file"),
])
def test_odd_inputs_are_told_what_they_are(answer, got, says, capsys, monkeypatch):
    monkeypatch.chdir(ROOT / "notebooks")
    result = ex09.check_broken_script(answer)
    message = " ".join(result.message.split())
    assert not result.passed and got in message and says in message and "NoneType" not in message
    assert len(result.message.splitlines()[0]) <= 88, "the title stays one line, whatever the name"


def test_a_name_given_as_bytes_or_an_open_file(capsys, monkeypatch):
    monkeypatch.chdir(ROOT / "notebooks")
    result = ex09.check_broken_script(b"09-broken-train.py")
    assert not result.passed and "DiscardedGradientWarning" in result.message, "bytes name a file too"
    assert tries(ex09.check_broken_script) == 0
    with open("09-broken-train.py") as opened:
        result = ex09.check_broken_script(opened)
    message = " ".join(result.message.split())
    assert not result.passed and "an open file" in message and "pass its name, in quotes" in message
