"""Notebook 07's claims, recomputed from a real 2-process gloo job and torch (not the stored outputs).

The job runs once per test module (module fixture): starting processes is the slow part.
"""

import pytest
import torch
import torch.nn.functional as F

from utils.distributed import (JobConfig, bucket_count_job, course_job, make_data, make_model,
                               make_token_data, make_token_model, params_close)
from utils.launcher import run_job
from utils.measure import largest_difference

CONFIG = JobConfig(world_size=2, train_batch_size=4, gradient_accumulation_steps=4, num_steps=3, lr=0.1)
SYNCS = ("every_micro_batch", "no_sync", "require_backward_grad_sync", "backward_only_in_no_sync")


@pytest.fixture(scope="module")
def results():
    return run_job(course_job, CONFIG.world_size, args=(CONFIG,), timeout=120)


def one_process(lr, train_batch_size, gradient_accumulation_steps, config=CONFIG):
    """The notebook's train_one_process: one epoch of notebook 05's loop on the whole data."""
    X, y = make_data(config)
    model = make_model(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    window = train_batch_size * gradient_accumulation_steps
    for X_step, y_step in zip(X.split(window), y.split(window)):
        for X_micro, y_micro in zip(X_step.split(train_batch_size), y_step.split(train_batch_size)):
            (torch.nn.MSELoss()(model(X_micro), y_micro) / gradient_accumulation_steps).backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach() for p in model.parameters()]


@pytest.fixture(scope="module")
def reference():
    return one_process(CONFIG.lr, CONFIG.effective_batch_size, 1)


def test_every_rank_joined_and_saw_its_own_rows(results):
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["ranks_counted"] == 2 for r in results)
    assert results[0]["first_step_rows"][0] == [0, 1, 2, 3] and results[1]["first_step_rows"][0] == [4, 5, 6, 7]
    seen = sorted(row for r in results for rows in r["first_step_rows"] for row in rows)
    assert seen == list(range(32))


def test_ranks_start_from_different_weights_and_ddp_gives_them_rank_0s(results):
    rank0, rank1 = results
    assert not any(map(torch.equal, rank1["params_before_ddp"], rank0["params_before_ddp"]))
    for rank in results:
        assert all(map(torch.equal, rank["params_after_ddp"], rank0["params_before_ddp"]))
    assert all(map(torch.equal, rank0["params_before_ddp"], make_model(CONFIG).parameters()))


def test_ranks_hold_identical_parameters(results):
    for run in (*SYNCS, "divided_by_world_size_too"):
        assert all(map(torch.equal, results[0][run]["params"], results[1][run]["params"])), run


def test_ddp_with_accumulation_equals_one_process_to_1e_15(results, reference):
    assert all(p.dtype == torch.float64 for p in reference)
    for run in SYNCS:
        difference = largest_difference(results[0][run]["params"], reference)
        assert difference < 1e-15, run
        assert params_close(results[0][run]["params"], reference)
    assert not params_close(list(make_model(CONFIG).parameters()), reference)  # training moved them
    # though the ranks started apart: with rank 1's own start and no broadcast, it would differ
    assert not params_close(list(make_model(CONFIG, seed=CONFIG.seed + 1).parameters()),
                            list(make_model(CONFIG).parameters()))


def test_dividing_by_world_size_too_equals_half_the_learning_rate(results, reference):
    mistake = results[0]["divided_by_world_size_too"]["params"]
    assert not params_close(mistake, reference)
    torch.testing.assert_close(mistake, one_process(CONFIG.lr / 2, CONFIG.effective_batch_size, 1))


