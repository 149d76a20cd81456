"""Notebook 07's claims, recomputed from a real 2-process gloo job and torch (not the stored outputs).

The job runs once per test session (module fixture): starting processes is the slow part.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from utils.distributed import JobConfig, course_job, make_data, make_model, params_close
from utils.launcher import run_job
from utils.plotting import plot_counts

CONFIG = JobConfig(world_size=2, train_batch_size=4, gradient_accumulation_steps=4, num_steps=3, lr=0.1)
RUNS = ("every_micro_batch", "no_sync", "divided_by_world_size_too")


@pytest.fixture(scope="module")
def results():
    return run_job(course_job, CONFIG.world_size, args=(CONFIG,), timeout=120)


def one_process(config, lr, train_batch_size, gradient_accumulation_steps):
    """The notebook's train_one_process: notebook 05's loop on the whole data, in this process."""
    X, y = make_data(config)
    model = make_model(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = torch.nn.MSELoss()
    for step in range(config.num_steps):
        for micro_step in range(gradient_accumulation_steps):
            start = (step * gradient_accumulation_steps + micro_step) * train_batch_size
            rows = slice(start, start + train_batch_size)
            (loss_fn(model(X[rows]), y[rows]) / gradient_accumulation_steps).backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach() for p in model.parameters()]


@pytest.fixture(scope="module")
def reference():
    return one_process(CONFIG, CONFIG.lr, CONFIG.effective_batch_size, 1)


def test_every_rank_joined_and_saw_its_own_rows(results):
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["ranks_counted"] == 2 for r in results)
    assert results[0]["first_step_rows"][0] == [0, 1, 2, 3] and results[1]["first_step_rows"][0] == [4, 5, 6, 7]
    seen = sorted(row for r in results for rows in r["first_step_rows"] for row in rows)
    assert seen == list(range(32))


def test_ranks_hold_identical_parameters(results):
    for run in RUNS:
        assert all(map(torch.equal, results[0][run]["params"], results[1][run]["params"])), run


def test_ddp_with_accumulation_equals_one_process_on_the_whole_batch(results, reference):
    assert all(p.dtype == torch.float64 for p in reference)
    for run in ("every_micro_batch", "no_sync"):
        torch.testing.assert_close(results[0][run]["params"], reference)
        assert params_close(results[0][run]["params"], reference)
    start = make_model(CONFIG).parameters()
    assert not params_close(list(start), reference)  # training really moved the parameters


def test_dividing_by_world_size_too_equals_half_the_learning_rate(results, reference):
    mistake = results[0]["divided_by_world_size_too"]["params"]
    assert not params_close(mistake, reference)
    torch.testing.assert_close(mistake, one_process(CONFIG, CONFIG.lr / 2, CONFIG.effective_batch_size, 1))


def test_no_sync_all_reduces_once_per_step_instead_of_once_per_micro_batch(results):
    num_params = sum(p.numel() for p in make_model(CONFIG).parameters())
    assert num_params == 49
    for result in results:
        every, no_sync = result["every_micro_batch"], result["no_sync"]
        assert every["all_reduces"] == CONFIG.num_steps * CONFIG.gradient_accumulation_steps == 12
        assert no_sync["all_reduces"] == CONFIG.num_steps == 3
        assert every["all_reduces"] // no_sync["all_reduces"] == CONFIG.gradient_accumulation_steps
        for run in (every, no_sync):
            assert run["bytes"] == run["all_reduces"] * num_params * 8  # float64
    torch.testing.assert_close(results[0]["no_sync"]["params"], results[0]["every_micro_batch"]["params"])


def test_the_bar_chart_shows_the_counts(results):
    counts = {name: results[0][name]["all_reduces"] for name in ("every_micro_batch", "no_sync")}
    ax = plot_counts({"every micro-batch": counts["every_micro_batch"], "no_sync() until the last": counts["no_sync"]})
    assert [bar.get_height() for bar in ax.patches] == [12, 3]
    assert len({bar.get_hatch() for bar in ax.patches}) == 2  # told apart by hatching, not colour alone
    assert [t.get_text() for t in ax.texts] == ["12", "3"]
    plt.close("all")


def test_one_process_with_more_micro_batches_keeps_the_effective_batch(results):
    steps = CONFIG.effective_batch_size // (1 * CONFIG.train_batch_size)
    assert steps == 8
    torch.testing.assert_close(one_process(CONFIG, CONFIG.lr, CONFIG.train_batch_size, steps),
                               results[0]["no_sync"]["params"])
    grows = [w * CONFIG.train_batch_size * CONFIG.gradient_accumulation_steps for w in (1, 2, 4, 8)]
    assert grows == [16, 32, 64, 128]


def test_four_processes_with_half_the_micro_batches_land_on_the_same_parameters(reference):
    """The same effective batch on a real world_size of 4: gradient_accumulation_steps 2."""
    config = JobConfig(world_size=4, train_batch_size=4, gradient_accumulation_steps=2, num_steps=3, lr=0.1)
    assert config.effective_batch_size == CONFIG.effective_batch_size
    results = run_job(course_job, config.world_size, args=(config,), timeout=120)
    assert [r["no_sync"]["all_reduces"] for r in results] == [3] * 4
    assert [r["every_micro_batch"]["all_reduces"] for r in results] == [6] * 4
    for result in results:
        torch.testing.assert_close(result["no_sync"]["params"], reference)
