"""Checks for the exercises of notebook 09 (debug a real training run).

Exercise 1 predicts a count. Exercise 2 hands the learner `09-broken-train.py`, a training
script with three bugs of the zero_grad family. `check_broken_script` runs the learner's file
as it is, in this kernel, with every optimizer it creates under the guard
(`utils.guard.auto`, with `gradient_accumulation_steps=4`) and a `WindowMeter` recording the
micro-batches and loss factors of every step; then it tests the `model` the script trained.
The verdict names the first problem found (the guard's finding with its line, a window of
the wrong size or weight) and the test accuracy reached, with hints, never the fix.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

from utils.digits import WindowMeter, accuracy, load_digits_split
from utils.exercises import Verdict, _placeholder, check_number, exercise, verdict
from utils.guard import StaleGradientWarning, ZeroGradWarning, auto

SETTINGS = {"num_epochs": 6, "train_batch_size": 16, "gradient_accumulation_steps": 4, "lr": 0.05}
NUM_TRAIN = 1440  # training digits (utils.digits)
GOOD_ACCURACY = 0.97  # the fixed script reaches 98.9 %


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


def _run(script: Path) -> tuple[dict[str, Any], list[Any], WindowMeter, str | None]:
    """Run the script guarded and metered: (its globals, the guards, the meter, what went wrong or None).

    The script runs as `python script.py` would run it (`__name__ == "__main__"`), in globals
    kept by the check even when it stops early; its printed output is not shown.
    """
    saved_argv = sys.argv[:]
    sys.argv = [str(script)]
    problem = None
    scope: dict[str, Any] = {"__name__": "__main__", "__file__": str(script), "__builtins__": __builtins__}
    meter = WindowMeter()
    auto.install(max_warnings=1, gradient_accumulation_steps=SETTINGS["gradient_accumulation_steps"])
    try:
        code = compile(script.read_bytes(), str(script), "exec")
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("error", ZeroGradWarning)  # stop at the first finding
            exec(code, scope)
    except ZeroGradWarning:
        pass  # the finding is in its guard's findings
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
        sys.argv = saved_argv
    return scope, guards, meter, problem


def _settings_changed(scope: dict[str, Any], guards: list[Any]) -> str | None:
    for name, value in SETTINGS.items():
        if scope.get(name) != value:
            return f"{name} is {scope.get(name, 'gone')!r}, the script had {value}"
    if len(guards) != 1 or type(guards[0].optimizer) is not torch.optim.SGD:
        return f"{len(guards)} optimizers of kinds {[type(g.optimizer).__name__ for g in guards]}, the script had one SGD"
    group = guards[0].optimizer.param_groups[0]
    if group["lr"] != SETTINGS["lr"] or group["momentum"] != 0.9:
        return f"SGD with lr={group['lr']}, momentum={group['momentum']}; the script had lr=0.05, momentum=0.9"
    return None


@exercise(time_limit_s=180)
def check_broken_script(path: Any) -> Verdict:
    """Exercise 2: run the learner's fixed script, guarded and metered, then test its model."""
    what = "your script trains the CNN with no zero_grad bug left"
    if (early := _placeholder(path, what)) is not None:
        return early
    if not isinstance(path, (str, os.PathLike)):
        return verdict(False, what, wanted="the file name of your script, in quotes: '09-broken-train.py'",
                       got=f"{type(path).__name__}")
    what = f"{os.fspath(path)} trains the CNN with no zero_grad bug left"
    script = Path(path)
    if not script.is_file() or script.suffix != ".py":
        return verdict(False, what, wanted="a .py file in this notebook's folder, such as '09-broken-train.py'",
                       got="a folder" if script.is_dir() else "not a .py file" if script.is_file()
                       else "no such .py file here",
                       hint="check the spelling; the file sits beside this notebook")
    if auto.installed():
        return verdict(False, what, wanted="the checker's notebook extension unloaded",
                       got="it is still loaded in this kernel", hint="run %unload_ext utils.guard, then the check")
    scope, guards, meter, problem = _run(script)
    if problem:
        return verdict(False, what, wanted="the script to run to its end", got=problem,
                       hint="read the error, mend the script, save it, run the check again")
    if not isinstance(scope.get("model"), torch.nn.Module):
        return verdict(False, what, wanted="the trained network left in the variable `model`",
                       got=f"model is {type(scope.get('model')).__name__}", hint="keep the script's names")
    changed = _settings_changed(scope, guards)
    if changed:
        return verdict(False, what, wanted="the script's settings and optimizer as they were",
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
        return verdict(False, what, wanted="the checker silent (the check stops at its first finding)",
                       got=got, hint=hint)
    if not counts:
        return verdict(False, what, wanted="optimizer.step() once per window of micro-batches",
                       got="no optimizer.step() with a backward() before it", hint="keep the step in the loop")
    if leak:
        step = next(i for i, count in enumerate(counts) if count > k) + 1
        return verdict(False, what, wanted=f"{k} micro-batches per step",
                       got=f"step {step} used the gradients of {counts[step - 1]} micro-batches", hint=leak_hints)
    if counts not in (_expected_windows(False), _expected_windows(True)):
        sizes = sorted(set(counts))
        return verdict(False, what, wanted=f"every epoch {len(_expected_windows(False)) // SETTINGS['num_epochs']} "
                       f"steps of {k} micro-batches (and perhaps one for the micro-batches left over)",
                       got=f"{len(counts)} steps, of {sizes} micro-batches",
                       hint=f"one step per window of gradient_accumulation_steps = {k} micro-batches")
    weights = meter.sample_weights()
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
                    "weigh each micro-batch by its share of the window's digits (notebook 05, section 5a)"]
        return verdict(False, what, wanted="each step's gradient the mean over its digits", got=got, hint=hint)
    model = scope["model"]
    device = next(model.parameters()).device
    data = load_digits_split(device=device, dtype=next(model.parameters()).dtype)
    reached = accuracy(model, data.X_test, data.y_test)
    if reached < GOOD_ACCURACY:
        return verdict(False, what, wanted=f"test accuracy of at least {GOOD_ACCURACY:.0%}",
                       got=f"{reached:.1%}", hint="is the `model` at the end the network the loop trained?")
    left_over = ("micro-batches left over are left out" if counts == _expected_windows(False) else
                 "each epoch's last step those of its micro-batches left over")
    return verdict(True, f"{what}: the checker is silent; each of its {len(counts)} steps uses the mean "
                   f"gradient of {k * SETTINGS['train_batch_size']} digits ({left_over}); the model reaches "
                   f"{reached:.1%} test accuracy")
