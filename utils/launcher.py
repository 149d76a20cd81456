"""Start a real `torch.distributed` job on this machine, from a notebook (notebook 07).

`run_job(worker, world_size=2, args=(...))` starts `world_size` processes with
`torch.multiprocessing.start_processes` (forked by a forkserver that imported torch once,
where there is one; spawned on Windows), joins them into one gloo process group on
127.0.0.1 and a free port, calls `worker(rank, world_size, *args)` in each and returns what
each rank returned. A worker that raises, a process that dies or a job that hangs ends in
a clear error naming the rank; every rank is stopped and joined before `run_job` returns or
raises. (The forkserver, like multiprocessing's resource tracker, stays for the next job
and exits with the notebook's kernel.)
"""

from __future__ import annotations

import importlib
import multiprocessing.connection
import os
import pickle
import signal
import socket
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

BACKEND = "gloo"  # the CPU backend; GPU jobs use "nccl", one GPU per process
MASTER_ADDR = "127.0.0.1"
MAX_WORLD_SIZE = 8  # small jobs on one machine
PORT_ATTEMPTS = 3


class WorkerError(RuntimeError):
    """A worker process raised or died. `rank` says which; `worker_traceback` holds its traceback."""

    def __init__(self, message: str, rank: int, worker_traceback: str = "") -> None:
        super().__init__(message)
        self.rank = rank
        self.worker_traceback = worker_traceback


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that no program listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((MASTER_ADDR, 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Say whether a process could listen on `port` of 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((MASTER_ADDR, port))
        except OSError:
            return False
        return True


def _check_worker(worker: Any) -> None:
    if not callable(worker):
        raise TypeError(f"expected the worker as a function, got {type(worker).__name__}")
    module, name = getattr(worker, "__module__", None), getattr(worker, "__qualname__", "")
    hint = ("the worker processes did not run your notebook: they import the function by "
            "name, so it must be a top-level function of an importable module (put it in a "
            ".py file, e.g. utils/distributed.py, and import it from there)")
    if module in (None, "__main__") or "<" in name:
        raise ValueError(f"cannot send {name or worker!r} from {module} to a worker process: {hint}")
    try:
        found = importlib.import_module(module)
    except ImportError as error:
        raise ValueError(f"the module {module} of {name} does not import ({error}): {hint}") from None
    for part in name.split("."):
        found = getattr(found, part, None)
    if found is not worker:
        raise ValueError(f"{module}.{name} does not import as this function: {hint}")


def _check_args(world_size: Any, args: Any, timeout: Any, port: Any) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int):
        raise TypeError(f"expected world_size as an int, got {type(world_size).__name__}")
    if not 1 <= world_size <= MAX_WORLD_SIZE:
        raise ValueError(f"expected 1 <= world_size <= {MAX_WORLD_SIZE} on one machine, got {world_size}")
    if not isinstance(args, tuple):
        raise TypeError(f"expected args as a tuple, got {type(args).__name__}: write args=(value,)")
    try:
        pickle.dumps(args)
    except Exception as error:
        raise TypeError(f"args must be picklable to reach the workers: {error}") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"expected timeout as a number of seconds > 0, got {timeout!r}")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise ValueError(f"expected port as an int in 1..65535, or None to pick a free one, got {port!r}")


def _entry(rank: int, worker: Callable, world_size: int, port: int, folder: str, args: tuple,
           timeout: float) -> None:
    """Run in each started process: join the group, run the worker, save its result."""
    out = Path(folder)
    log = os.open(out / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)  # the notebook must not show the workers' (changing) messages
    os.dup2(log, 2)
    os.environ.update(MASTER_ADDR=MASTER_ADDR, MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)  # as torchrun does: one thread per process
    try:
        dist.init_process_group(BACKEND, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout))
        result = worker(rank, world_size, *args)
        torch.save(result, out / f"rank{rank}.pt")
        dist.barrier()  # without it, a rank may tear down while its peer still talks
    except BaseException as error:
        (out / f"rank{rank}.traceback").write_text(traceback.format_exc())
        (out / f"rank{rank}.error").write_text(f"{type(error).__name__}: {error}".strip())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _stop(processes: list) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(2)
        if process.is_alive():
            process.kill()
            process.join()


class _PortTaken(Exception):
    pass


def _wait(processes: list, deadline: float, timeout: float) -> int | None:
    """Wait until every rank ended well (None), or one failed: return that rank."""
    pending = {process.sentinel: rank for rank, process in enumerate(processes)}
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            alive = [r for r, p in enumerate(processes) if p.is_alive()]
            raise TimeoutError(
                f"the job did not finish within {timeout:g} s; rank(s) {alive} still running (a "
                "rank waiting in a collective that another rank never joins waits like this). "
                "All its processes were stopped; pass a larger timeout= if the job is only slow.")
        for sentinel in multiprocessing.connection.wait(list(pending), timeout=min(left, 1.0)):
            rank = pending.pop(sentinel)
            processes[rank].join()
            if processes[rank].exitcode != 0:
                return rank
    return None


