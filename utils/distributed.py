"""What each process of notebook 07's job runs: DDP with gradient accumulation, on gloo.

Spawned processes import their code by name, so it lives here rather than in the notebook.
`course_job` is the one job the notebook starts (with `utils.launcher.run_job`): it trains
a small float64 model several ways, a token-level loss two ways, and asks a
`DistributedSampler` what each rank gets. `make_model`, `make_data`, `micro_batch` and
`make_token_data` are shared with the notebook's one-process references, so both sides
start from the same weights and see the same samples.
"""

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler

from utils.data import make_regression, make_token_sequences
from utils.device import make_generator

HIDDEN = 8
SYNC_MODES = ("every_micro_batch", "no_sync", "require_backward_grad_sync",
              "backward_only_in_no_sync")
TOKEN_NORMALISATIONS = ("tokens_on_this_rank", "tokens_on_all_ranks")
SEQUENCES_PER_MICRO_BATCH, MAX_LEN, VOCAB_SIZE = 2, 8, 5


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
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"expected seed as an int >= 0, got {self.seed!r}")

    @property
    def effective_batch_size(self) -> int:
        """Samples behind one optimizer step: world_size × train_batch_size × accumulation steps."""
        return self.world_size * self.train_batch_size * self.gradient_accumulation_steps


def make_model(config: JobConfig, seed: int | None = None) -> torch.nn.Module:
    """Return the job's small float64 MLP, its weights drawn from `seed` (default config.seed)."""
    model = torch.nn.Sequential(
        torch.nn.Linear(config.num_features, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1)
    ).double()
    generator = make_generator(config.seed if seed is None else seed)
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


def train(rank: int, config: JobConfig, sync: str = "no_sync",
          also_divide_by_world_size: bool = False, bucket_cap_mb: float | None = None) -> dict:
    """Train a DDP model with gradient accumulation; `sync` says how it all-reduces."""
    if sync not in SYNC_MODES:
        raise ValueError(f"expected sync as one of {SYNC_MODES}, got {sync!r}")
    model = DDP(make_model(config, seed=config.seed + rank),  # copies rank 0's weights
                bucket_cap_mb=bucket_cap_mb)  # None: DDP's default, 25 MiB
    counter = AllReduceCounter()
    model.register_comm_hook(counter, counting_allreduce_hook)  # counts all-reduces
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    loss_fn = torch.nn.MSELoss()
    X, y = make_data(config)
    gradient_accumulation_steps = config.gradient_accumulation_steps
    divisor = gradient_accumulation_steps
    if also_divide_by_world_size:  # a mistake (section 3)
        divisor *= config.world_size
    for step in range(config.num_steps):
        for micro_step in range(gradient_accumulation_steps):
            last = micro_step == gradient_accumulation_steps - 1
            X_micro, y_micro = micro_batch(X, y, step, micro_step, rank, config)
            if sync == "require_backward_grad_sync":
                model.require_backward_grad_sync = last  # forward reads it
            if sync == "backward_only_in_no_sync":  # a mistake (section 5)
                loss = loss_fn(model(X_micro), y_micro) / divisor
                with nullcontext() if last else model.no_sync():
                    loss.backward()
                continue
            with nullcontext() if last or sync != "no_sync" else model.no_sync():
                loss = loss_fn(model(X_micro), y_micro) / divisor  # forward in no_sync()
                loss.backward()  # all-reduces, unless the forward ran inside no_sync()
        optimizer.step()
        optimizer.zero_grad()
    params = [p.detach().clone() for p in model.module.parameters()]
    return {"params": params, "all_reduces": counter.calls, "bytes": counter.bytes}


def make_token_data(config: JobConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Return padded float64 inputs and labels (-100 at padding): one step's sequences, all ranks."""
    num_sequences = config.world_size * config.gradient_accumulation_steps * SEQUENCES_PER_MICRO_BATCH
    return make_token_sequences(num_sequences, MAX_LEN, config.num_features, VOCAB_SIZE,
                                seed=config.seed + 3, dtype=torch.float64)


def make_token_model(config: JobConfig) -> torch.nn.Module:
    """Return the token job's float64 linear model: features → scores for VOCAB_SIZE tokens."""
    model = torch.nn.Linear(config.num_features, VOCAB_SIZE).double()
    generator = make_generator(config.seed + 4)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.5 * torch.randn(param.shape, generator=generator, dtype=torch.float64))
    return model


def rank_sequences(config: JobConfig, rank: int) -> slice:
    """Return which sequences of make_token_data `rank` holds: a block of k micro-batches."""
    per_rank = config.gradient_accumulation_steps * SEQUENCES_PER_MICRO_BATCH
    return slice(rank * per_rank, (rank + 1) * per_rank)


