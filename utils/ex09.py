"""Checks for the exercises of notebook 09 (debug a real training run).

Exercise 1 predicts a count. Exercise 2 hands the learner `09-broken-train.py`, a training
script with three bugs of the zero_grad family. `check_broken_script` runs the learner's file
as it is, in this kernel, with every optimizer it creates under the guard
(`utils.guard.auto`, with `gradient_accumulation_steps=4`), a `WindowMeter` recording the
micro-batches and loss factors of every step, and hooks on the parameters comparing the
`.grad` each step uses with what backward() added since the last step (a clear the checker
cannot see, or one marked `# zero_grad: intended`, shows there); then it tests the `model`
the script trained. The verdict names the first problem found (the guard's finding with its
line, gradients lost inside a window, a window of the wrong size or weight) and the test
accuracy reached, with hints, never the fix. A script left exactly as handed out (the same
text as `notebooks/09-broken-train.py`, whichever folder its copy sits in) gets its verdict
without spending a try, so that Run All on a fresh copy of the notebook counts none.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import linecache
import os
import re
import sys
import traceback
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook

from utils.digits import WindowMeter, accuracy, load_digits_split
from utils.exercises import OutOfTime, Verdict, _placeholder, check_number, describe, exercise, verdict
from utils.guard import StaleGradientWarning, ZeroGradWarning, auto

SETTINGS = {"num_epochs": 6, "train_batch_size": 16, "gradient_accumulation_steps": 4, "lr": 0.05}
NUM_TRAIN = 1440  # training digits (utils.digits)
GOOD_ACCURACY = 0.97  # the fixed script reaches 98.9 %
TIME_LIMIT_S = 180  # the fixed script trains in seconds; a loaded machine can take 10 times longer
HANDED_OUT = Path(__file__).resolve().parents[1] / "notebooks" / "09-broken-train.py"  # the learner's copy: workbooks/
INTENDED = re.compile(r"#\s*zero_grad:\s*intended", re.IGNORECASE)  # the guard's comment for a clear it skips


@exercise
def check_first_step_of_epoch_two(answer: Any) -> Verdict:
    """Exercise 1: digits in the first step of epoch 2 (batches of 32, 4 a step, partial window leaks)."""
    return check_number(
        answer, 160, what="digits whose gradients the first step of epoch 2 uses",
        hint=["how many micro-batches of 32 make one epoch, and how many whole windows of 4 do they fill?",
              "what does .grad already hold when the second epoch's first window begins?"],
        mistakes=[(128, "that is one full window: what is left in .grad when epoch 2 starts?"),
                  (5, "that counts micro-batches; the question asks for digits"),
                  (32, "one micro-batch is 32 digits; a step waits for gradient_accumulation_steps of them"),
                  (192, "count again: how many micro-batches of 32 are left after the last full window?")],
    )


def _expected_windows(partial_step: bool) -> list[int]:
    k = SETTINGS["gradient_accumulation_steps"]
    micro = -(-NUM_TRAIN // SETTINGS["train_batch_size"])  # 90 per epoch
    epoch = [k] * (micro // k) + ([micro % k] if partial_step and micro % k else [])
    return epoch * SETTINGS["num_epochs"]


def _where(filename: str | None, lineno: int | None) -> str:
    if not filename or lineno is None:
        return ""
    name = Path(filename).name
    code = linecache.getline(filename, lineno).strip()
    return f"line {lineno} of {name}" + (f" ({code})" if code else "")


class _AddedMeter:
    """Per optimizer step, `.grad` against what backward() added since the last step, over all parameters.

    A global forward pre-hook puts a hook on each parameter of every module run, before its
    first backward(); the hook adds up the gradients on their way into `.grad`. At each step,
    `steps` gets (scale, cosine): |.grad| / |added| and the cosine between them. (1, 1) when the
    step uses exactly what its window computed; a cosine below 1 when some of it was cleared or
    changed; a scale alone when `.grad` was multiplied as a whole (say, divided by 4).
    """

    def __init__(self) -> None:
        self.added: dict[int, list[Any]] = {}  # id(p) -> [p, sum since the last step or None]
        self.steps: list[tuple[float, float]] = []
        self.handles = [register_module_forward_pre_hook(self._on_forward),
                        register_optimizer_step_pre_hook(self._on_step)]

    def _on_forward(self, module: torch.nn.Module, args: tuple) -> None:
        for p in module.parameters():
            if p.requires_grad and id(p) not in self.added:
                self.added[id(p)] = [p, None]
                self.handles.append(p.register_hook(partial(self._add, id(p))))

    def _add(self, key: int, grad: torch.Tensor) -> None:
        entry = self.added[key]
        entry[1] = grad.detach().clone() if entry[1] is None else entry[1] + grad.detach()

    def _on_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        grads, added = [], []
        for p in (p for group in optimizer.param_groups for p in group["params"]):
            entry = self.added.get(id(p), [p, None])
            grads.append(torch.zeros_like(p).flatten() if p.grad is None else p.grad.detach().flatten())
            added.append(torch.zeros_like(p).flatten() if entry[1] is None else entry[1].flatten())
            entry[1] = None
        grad, total = torch.cat(grads).double(), torch.cat(added).double()
        if total.norm() == 0:  # nothing computed since the last step: nothing to lose
            self.steps.append((1.0, 1.0) if grad.norm() == 0 else (float("inf"), 0.0))
        else:
            cosine = torch.nn.functional.cosine_similarity(grad, total, dim=0).item()
            self.steps.append(((grad.norm() / total.norm()).item(), cosine))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _run(script: Path) -> tuple[dict[str, Any], list[Any], WindowMeter, _AddedMeter, str | None]:
    """Run the script guarded and metered: (its globals, the guards, the meters, what went wrong or None).

    The script runs as `python script.py` would run it (`__name__ == "__main__"`), in globals
    kept by the check even when it stops early; its printed output is not shown.
    """
    saved_argv = sys.argv[:]
    sys.argv = [str(script)]
    problem = None
    scope: dict[str, Any] = {"__name__": "__main__", "__file__": str(script), "__builtins__": __builtins__}
    meter, added = WindowMeter(), _AddedMeter()
    auto.install(max_warnings=1, gradient_accumulation_steps=SETTINGS["gradient_accumulation_steps"])
    try:
        code = compile(script.read_bytes(), str(script), "exec")
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("error", ZeroGradWarning)  # stop at the first finding
            exec(code, scope)
    except ZeroGradWarning:
        pass  # the finding is in its guard's findings
    except OutOfTime:
        problem = f"it was still running after {TIME_LIMIT_S} s; the fixed script trains in a few seconds"
    except SystemExit as error:
        if error.code not in (None, 0):
            problem = f"it exited with sys.exit({error.code!r})"
    except SyntaxError as error:
        problem = f"it does not compile: line {error.lineno}: {error.msg}"
    except Exception as error:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == str(script)]
        place = f"line {frames[-1].lineno} ({frames[-1].line}): " if frames else ""
        problem = f"it raised {type(error).__name__} at {place}{' '.join(str(error).split())[:200]}"
    finally:
        guards = auto.uninstall()
        meter.remove()
        added.remove()
        sys.argv = saved_argv
    return scope, guards, meter, added, problem


def _settings_changed(scope: dict[str, Any], guards: list[Any]) -> str | None:
    for name, value in SETTINGS.items():
        if scope.get(name) != value:
            return f"{name} is {scope.get(name, 'gone')!r}, the script had {value}"
    if len(guards) != 1 or type(guards[0].optimizer) is not torch.optim.SGD:
        return f"{len(guards)} optimizers of kinds {[type(g.optimizer).__name__ for g in guards]}, the script had one SGD"
    groups = guards[0].optimizer.param_groups
    original = torch.optim.SGD([torch.zeros(1)], lr=SETTINGS["lr"], momentum=0.9).param_groups[0]
    for key, value in original.items():
        if key != "params" and any(group.get(key) != value for group in groups):
            found = sorted({repr(group.get(key)) for group in groups})
            return f"SGD with {key}={', '.join(found)}; the script had {key}={value!r} (lr=0.05, momentum=0.9)"
    return None


def _as_handed_out(script: Path) -> bool:
    """Whether the script is the one handed out, unchanged (line ends aside)."""
    try:
        return script.read_bytes().replace(b"\r\n", b"\n") == HANDED_OUT.read_bytes().replace(b"\r\n", b"\n")
    except OSError:
        return False


def _not_a_name(path: Any, what: str) -> Verdict:
    """The verdict on an answer that is no file name: say what it is."""
    wanted = "the file name of your script, in quotes: '09-broken-train.py'"
    if isinstance(path, (list, tuple)) and len(path) == 1 and isinstance(path[0], (str, os.PathLike)):
        return verdict(False, what, wanted=wanted, got=f"a {type(path).__name__} holding one name",
                       hint="pass the name itself, in quotes, without the brackets")
    if isinstance(path, io.IOBase):
        return verdict(False, what, wanted=wanted, got="an open file",
                       hint="the check opens the script itself: pass its name, in quotes")
    got = (f"the module {getattr(path, '__name__', '')}" if inspect.ismodule(path) else
           "a generator" if inspect.isgenerator(path) else describe(path))
    return verdict(False, what, wanted=wanted, got=got,
                   hint="pass the script's name as text, as the cell hands it out: "
                   "ex09.check_broken_script(\"09-broken-train.py\")")


def _file_name(path: Any) -> str | None:
    """The name as text, or None where `path` is no file name (bytes are one)."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None
    try:
        name = os.fsdecode(path)
    except (TypeError, ValueError):  # a PathLike whose __fspath__ gives no name
        return None
    return name


