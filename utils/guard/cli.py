"""`python -m utils.guard train.py [args...]`: run a training script, unchanged, with every optimizer guarded.

The script runs as `python train.py [args...]` would run it (its `__name__` is "__main__", its
folder is first on sys.path, sys.argv is the script and its arguments), in this process;
`python -m utils.guard -m package.train [args...]` runs a module as `python -m` does.
Every optimizer it creates gets a ZeroGradGuard; each finding is printed to stderr as it
happens, with the file and line of the script's code, and a summary follows at the end.
The script's own output is left alone. The exit status is the script's own when it fails,
otherwise 0 when nothing was found and 3 when something was (notebook 08).
Processes the script starts itself (`torch.multiprocessing.spawn`) are not guarded: the
summary says how many there were; `torchrun -m utils.guard train.py` guards each worker.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import multiprocessing.process
import os
import runpy
import sys
import traceback
import types
from pathlib import Path

from utils.guard import auto
from utils.guard.findings import Finding
from utils.guard.sites import place

FOUND = 3  # exit status when the script ran to its end and the guard found something
PREFIX = "utils.guard:"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.guard",
        description="Run a training script unchanged, with every optimizer it creates watched for a "
        "forgotten or misplaced zero_grad().",
        epilog=f"Exit status: the script's own when it fails; otherwise {FOUND} if the guard found "
        "something, 0 if not. Mark an intended clear with the comment '# zero_grad: intended'.",
    )
    parser.add_argument("script", nargs="?", help="the training script to run (a .py file); or -m MODULE "
                        "to run a module as python -m does")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed on to the script")
    parser.add_argument("--gradient-accumulation-steps", type=int, metavar="K", default=None,
                        help="also report a step that uses more than K backward() calls (an epoch's "
                        "leftover micro-batches carried into the next window)")
    parser.add_argument("--max-warnings", type=int, metavar="N", default=3,
                        help="print at most N findings of each kind per optimizer (default 3; the summary "
                        "counts them all)")
    return parser


def _printer(finding: Finding) -> None:
    where = f"{place(finding.filename, finding.lineno)}: " if finding.filename else ""
    print(f"{PREFIX} {where}{finding.kind.__name__}: {finding.message}", file=sys.stderr, flush=True)


def _script_traceback(error: BaseException, script: str) -> None:
    """Print the script's exception as Python would, from the script's first frame on."""
    tb = error.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != script:
        tb = tb.tb_next
    traceback.print_exception(type(error), error, tb or error.__traceback__, file=sys.stderr)


def _split_module(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """Like python, `-m MODULE` ends the command line's own options: (own options, module, its arguments)."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "-m":
            return argv[:i], argv[i + 1] if i + 1 < len(argv) else "", argv[i + 2:]
        if token.startswith("-m") and not token.startswith("--"):
            return argv[:i], token[2:], argv[i + 1:]
        if not token.startswith("-"):
            break  # the script: what follows is its own
        i += 2 if token in ("--max-warnings", "--gradient-accumulation-steps") else 1
    return argv, None, []


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (`python -m utils.guard` exits with it)."""
    own, module, module_args = _split_module(sys.argv[1:] if argv is None else list(argv))
    options = _parser().parse_args(own)
    if module is not None:
        if options.script is not None:
            _parser().error("give either a script or -m MODULE, not both")
        if not module:
            _parser().error("-m needs a module name, e.g. python -m utils.guard -m mypackage.train")
        options.script, options.args = module, module_args
    if options.script is None:
        _parser().error("give the training script to run, e.g. python -m utils.guard train.py --epochs 1")
    if options.gradient_accumulation_steps is not None and options.gradient_accumulation_steps < 1:
        _parser().error("--gradient-accumulation-steps must be at least 1")
    if options.max_warnings < 0:
        _parser().error("--max-warnings must be 0 or more")
    if auto.installed():
        print(f"{PREFIX} every optimizer is already guarded here (by %load_ext utils.guard?): run "
              "%unload_ext utils.guard first", file=sys.stderr)
        return 2
    if module is not None:
        folder = os.getcwd()  # python -m puts the current folder first
        sys.path.insert(0, folder)
        importlib.invalidate_caches()
        try:
            script = _module_path(module)
        finally:
            del sys.path[0]
        if script is None:
            return 2
    else:
        path = Path(options.script)
        if not path.exists():
            print(f"{PREFIX} no such file: {options.script!r} (give the path of your training script, "
                  "e.g. python -m utils.guard train.py)", file=sys.stderr)
            return 2
        if path.is_dir():
            print(f"{PREFIX} {options.script!r} is a folder; give the training script inside it (a .py file)",
                  file=sys.stderr)
            return 2
        script = os.path.abspath(path)
        folder = os.path.dirname(script)
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    sys.argv = [options.script if module is None else script, *options.args]
    sys.path.insert(0, folder)
    auto.install(report=_printer, max_warnings=options.max_warnings,
                 gradient_accumulation_steps=options.gradient_accumulation_steps)
    status, how = 0, "ran to its end"
    started = [0]
    start = multiprocessing.process.BaseProcess.start

    def count_and_start(process: multiprocessing.process.BaseProcess) -> None:
        started[0] += 1
        start(process)

    multiprocessing.process.BaseProcess.start = count_and_start
    try:
        if module is not None:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            _run(script)
    except SystemExit as error:
        status, how = _exit_status(error.code), "exited"
    except KeyboardInterrupt:
        status, how = 130, "was interrupted"
    except SyntaxError as error:
        traceback.print_exception(type(error), error, None, file=sys.stderr)
        status, how = 1, "could not be compiled (a syntax error)"
    except BaseException as error:  # the script's own error: shown as Python shows it
        _script_traceback(error, script)
        status, how = 1, f"raised {type(error).__name__}"
    finally:
        multiprocessing.process.BaseProcess.start = start
        made = auto.uninstall()
        sys.argv = saved_argv
        if sys.path and sys.path[0] == folder and saved_path0 != sys.path[0]:
            del sys.path[0]
    sys.stdout.flush()
    print(auto.summary(made), file=sys.stderr)
    if started[0]:
        print(f"{PREFIX} the script started {started[0]} process{'es' * (started[0] != 1)} of its own; "
              "optimizers created in them are not guarded nor counted here (the guard watches this process). "
              "Guard each worker: torchrun -m utils.guard train.py when torchrun starts them, or "
              "ZeroGradGuard(optimizer) inside the worker function.", file=sys.stderr)
    found = any(guard.findings for guard in made)
    if status != 0:
        print(f"{PREFIX} the script {how} with status {status}; that status is kept.", file=sys.stderr)
        return status
    return FOUND if found else 0


def _module_path(module: str) -> str | None:
    """The file `python -m module` would run, or None after saying why it cannot be found."""
    why = ""
    try:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations is not None:  # a package: its __main__
            if importlib.util.find_spec(f"{module}.__main__") is None:
                print(f"{PREFIX} {module!r} is a package without __main__.py: give the module to run, "
                      f"e.g. -m {module}.train", file=sys.stderr)
                return None
            spec = importlib.util.find_spec(f"{module}.__main__")
    except (ImportError, ValueError) as error:
        spec, why = None, f" ({type(error).__name__}: {error})"
    if spec is None or spec.origin is None:
        print(f"{PREFIX} no module named {module!r}{why}: run from the folder where `python -m {module}` "
              "works", file=sys.stderr)
        return None
    return os.path.abspath(spec.origin)


def _run(script: str) -> None:
    """Run a script as `python script.py` does: as the module __main__, its code named by its full path."""
    with io.open_code(script) as file:
        code = compile(file.read(), script, "exec", dont_inherit=True)
    module = types.ModuleType("__main__")
    module.__dict__.update(__file__=script, __builtins__=__builtins__, __cached__=None)
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = module  # objects the script defines pickle as __main__.name, as usual
    try:
        exec(code, module.__dict__)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") prints it and exits with 1, as Python does
    return 1
