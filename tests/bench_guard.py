"""What ZeroGradGuard costs: one training step timed with and without it (README, "Speed").

Usage: python tests/bench_guard.py [--rounds N] [--min-run-time SECONDS]

A step is `zero_grad()`, forward, `backward()`, `step()` on a small MLP. Each case is timed
with `torch.utils.benchmark` (which synchronises a GPU), in rounds that alternate plain and
guarded, so that a busy machine slows both alike; the ratio of the medians is printed. The
plain step is timed with no guard alive at all (a live guard wraps every optimizer's
`zero_grad()` and sees every optimizer's step, so a twin timed beside it is not plain); the
guarded one under a guard made for the round and removed after it. The
device is the course's (`utils.device.get_device`: COURSE_DEVICE=cpu|cuda forces it). The
last column counts the guard's reads of values from the device per step (each one a
synchronisation on a GPU; tests/test_guard_cost.py bounds them at one per step). This is
a report, not a test: pytest does not collect it and it never fails on a slow result.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch.utils.benchmark import Timer

from utils.device import describe_environment, get_device, make_generator
from utils.guard import ZeroGradGuard
from utils.guard.reads import reads_made

# (label, layer widths, batch size, optimizer, zero_grad's set_to_none)
CASES = [
    ("notebook 08 size: 3-8-1, batch 8, SGD", (3, 8, 1), 8, "SGD", True),
    ("64-256-256-1, batch 64, SGD", (64, 256, 256, 1), 64, "SGD", True),
    ("64-256-256-1, batch 64, Adam", (64, 256, 256, 1), 64, "Adam", True),
    ("64-256-256-1, batch 64, Adam, set_to_none=False", (64, 256, 256, 1), 64, "Adam", False),
    ("512-1024-1024-1, batch 256, Adam", (512, 1024, 1024, 1), 256, "Adam", True),
]


def make_step(widths: tuple[int, ...], batch: int, optimizer_name: str, set_to_none: bool, device: torch.device):
    """Return (optimizer, step): one training step of an MLP on fixed random data."""
    generator = make_generator(0)
    layers: list[torch.nn.Module] = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers[:-1]).to(device)
    X = torch.randn(batch, widths[0], generator=generator).to(device)
    y = torch.randn(batch, widths[-1], generator=generator).to(device)
    optimizer = getattr(torch.optim, optimizer_name)(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.MSELoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=set_to_none)
        loss_fn(model(X), y).backward()
        optimizer.step()

    return optimizer, step


def median_seconds(step, min_run_time: float, clock) -> float:
    timer = Timer("step()", globals={"step": step}, timer=clock)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds of plain + guarded (default 20)")
    parser.add_argument("--min-run-time", type=float, default=0.05, help="seconds per measurement (default 0.05)")
    parser.add_argument("--wall", action="store_true",
                        help="time wall-clock seconds on a CPU too (default there: the process's CPU time, "
                             "which other programs on a busy machine disturb less)")
    args = parser.parse_args()
    if args.rounds < 1 or args.min_run_time <= 0:
        parser.error("--rounds must be at least 1 and --min-run-time above 0")
    device = get_device()
    wall = args.wall or device.type == "cuda"  # a GPU's work is not CPU time: time the wall clock
    clock = time.perf_counter if wall else time.process_time
    print(describe_environment(device))
    print(f"clock: {'wall-clock' if wall else 'CPU time of this process'}")
    print(f"{'case':52} {'plain µs':>9} {'guarded µs':>10} {'ratio':>6} {'reads/step':>10}")
    ratios = []
    for label, widths, batch, name, set_to_none in CASES:
        _, plain_step = make_step(widths, batch, name, set_to_none, device)
        optimizer, guarded_step = make_step(widths, batch, name, set_to_none, device)  # a twin
        times: dict[bool, list[float]] = {False: [], True: []}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a correct loop: any guard warning would be a bug
            for round_ in range(-1, args.rounds):  # round -1 warms up: caches, optimizer state
                for guarded in ((False, True) if round_ % 2 else (True, False)):
                    if guarded:
                        with ZeroGradGuard(optimizer):
                            seconds = median_seconds(guarded_step, args.min_run_time, clock)
                    else:
                        seconds = median_seconds(plain_step, args.min_run_time, clock)
                    if round_ >= 0:
                        times[guarded].append(seconds)
            with ZeroGradGuard(optimizer) as guard:
                guarded_step()  # the first step after the guard starts judges what it found
                steps_before, reads_before = guard.steps, reads_made()
                for _ in range(20):  # reads from the device per step, counted apart from the timing
                    guarded_step()
                reads = (reads_made() - reads_before) / (guard.steps - steps_before)
        plain, guarded = statistics.median(times[False]), statistics.median(times[True])
        ratios.append(guarded / plain)
        print(f"{label:52} {plain * 1e6:9.1f} {guarded * 1e6:10.1f} {guarded / plain:6.2f} {reads:10.2f}")
    print(f"guarded / plain step time: {min(ratios):.2f} to {max(ratios):.2f} "
          f"(median {statistics.median(ratios):.2f}) on {device}")


if __name__ == "__main__":
    main()