def _is(script: Path, test: str) -> bool:
    """Path.is_file() or .is_dir(), False for a name the system cannot look up (too long, say)."""
    try:
        return getattr(script, test)()
    except (OSError, ValueError):
        return False


def _no_script(name: str, script: Path, what: str) -> Verdict | None:
    """The verdict on a name that is no .py file here, or None where it is one."""
    wanted = "a .py file in this notebook's folder, such as '09-broken-train.py'"
    if not name.strip():
        return verdict(False, what, wanted="the file name of your script, in quotes: '09-broken-train.py'",
                       got="an empty name" if not name else "a name of blanks only")
    if _is(script, "is_file") and script.suffix == ".py":
        return None
    if _is(script, "is_dir"):
        got, hint = "a folder", "name the script inside it"
    elif _is(script, "is_file"):
        got = f"a {script.suffix} file, not a .py file" if script.suffix else "a file, not a .py file"
        hint = "the check runs the training script, the .py file, not this one"
    elif not script.suffix and _is(script.with_name(script.name + ".py"), "is_file"):
        got, hint = "no such .py file here", "add .py at the end of the name"
    else:
        too_long = len(name) > 255 or any(len(part) > 255 for part in script.parts)
        got = "a name too long for a file" if too_long else "no such .py file here"
        hint = "check the spelling; the file sits beside this notebook"
    return verdict(False, what, wanted=wanted, got=got, hint=hint)


