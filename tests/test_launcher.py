"""utils.launcher: real gloo jobs return each rank's result; bad input, a worker that raises or
dies, a hang and a busy port end in clear errors, fast, and no worker process is left behind."""

import multiprocessing
import os
import socket
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from utils import launcher
from utils.launcher import WorkerError, find_free_port, port_is_free, run_job, warm_up

# Workers live at the top level of this module, so that the started processes can import them.


def sum_of_ranks(rank, world_size, offset):
    print("this line goes to the rank's log, not to the notebook")
    total = torch.tensor([float(rank + offset)])
    dist.all_reduce(total)
    return {"rank": rank, "world_size": world_size, "sum": total.item(), "backend": dist.get_backend(),
            "master": os.environ["MASTER_ADDR"], "tensor": torch.arange(3) * rank}


def raise_on_rank_one(rank, world_size):
    if rank == 1:
        raise ValueError("boom on purpose")
    dist.all_reduce(torch.ones(1))  # rank 0 waits here for rank 1, which never comes
    return rank


def exit_on_rank_one(rank, world_size):
    if rank == 1:
        os._exit(3)
    dist.barrier()
    return rank


def sleep_forever(rank, world_size):
    time.sleep(600)


def _jobs_left_over() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("course-job-*")}


@pytest.fixture
def no_leftovers():
    """After the test: no worker process alive, no job folder left in the temp directory."""
    before = _jobs_left_over()
    yield
    assert multiprocessing.active_children() == []
    assert _jobs_left_over() <= before


def test_a_job_returns_each_ranks_result_in_rank_order(no_leftovers, capfd):
    results = run_job(sum_of_ranks, world_size=2, args=(10,))
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 and r["sum"] == 21.0 for r in results)  # (0 + 10) + (1 + 10)
    assert {r["backend"] for r in results} == {"gloo"} and {r["master"] for r in results} == {"127.0.0.1"}
    assert torch.equal(results[1]["tensor"], torch.tensor([0, 1, 2]))
    assert "goes to the rank's log" not in capfd.readouterr().out


def test_a_worker_that_raises_names_its_rank_and_error_without_a_hang(no_leftovers):
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"rank 1 raised ValueError: boom on purpose") as caught:
        run_job(raise_on_rank_one, world_size=2, timeout=60)
    assert caught.value.rank == 1
    assert "boom on purpose" in caught.value.worker_traceback
    assert time.monotonic() - start < 30  # the waiting rank 0 was stopped, not waited for


def test_a_worker_that_dies_is_reported(no_leftovers):
    with pytest.raises(WorkerError, match=r"rank 1 died .*exit code 3") as caught:
        run_job(exit_on_rank_one, world_size=2, timeout=60)
    assert caught.value.rank == 1


def test_a_hanging_job_times_out_with_a_clear_message(no_leftovers):
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"did not finish within 6 s; rank\(s\) \[0, 1\] still running"):
        run_job(sleep_forever, world_size=2, timeout=6)
    assert time.monotonic() - start < 6 + 10


def test_a_busy_port_that_was_asked_for_is_an_error_before_starting():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        assert not port_is_free(busy)
        with pytest.raises(RuntimeError, match=f"port {busy} on 127.0.0.1 is busy.*port=None"):
            run_job(sum_of_ranks, args=(0,), port=busy)


def test_a_port_taken_after_it_was_picked_is_replaced(monkeypatch, no_leftovers):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        ports = iter([busy])  # the first pick is taken by the time rank 0 listens on it
        monkeypatch.setattr(launcher, "find_free_port", lambda: next(ports, None) or find_free_port())
        results = run_job(sum_of_ranks, world_size=2, args=(0,), timeout=60)
    assert [r["sum"] for r in results] == [1.0, 1.0]


def test_free_ports_are_free():
    port = find_free_port()
    assert 0 < port < 65536 and port_is_free(port)


def notebook_function(rank, world_size):
    return rank


notebook_function.__module__ = "__main__"  # as if defined in a notebook


def _nested():
    def inner(rank, world_size):
        return rank

    return inner


@pytest.mark.parametrize(
    "worker, kwargs, error, words",
    [
        (notebook_function, {}, ValueError, "importable module"),
        (lambda rank, world_size: rank, {}, ValueError, "top-level function"),
        (_nested(), {}, ValueError, "importable module"),
        ("sum_of_ranks", {}, TypeError, "expected the worker as a function, got str"),
        (sum_of_ranks, {"world_size": 0}, ValueError, "1 <= world_size <= 8"),
        (sum_of_ranks, {"world_size": 99}, ValueError, "1 <= world_size <= 8"),
        (sum_of_ranks, {"world_size": "2"}, TypeError, "world_size as an int"),
        (sum_of_ranks, {"world_size": True}, TypeError, "world_size as an int"),
        (sum_of_ranks, {"args": 5}, TypeError, r"args as a tuple, got int: write args=\(value,\)"),
        (sum_of_ranks, {"args": (lambda: 0,)}, TypeError, "args must be picklable"),
        (sum_of_ranks, {"args": (0,), "timeout": 0}, ValueError, "timeout as a number of seconds > 0"),
        (sum_of_ranks, {"args": (0,), "timeout": "9"}, ValueError, "timeout as a number of seconds > 0"),
        (sum_of_ranks, {"args": (0,), "port": 70000}, ValueError, "port as an int in 1..65535"),
        (sum_of_ranks, {"args": (0,), "port": "29500"}, ValueError, "port as an int in 1..65535"),
    ],
)
def test_bad_input_is_refused_before_any_process_starts(worker, kwargs, error, words, no_leftovers):
    with pytest.raises(error, match=words):
        run_job(worker, **kwargs)


def test_warm_up_checks_the_worker_too():
    with pytest.raises(ValueError, match="importable module"):
        warm_up(notebook_function)
    warm_up(sum_of_ranks)  # starts (or finds) the forkserver; returns at once
