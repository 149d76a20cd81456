"""What each process of notebook 07's job runs: DDP with gradient accumulation, on gloo.

Spawned processes import their code by name, so it lives here rather than in the notebook.
`course_job` is the one job the notebook starts (with `utils.launcher.run_job`): it trains
the same small float64 model three ways and returns parameters and all-reduce counts.
`make_model`, `make_data` and `micro_batch` are shared with the notebook's one-process
reference, so both sides start from the same weights and see the same samples.
"""

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from utils.data import make_regression
from utils.device import make_generator

HIDDEN = 8


@dataclass(frozen=True)
class JobConfig:
    """The sizes of notebook 07's job; every process gets the same one."""

    world_size: int = 2
    train_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    num_steps: int = 3
    lr: float = 0.1
    num_features: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("world_size", "train_batch_size", "gradient_accumulation_steps", "num_steps",
                     "num_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"expected {name} as an int >= 1, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or self.lr <= 0:
            raise ValueError(f"expected lr as a number > 0, got {self.lr!r}")

    @property
    def effective_batch_size(self) -> int:
        """Samples behind one optimizer step: world_size × train_batch_size × accumulation steps."""
        return self.world_size * self.train_batch_size * self.gradient_accumulation_steps


def make_model(config: JobConfig) -> torch.nn.Module:
    """Return the job's small float64 MLP, its weights drawn from a seeded CPU generator."""
    model = torch.nn.Sequential(
        torch.nn.Linear(config.num_features, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1)
    ).double()
    generator = make_generator(config.seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.5 * torch.randn(param.shape, generator=generator, dtype=torch.float64))
    return model


def make_data(config: JobConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Return X, y: `num_steps` effective batches of float64 regression data, the same everywhere."""
    num_samples = config.num_steps * config.effective_batch_size
    data = make_regression(num_samples, config.num_features, seed=config.seed + 1, dtype=torch.float64)
    return data.X, data.y


def micro_batch_rows(step: int, micro_step: int, rank: int, config: JobConfig) -> range:
    """Return the rows of X that `rank` uses at this micro-step of this optimizer step.

    Step s uses rows s·E to (s+1)·E - 1 (E the effective batch), each exactly once, split
    over micro-steps and ranks: the whole effective batch, as one process would see it.
    """
    k, n = config.gradient_accumulation_steps, config.train_batch_size
    start = ((step * k + micro_step) * config.world_size + rank) * n
    return range(start, start + n)


def micro_batch(X: torch.Tensor, y: torch.Tensor, step: int, micro_step: int, rank: int,
                config: JobConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the `train_batch_size` samples (X, y) that `rank` uses at this micro-step."""
    rows = micro_batch_rows(step, micro_step, rank, config)
    return X[rows.start:rows.stop], y[rows.start:rows.stop]


@dataclass
class AllReduceCounter:
    """State of `counting_allreduce_hook`: how many all-reduces this rank ran, and their bytes."""

    calls: int = 0
    bytes: int = 0


def counting_allreduce_hook(counter: AllReduceCounter, bucket: dist.GradBucket
                            ) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: count this all-reduce and its bytes, then do the usual one."""
    counter.calls += 1
    counter.bytes += bucket.buffer().numel() * bucket.buffer().element_size()
    return default_hooks.allreduce_hook(None, bucket)


def train(rank: int, config: JobConfig, use_no_sync: bool,
          also_divide_by_world_size: bool = False) -> dict:
    """Train a DDP copy of make_model(config) with gradient accumulation."""
    model = DDP(make_model(config))  # DDP copies rank 0's weights to every rank
    counter = AllReduceCounter()
    model.register_comm_hook(counter, counting_allreduce_hook)  # counts all-reduces
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    loss_fn = torch.nn.MSELoss()
    X, y = make_data(config)
    gradient_accumulation_steps = config.gradient_accumulation_steps
    for step in range(config.num_steps):
        for micro_step in range(gradient_accumulation_steps):
            last = micro_step == gradient_accumulation_steps - 1
            sync = nullcontext() if last or not use_no_sync else model.no_sync()
            with sync:  # the forward pass too must run inside no_sync()
                X_micro, y_micro = micro_batch(X, y, step, micro_step, rank, config)
                loss = loss_fn(model(X_micro), y_micro) / gradient_accumulation_steps
                if also_divide_by_world_size:  # a common mistake (section 3)
                    loss = loss / config.world_size
                loss.backward()  # DDP all-reduces here, except inside no_sync()
        optimizer.step()
        optimizer.zero_grad()
    params = [p.detach().clone() for p in model.module.parameters()]
    return {"params": params, "all_reduces": counter.calls, "bytes": counter.bytes}


def course_job(rank: int, world_size: int, config: JobConfig) -> dict:
    """Notebook 07's whole job in one start: a first all-reduce, then three training runs."""
    if world_size != config.world_size:
        raise ValueError(f"the job runs on {world_size} processes but config.world_size is "
                         f"{config.world_size}; start it with world_size=config.world_size")
    ones = torch.ones(1)
    dist.all_reduce(ones)  # sums over ranks: world_size
    return {
        "rank": rank,
        "ranks_counted": int(ones.item()),
        "first_step_rows": [list(micro_batch_rows(0, m, rank, config))
                            for m in range(config.gradient_accumulation_steps)],
        "every_micro_batch": train(rank, config, use_no_sync=False),
        "no_sync": train(rank, config, use_no_sync=True),
        "divided_by_world_size_too": train(rank, config, use_no_sync=True,
                                           also_divide_by_world_size=True),
    }


def params_close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Say whether two lists of parameters agree, by `torch.testing.assert_close` (notebook 07)."""
    for name, params in (("first", a), ("second", b)):
        if not isinstance(params, (list, tuple)) or not all(isinstance(p, torch.Tensor) for p in params):
            raise TypeError(f"expected the {name} argument as a list of tensors, got {type(params).__name__}")
    try:
        torch.testing.assert_close([p.detach().cpu() for p in a], [p.detach().cpu() for p in b])
    except AssertionError:
        return False
    return True