@exercise(time_limit_s=TIME_LIMIT_S)
def check_broken_script(path: Any) -> Verdict:
    """Exercise 2: run the learner's fixed script, guarded and metered, then test its model."""
    what = "your script trains the CNN with no zero_grad bug left"
    if (early := _placeholder(path, what)) is not None:
        return early
    name = _file_name(path)
    if name is None:
        return _not_a_name(path, what)
    shown = " ".join(name.split())
    shown = shown if len(shown) <= 40 else "..." + shown[-37:]  # the end of a long path: the file's name
    what = f"{shown or 'your script'} trains the CNN with no zero_grad bug left"
    script = Path(name)
    if (wrong := _no_script(name, script, what)) is not None:
        return wrong
    say = functools.partial(verdict, counts=not _as_handed_out(script))
    if auto.installed():
        return verdict(False, what, wanted="the checker's notebook extension unloaded",
                       got="it is still loaded in this kernel", hint="run %unload_ext utils.guard, then the check")
    scope, guards, meter, added, problem = _run(script)
    if problem:
        return say(False, what, wanted="the script to run to its end", got=problem,
                   hint="does a loop never end?" if "still running" in problem else
                   "read the error, mend the script, save it, run the check again")
    if not isinstance(scope.get("model"), torch.nn.Module):
        got = (f"model is {type(scope['model']).__name__}" if "model" in scope else
               "no variable `model` when the script ends")
        return say(False, what, wanted="the trained network left in the variable `model`, at the top level "
                   "of the script", got=got, hint="keep the script's names and its shape: the check reads `model`")
    changed = _settings_changed(scope, guards)
    if changed:
        return say(False, what, wanted="the script's settings and optimizer as they were",
                   got=changed, hint="the bugs are in the training loop: leave the settings alone")
    k = SETTINGS["gradient_accumulation_steps"]
    counts = meter.micro_batches()
    findings = [f for g in guards for f in g.findings]
    leak = any(count > k for count in counts)
    leak_hints = [f"an epoch is {-(-NUM_TRAIN // SETTINGS['train_batch_size'])} micro-batches: what becomes "
                  f"of those after its last full window of {k}?",
                  "their gradients are still in .grad when the next epoch begins (notebook 09, section 5)"]
    if findings:
        first = findings[0]
        said = first.message.split(" Fix:")[0].split(" If the clear")[0]
        got = f"{first.kind.__name__} at {_where(first.filename, first.lineno)}: {said}"
        if first.kind is StaleGradientWarning and leak:
            hint = leak_hints
        elif first.kind is StaleGradientWarning:
            hint = ["which gradients does .grad still hold when optimizer.step() runs?",
                    "each step must start from a .grad that no earlier step used"]
        else:
            hint = ["the line it names threw gradients away: which backward() calls should feed one step?",
                    f"with gradient accumulation, .grad must keep what the {k} micro-batches of a window add "
                    "until optimizer.step() uses it"]
        return say(False, what, wanted="the checker silent (the check stops at its first finding)",
                   got=got, hint=hint)
    lost = next((i for i, (_, cosine) in enumerate(added.steps) if cosine < 1 - 1e-6), None)
    if lost is not None:
        marked = script.is_file() and INTENDED.search(script.read_text(errors="replace")) is not None
        return say(False, what, wanted="each step to use every gradient its window's backward() calls computed",
                   got=f"step {lost + 1}: .grad held only part of what backward() added since "
                   f"{'step ' + str(lost) if lost else 'the start'}, and the checker saw no clear"
                   + (" (a line ends with `# zero_grad: intended`: that silences the checker, not the bug)"
                      if marked else ""),
                   hint=["something clears or changes .grad between two backward() calls of one window, "
                         "where the checker cannot see it: which lines touch .grad?",
                         "with gradient accumulation, .grad must keep what the micro-batches of a window add "
                         "until optimizer.step() uses it"])
    if not counts:
        return say(False, what, wanted="optimizer.step() once per window of micro-batches",
                   got="no optimizer.step() with a backward() before it", hint="keep the step in the loop")
    if not any(counts):
        return say(False, what, wanted="each loss computed with the script's `loss_fn`",
                   got=f"{len(counts)} steps, and no loss went through an nn loss module such as loss_fn",
                   hint="the check follows each loss through loss_fn: keep `loss = loss_fn(model(X), y)`")
    if leak:
        step = next(i for i, count in enumerate(counts) if count > k) + 1
        return say(False, what, wanted=f"{k} micro-batches per step",
                   got=f"step {step} used the gradients of {counts[step - 1]} micro-batches", hint=leak_hints)
    if counts not in (_expected_windows(False), _expected_windows(True)):
        sizes = sorted(set(counts))
        return say(False, what, wanted=f"every epoch {len(_expected_windows(False)) // SETTINGS['num_epochs']} "
                   f"steps of {k} micro-batches (and perhaps one for the micro-batches left over)",
                   got=f"{len(counts)} steps, of {sizes} micro-batches",
                   hint=f"one step per window of gradient_accumulation_steps = {k} micro-batches")
    scales = [scale for scale, _ in added.steps] if len(added.steps) == len(counts) else [1.0] * len(counts)
    weights = [(low * scale, high * scale) for (low, high), scale in zip(meter.sample_weights(), scales)]
    wrong = [i for i, (low, high) in enumerate(weights) if abs(low - 1) > 1e-6 or abs(high - 1) > 1e-6]
    if wrong:
        i = wrong[0]
        low, high = weights[i]
        got = (f"step {i + 1}: each digit counts {high:.3g} times as much as in the mean over the step's "
               f"{sum(n for n, _ in meter.steps[i])} digits" if abs(high - low) < 1e-6 else
               f"step {i + 1}: digits count from {low:.3g} to {high:.3g} times their share of the mean")
        if counts[i] == k:
            hint = [f"how large is the gradient of a window of {k} micro-batches, next to one batch of all "
                    "its digits?",
                    "each micro-batch adds the gradient of its mean loss; what do the means of a window add "
                    "up to? (notebook 05, section 3)"]
        else:
            hint = ["the last, partial window of an epoch holds fewer micro-batches than the others: what "
                    "should each one weigh?",
                    "what share of the partial window's digits does each of its micro-batches hold? "
                    "(notebook 05, section 5a)"]
        return say(False, what, wanted="each step's gradient the mean over its digits", got=got, hint=hint)
    model = scope["model"]
    device = next(model.parameters()).device
    data = load_digits_split(device=device, dtype=next(model.parameters()).dtype)
    reached = accuracy(model, data.X_test, data.y_test)
    if reached < GOOD_ACCURACY:
        return say(False, what, wanted=f"test accuracy of at least {GOOD_ACCURACY:.0%}",
                   got=f"{reached:.1%}", hint="is the `model` at the end the network the loop trained?")
    left_over = ("micro-batches left over are left out" if counts == _expected_windows(False) else
                 "each epoch's last step those of its micro-batches left over")
    return say(True, f"{what}: the checker is silent; each of its {len(counts)} steps uses the mean "
               f"gradient of {k * SETTINGS['train_batch_size']} digits ({left_over}); the model reaches "
               f"{reached:.1%} test accuracy")
