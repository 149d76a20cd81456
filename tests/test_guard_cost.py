"""The guard's cost in device reads: at most one per optimizer step, whatever the number of parameters.

A read of a tensor's value (`.item()`, `.tolist()`, `bool(t)`, `float(t)`, ...) makes a CPU
wait for a GPU. On the CPU the test counts every such call made from the guard's own code,
by wrapping the Tensor methods that read; on a GPU it also counts synchronisations with
`torch.cuda.set_sync_debug_mode`. The model has 120 parameters, so a read per parameter
would show at once. The overhead in time is measured by tests/bench_guard.py.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import pytest
import torch

import utils.guard
from utils.guard import ZeroGradGuard

GUARD_DIR = str(Path(utils.guard.__file__).resolve().parent)
TENSOR_READERS = ["item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__complex__", "numpy"]
TORCH_READERS = ["equal", "allclose", "is_nonzero"]
NUM_STEPS = 6


@contextlib.contextmanager
def counting_reads():
    """Count value reads made from the guard's own files (every tensor method or function that reads)."""
    reads: list[str] = []

    def wrap(name, fn):
        def reader(*args, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(GUARD_DIR):
                reads.append(name)
            return fn(*args, **kwargs)
        return reader

    saved_methods = {name: torch.Tensor.__dict__.get(name) for name in TENSOR_READERS}
    saved_functions = {name: getattr(torch, name) for name in TORCH_READERS}
    for name in TENSOR_READERS:
        setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    for name in TORCH_READERS:
        setattr(torch, name, wrap(name, saved_functions[name]))
    try:
        yield reads
    finally:
        for name, method in saved_methods.items():
            if method is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, method)
        for name, fn in saved_functions.items():
            setattr(torch, name, fn)


def deep_model(device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 4) for _ in range(60)]  # 120 parameters
    return torch.nn.Sequential(*layers).to(device)


def batch(i: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(i)
    return torch.randn(8, 4, generator=generator).to(device), torch.randn(8, 4, generator=generator).to(device)


def loss_of(model, i, device="cpu"):
    X, y = batch(i, device)
    return torch.nn.functional.mse_loss(model(X), y) * 1e-3


# Loops: (name, loop, the warnings it must give)
def zero_first(model, optimizer, device):
    for i in range(NUM_STEPS):
        optimizer.zero_grad()
        loss_of(model, i, device).backward()
        optimizer.step()


def zero_after_step_in_place_with_clipping(model, optimizer, device):
    for i in range(NUM_STEPS):
        loss_of(model, i, device).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)


def old_style_data_zero(model, optimizer, device):  # needs a look at the values: one read per step
    for i in range(NUM_STEPS):
        for p in model.parameters():
            if p.grad is not None:
                p.grad.data.zero_()
        loss_of(model, i, device).backward()
        optimizer.step()


def accumulate_with_grad_scaler(model, optimizer, device):
    scaler = torch.amp.GradScaler(device)
    for i in range(2 * NUM_STEPS):
        scaler.scale(loss_of(model, i, device) / 2).backward()
        if i % 2 == 1:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)


def forgot_zero_grad(model, optimizer, device):
    for i in range(NUM_STEPS):
        loss_of(model, i, device).backward()
        optimizer.step()


def zero_between_backward_and_step(model, optimizer, device):
    for i in range(NUM_STEPS):
        loss_of(model, i, device).backward()
        optimizer.zero_grad()
        optimizer.step()


LOOPS = [(zero_first, 0), (zero_after_step_in_place_with_clipping, 0), (old_style_data_zero, 0),
         (accumulate_with_grad_scaler, 0), (forgot_zero_grad, NUM_STEPS - 1),
         (zero_between_backward_and_step, NUM_STEPS)]
NO_READS = {"zero_first", "zero_after_step_in_place_with_clipping", "accumulate_with_grad_scaler"}


def run_counted(loop, device="cpu"):
    model = deep_model(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with counting_reads() as reads, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ZeroGradGuard(optimizer, model=model, max_warnings=None) as guard:
            loop(model, optimizer, device)
    return guard, reads, caught


@pytest.mark.parametrize("loop, num_findings", LOOPS, ids=[loop.__name__ for loop, _ in LOOPS])
def test_at_most_one_read_per_step_whatever_the_number_of_parameters(loop, num_findings):
    guard, reads, _ = run_counted(loop)
    assert len(guard._records) == 120
    assert len(guard.findings) == num_findings
    assert len(reads) <= guard.steps + 1  # one per step, and one at the end
    if loop.__name__ in NO_READS:  # a loop that clears with zero_grad() needs no read at all
        assert reads == []
    else:
        assert 1 <= len(reads) <= guard.steps + 1


def test_the_counter_sees_reads():
    """The wrapped readers count a read made from the guard's folder (and only from there)."""
    with counting_reads() as reads:
        torch.ones(2).tolist()  # this file: not counted
        from utils.guard.reads import read, summary
        read([summary(torch.ones(3)), summary(torch.zeros(2))])
    assert reads == ["tolist"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("loop, num_findings", LOOPS, ids=[loop.__name__ for loop, _ in LOOPS])
def test_on_a_gpu_at_most_one_synchronisation_per_step(loop, num_findings):
    """torch.cuda.set_sync_debug_mode warns at each synchronising call; count those from the guard."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        guard, _, caught = run_counted(loop, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    syncs = [w for w in caught if "synchroniz" in str(w.message) and w.filename.startswith(GUARD_DIR)]
    assert len(guard.findings) == num_findings
    assert len(syncs) <= guard.steps + 1
    if loop.__name__ in NO_READS:
        assert syncs == []