def _how(exitcode: int) -> str:
    if exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        return f"signal {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"signal {-exitcode}"


def _diagnose(folder: Path, processes: list, ended_alone: list[int]) -> Exception:
    """Name the failure's cause: a rank that died outright, else the rank whose error came first."""
    for rank in ended_alone:  # a crash is a cause; its peers' errors ('connection reset') follow
        code = processes[rank].exitcode
        if code != 0 and not (folder / f"rank{rank}.error").exists():
            return WorkerError(f"rank {rank} died without a Python error ({_how(code)}); the job "
                               "was stopped", rank)
    first = _first_error(folder, len(processes))
    if first is None:
        return WorkerError("a rank was stopped before it could report; the job was stopped", 0)
    rank, what = first
    if "address already in use" in what.lower():
        return _PortTaken()
    trace = (folder / f"rank{rank}.traceback").read_text()
    return WorkerError(f"rank {rank} raised {what}; the job was stopped", rank, trace)


def _first_error(folder: Path, world_size: int) -> tuple[int, str] | None:
    """The error that came first (a peer's later error is often only 'connection closed')."""
    files = [folder / f"rank{r}.error" for r in range(world_size)]
    found = [(f.stat().st_mtime_ns, r, f.read_text()) for r, f in enumerate(files) if f.exists()]
    return min(found)[1:] if found else None


def _start_method(worker: Callable) -> str:
    """forkserver where there is one: a server process imports torch once, then forks each rank."""
    if "forkserver" not in mp.get_all_start_methods():
        return "spawn"  # Windows: each rank starts a fresh Python and imports everything itself
    # DDP imports torch._dynamo when it is built: import it once, in the server, not per rank
    preload = ["torch", "torch._dynamo", "torch.nn.parallel", __name__, worker.__module__]
    mp.get_context("forkserver").set_forkserver_preload(preload)
    return "forkserver"


def warm_up(worker: Callable) -> None:
    """Start, in the background, the server process that will fork the ranks (notebook 07).

    It imports torch and the worker's module once, while the notebook goes on, so that a
    later `run_job(worker, ...)` starts its processes in a fraction of a second. Where the
    operating system has no forkserver (Windows), this does nothing.
    """
    _check_worker(worker)
    if _start_method(worker) == "forkserver":
        from multiprocessing import forkserver  # not on Windows

        forkserver.ensure_running()


def _run_once(worker: Callable, world_size: int, args: tuple, timeout: float, port: int) -> list:
    with tempfile.TemporaryDirectory(prefix="course-job-") as name:
        folder = Path(name)
        context = mp.start_processes(_entry, args=(worker, world_size, port, name, args, timeout),
                                     nprocs=world_size, join=False, start_method=_start_method(worker))
        try:
            failed = _wait(context.processes, time.monotonic() + timeout, timeout)
            if failed is not None:
                grace = time.monotonic() + 1.0  # let the others end by themselves, then stop them
                while any(p.is_alive() for p in context.processes) and time.monotonic() < grace:
                    time.sleep(0.05)
                ended_alone = [r for r, p in enumerate(context.processes) if not p.is_alive()]
                _stop(context.processes)
                raise _diagnose(folder, context.processes, ended_alone)
        finally:
            _stop(context.processes)
            for path in context.error_files:  # torch.multiprocessing's copies of tracebacks
                Path(path).unlink(missing_ok=True)
        missing = [r for r in range(world_size) if not (folder / f"rank{r}.pt").exists()]
        if missing:
            raise WorkerError(f"rank(s) {missing} ended without a result", missing[0])
        return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def run_job(worker: Callable, world_size: int = 2, *, args: tuple = (), timeout: float = 60.0,
            port: int | None = None) -> list:
    """Run `worker(rank, world_size, *args)` in `world_size` gloo processes; return each rank's result.

    Used by notebook 07. `port=None` picks a free port (and another one if it was taken in
    the meantime); a given port that is busy is an error. Raises WorkerError naming the rank
    when a worker raises or dies, TimeoutError after `timeout` seconds.
    """
    _check_worker(worker)
    _check_args(world_size, args, timeout, port)
    if port is not None and not port_is_free(port):
        raise RuntimeError(f"port {port} on {MASTER_ADDR} is busy (another job or program listens "
                           "on it); pass port=None to pick a free one")
    for _ in range(PORT_ATTEMPTS):
        chosen = find_free_port() if port is None else port
        try:
            return _run_once(worker, world_size, args, float(timeout), chosen)
        except _PortTaken:
            if port is not None:
                raise RuntimeError(f"port {port} on {MASTER_ADDR} was taken when the job started; "
                                   "pass port=None to pick a free one") from None
    raise RuntimeError(f"{PORT_ATTEMPTS} free ports were each taken before the job could use them; "
                       "is something grabbing ports on this machine? Try again.")