def test_loss_over_k_is_enough_only_for_equal_micro_batches_of_a_per_sample_mean():
    """Each sample weighs 1/(world_size · train_batch_size · k) with equal micro-batches; not otherwise."""
    w = torch.ones(2, 4, 4, dtype=torch.float64, requires_grad=True)  # ranks × micro-steps × samples
    per_rank = [sum(w[r, m].mean() / 4 for m in range(4)) for r in range(2)]
    (sum(per_rank) / 2).backward()  # DDP's average of the ranks
    assert torch.allclose(w.grad, torch.full_like(w, 1 / 32))
    sizes = [[4, 4, 4, 4], [2, 2, 2, 10]]  # rank 1's micro-batches differ in size
    losses = [torch.ones(sum(s), dtype=torch.float64, requires_grad=True) for s in sizes]
    (sum(sum(part.mean() / 4 for part in losses[r].split(sizes[r])) for r in range(2)) / 2).backward()
    weights = torch.cat([loss.grad for loss in losses])
    assert weights.max() / weights.min() == pytest.approx(5.0)  # 1/(2·4·2) against 1/(2·4·10)


def test_token_loss_per_rank_is_off_and_the_global_count_times_world_size_fixes_it(results):
    inputs, labels = make_token_data(CONFIG)
    model = make_token_model(CONFIG)
    F.cross_entropy(model(inputs).flatten(0, 1), labels.flatten()).backward()
    one_process_grads = [p.grad for p in model.parameters()]
    rank0, rank1 = results
    tokens = [rank0["tokens_on_this_rank"]["tokens"], rank1["tokens_on_this_rank"]["tokens"]]
    assert tokens == [19, 30] and sum(tokens) == int((labels != -100).sum()) == 49
    per_rank = largest_difference(rank0["tokens_on_this_rank"]["grads"], one_process_grads)
    assert f"{per_rank:.2g}" == "0.034"
    for result in results:
        assert result["tokens_on_all_ranks"]["divided_by"] == 49
        assert largest_difference(result["tokens_on_all_ranks"]["grads"], one_process_grads) < 1e-15
    # a token of rank 0 weighs 30/19 times one of rank 1 under the per-rank normalisation
    assert (1 / (2 * 19)) / (1 / (2 * 30)) == pytest.approx(30 / 19)


def test_no_sync_all_reduces_once_per_step_instead_of_once_per_micro_batch(results):
    num_params = sum(p.numel() for p in make_model(CONFIG).parameters())
    assert num_params == 49
    for result in results:
        every, no_sync = result["every_micro_batch"], result["no_sync"]
        assert every["all_reduces"] == CONFIG.num_steps * CONFIG.gradient_accumulation_steps == 12
        assert no_sync["all_reduces"] == CONFIG.num_steps == 3
        for run in (every, no_sync):
            assert run["bytes"] == run["all_reduces"] * num_params * 8  # float64
        assert run["bytes"] // run["all_reduces"] == 392


def test_require_backward_grad_sync_saves_like_no_sync_and_backward_alone_in_no_sync_saves_nothing(results):
    for result in results:
        assert result["require_backward_grad_sync"]["all_reduces"] == 3
        assert result["backward_only_in_no_sync"]["all_reduces"] == 12  # 4 per window instead of 1


def test_with_a_bucket_per_tensor_all_reduces_start_before_backward_ends(results):
    first, second = results[0]["bucket_events"]
    assert first == ["first layer's weight gradient computed", "all-reduce of bucket 0 (4 tensors)"]
    computed = second.index("first layer's weight gradient computed")
    assert [e for e in second if e.startswith("all-reduce")] == [f"all-reduce of bucket {i} (1 tensor)"
                                                                 for i in range(4)]
    assert computed == 3  # three all-reduces started before the first layer's gradient existed


def test_with_many_buckets_counts_are_multiplied_by_the_buckets_after_the_first_backward():
    """4 tensors, a bucket each: the first synced backward() sends 1 bucket, every later one 4,
    so after the first window a window costs k × 4 = 16 all-reduces without no_sync(), 4 with it."""
    counts = run_job(bucket_count_job, CONFIG.world_size, args=(CONFIG,), timeout=120)
    for count in counts:
        assert count["every_micro_batch"] == (1 + 3 * 4) + 2 * (4 * 4)  # 12 synced backward() calls
        assert count["no_sync"] == 1 + 2 * 4  # 3 synced backward() calls