def train_tokens(rank: int, config: JobConfig, normalise: str) -> dict:
    """One accumulated step of a token-level loss under DDP; return the averaged gradient."""
    if normalise not in TOKEN_NORMALISATIONS:
        raise ValueError(f"expected normalise as one of {TOKEN_NORMALISATIONS}, got {normalise!r}")
    model = DDP(make_token_model(config))
    inputs, labels = (t[rank_sequences(config, rank)] for t in make_token_data(config))
    tokens_here = int((labels != -100).sum())
    num_tokens = torch.tensor([tokens_here])
    if normalise == "tokens_on_all_ranks":
        dist.all_reduce(num_tokens)  # one number: the real tokens of the step, all ranks
    pairs = list(zip(inputs.split(SEQUENCES_PER_MICRO_BATCH), labels.split(SEQUENCES_PER_MICRO_BATCH)))
    for micro_step, (inputs_micro, labels_micro) in enumerate(pairs):
        with nullcontext() if micro_step == len(pairs) - 1 else model.no_sync():
            logits = model(inputs_micro)
            summed = F.cross_entropy(logits.flatten(0, 1), labels_micro.flatten(), reduction="sum")
            scale = config.world_size if normalise == "tokens_on_all_ranks" else 1
            (summed * scale / num_tokens.item()).backward()  # DDP then averages the ranks
    grads = [p.grad.detach().clone() for p in model.module.parameters()]
    return {"tokens": tokens_here, "divided_by": int(num_tokens.item()), "grads": grads}


def _logging_allreduce_hook(events: list, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: note that this bucket's all-reduce starts, then do the usual one."""
    count = len(bucket.parameters())
    events.append(f"all-reduce of bucket {bucket.index()} ({count} tensor{'s' * (count != 1)})")
    return default_hooks.allreduce_hook(None, bucket)


def bucket_events(rank: int, config: JobConfig, num_backward: int = 2) -> list[list[str]]:
    """With a bucket per tensor, when each all-reduce starts during backward(), per backward()."""
    model = make_model(config)
    ddp = DDP(model, bucket_cap_mb=1e-6)  # a cap of one byte: at most one tensor per bucket
    events: list[str] = []
    ddp.register_comm_hook(events, _logging_allreduce_hook)
    model[0].weight.register_hook(lambda grad: events.append("first layer's weight gradient computed"))
    X, y = make_data(config)
    history = []
    for _ in range(num_backward):
        X_micro, y_micro = micro_batch(X, y, 0, 0, rank, config)
        torch.nn.functional.mse_loss(ddp(X_micro), y_micro).backward()
        history.append(events.copy())
        events.clear()
    return history


def sampler_indices(num_samples: int, num_epochs: int = 2) -> dict:
    """What DistributedSampler gives this rank per epoch: with and without set_epoch, drop_last."""
    dataset = range(num_samples)
    result = {}
    for name, drop_last, set_epoch in [("set_epoch", False, True), ("no_set_epoch", False, False),
                                       ("drop_last", True, True)]:
        sampler = DistributedSampler(dataset, shuffle=True, seed=0, drop_last=drop_last)
        epochs = []
        for epoch in range(num_epochs):
            if set_epoch:
                sampler.set_epoch(epoch)  # reshuffle: the order depends on seed + epoch
            epochs.append(list(sampler))
        result[name] = epochs
    return result


def bucket_count_job(rank: int, world_size: int, config: JobConfig) -> dict:
    """All-reduce counts with a bucket per tensor, every micro-batch and with no_sync (tests)."""
    return {sync: train(rank, config, sync=sync, bucket_cap_mb=1e-6)["all_reduces"]
            for sync in ("every_micro_batch", "no_sync")}


def course_job(rank: int, world_size: int, config: JobConfig) -> dict:
    """Notebook 07's whole job in one start: what every rank did, in a dict."""
    if world_size != config.world_size:
        raise ValueError(f"the job runs on {world_size} processes but config.world_size is "
                         f"{config.world_size}; start it with world_size=config.world_size")
    ones = torch.ones(1)
    dist.all_reduce(ones)  # sums over ranks: world_size
    own_start = make_model(config, seed=config.seed + rank)  # each rank its own weights
    before = [p.detach().clone() for p in own_start.parameters()]
    wrapped = DDP(own_start)  # broadcasts rank 0's parameters to every rank
    result = {
        "rank": rank,
        "ranks_counted": int(ones.item()),
        "params_before_ddp": before,
        "params_after_ddp": [p.detach().clone() for p in wrapped.module.parameters()],
        "first_step_rows": [list(micro_batch_rows(0, m, rank, config))
                            for m in range(config.gradient_accumulation_steps)],
        "divided_by_world_size_too": train(rank, config, also_divide_by_world_size=True),
        "sampler": sampler_indices(num_samples=9),
        "bucket_events": bucket_events(rank, config),
    }
    for sync in SYNC_MODES:
        result[sync] = train(rank, config, sync=sync)
    for normalise in TOKEN_NORMALISATIONS:
        result[normalise] = train_tokens(rank, config, normalise)
    return result


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