def test_keeping_the_effective_batch_with_floor_division(results):
    table = {w: (8 // w, w * 4 * (8 // w)) for w in (1, 2, 4, 3)}
    assert table == {1: (8, 32), 2: (4, 32), 4: (2, 32), 3: (2, 24)}
    torch.testing.assert_close(one_process(CONFIG.lr, CONFIG.train_batch_size, 8), results[0]["no_sync"]["params"])


def loss_after_one_epoch(lr, effective_batch):
    X, y = make_data(CONFIG)
    model, trained = make_model(CONFIG), one_process(lr, effective_batch, 1)
    with torch.no_grad():
        for param, value in zip(model.parameters(), trained):
            param.copy_(value)
        return torch.nn.MSELoss()(model(X), y).item()


def test_twice_the_batch_takes_steps_no_longer_so_an_epoch_goes_less_far():
    X, y = make_data(CONFIG)
    model = make_model(CONFIG)
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    mean_norms = {}
    for batch in (16, 32):
        norms = []
        for X_batch, y_batch in zip(X.split(batch), y.split(batch)):
            model.zero_grad()
            torch.nn.MSELoss()(model(X_batch), y_batch).backward()
            norms.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm())
        mean_norms[batch] = float(sum(norms) / len(norms))
    assert 0.9 < mean_norms[32] / mean_norms[16] <= 1.0  # "about as large"
    moved = {batch: float((torch.cat([p.flatten() for p in one_process(0.1, batch, 1)]) - start).norm())
             for batch in (16, 32)}
    assert moved[32] < 0.8 * moved[16]  # "less far"


def test_a_larger_batch_needs_a_larger_learning_rate():
    small, large, scaled = (loss_after_one_epoch(0.1, 16), loss_after_one_epoch(0.1, 32),
                            loss_after_one_epoch(0.2, 32))
    assert [round(v, 3) for v in (small, large, scaled)] == [0.442, 0.844, 0.418]
    assert 1.7 < large / small < 2.1  # "about twice as high"
    assert abs(scaled - small) < 0.1 * small  # "lands close to the smaller batch"


def test_distributed_sampler_set_epoch_and_drop_last(results):
    samplers = [r["sampler"] for r in results]
    for s in samplers:
        assert s["no_set_epoch"][0] == s["no_set_epoch"][1]  # the same order every epoch
        assert s["set_epoch"][0] != s["set_epoch"][1]
        assert [len(e) for e in s["set_epoch"]] == [5, 5] and [len(e) for e in s["drop_last"]] == [4, 4]
    for epoch in (0, 1):
        padded = samplers[0]["set_epoch"][epoch] + samplers[1]["set_epoch"][epoch]
        assert sorted(set(padded)) == list(range(9)) and len(padded) == 10  # one sample twice
        dropped = samplers[0]["drop_last"][epoch] + samplers[1]["drop_last"][epoch]
        assert len(set(dropped)) == 8  # one sample left out
    both = set(samplers[0]["set_epoch"][0]) & set(samplers[1]["set_epoch"][0])
    assert both == {8}
    left_out = set(range(9)) - set(samplers[0]["drop_last"][0] + samplers[1]["drop_last"][0])
    assert left_out == {6}


def test_four_processes_with_half_the_micro_batches_land_on_the_same_parameters(reference):
    """The same effective batch on a real world_size of 4: gradient_accumulation_steps 2."""
    config = JobConfig(world_size=4, train_batch_size=4, gradient_accumulation_steps=2, num_steps=3, lr=0.1)
    assert config.effective_batch_size == CONFIG.effective_batch_size
    results = run_job(course_job, config.world_size, args=(config,), timeout=120)
    assert [r["no_sync"]["all_reduces"] for r in results] == [3] * 4
    assert [r["every_micro_batch"]["all_reduces"] for r in results] == [6] * 4
    for result in results:
        torch.testing.assert_close(result["no_sync"]["params"], reference)
        assert all(map(torch.equal, result["params_after_ddp"], make_model(config).parameters()))
