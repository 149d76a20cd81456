"""utils.distributed: the plumbing of notebook 07's job, without starting processes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.distributed import (
    SEQUENCES_PER_MICRO_BATCH,
    JobConfig,
    course_job,
    make_data,
    make_model,
    make_token_data,
    make_token_model,
    micro_batch,
    micro_batch_rows,
    params_close,
    rank_sequences,
    train,
    train_tokens,
)


@settings(max_examples=60, deadline=None)
@given(world_size=st.integers(1, 8), train_batch_size=st.integers(1, 6),
       gradient_accumulation_steps=st.integers(1, 6), num_steps=st.integers(1, 3))
def test_each_step_uses_its_effective_batch_of_rows_exactly_once(world_size, train_batch_size,
                                                                  gradient_accumulation_steps, num_steps):
    config = JobConfig(world_size=world_size, train_batch_size=train_batch_size,
                       gradient_accumulation_steps=gradient_accumulation_steps, num_steps=num_steps)
    effective = config.effective_batch_size
    assert effective == world_size * train_batch_size * gradient_accumulation_steps
    for step in range(num_steps):
        rows = [row for micro_step in range(gradient_accumulation_steps) for rank in range(world_size)
                for row in micro_batch_rows(step, micro_step, rank, config)]
        assert sorted(rows) == list(range(step * effective, (step + 1) * effective))


def test_micro_batch_returns_those_rows():
    config = JobConfig(world_size=2, train_batch_size=4, gradient_accumulation_steps=4, num_steps=3)
    X, y = make_data(config)
    assert X.shape == (96, 4) and y.shape == (96, 1) and X.dtype == torch.float64
    X_micro, y_micro = micro_batch(X, y, 1, 2, 1, config)
    assert list(micro_batch_rows(1, 2, 1, config)) == [52, 53, 54, 55]
    assert torch.equal(X_micro, X[52:56]) and torch.equal(y_micro, y[52:56])


def test_model_and_data_are_the_same_on_every_call():
    config = JobConfig()
    first, second = make_model(config), make_model(config)
    assert all(p.dtype == torch.float64 for p in first.parameters())
    assert all(map(torch.equal, first.parameters(), second.parameters()))
    assert not all(map(torch.equal, first.parameters(), make_model(JobConfig(seed=1)).parameters()))
    assert all(map(torch.equal, make_data(config), make_data(config)))


def test_params_close_compares_lists_of_tensors():
    a = [torch.ones(2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)]
    assert params_close(a, [t + 1e-12 for t in a])
    assert not params_close(a, [t + 1e-3 for t in a])
    assert not params_close(a, a[:1])
    with pytest.raises(TypeError, match="first argument as a list of tensors, got Tensor"):
        params_close(a[0], a)
    with pytest.raises(TypeError, match="second argument as a list of tensors"):
        params_close(a, [1.0, 2.0])


@pytest.mark.parametrize(
    "kwargs, words",
    [({"world_size": 0}, "world_size as an int >= 1"), ({"train_batch_size": 2.5}, "train_batch_size"),
     ({"gradient_accumulation_steps": True}, "gradient_accumulation_steps"), ({"lr": 0}, "lr as a number > 0"),
     ({"lr": "0.1"}, "lr as a number > 0"), ({"seed": -1}, "seed as an int >= 0"),
     ({"seed": 1.5}, "seed as an int >= 0")],
)
def test_bad_config_is_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        JobConfig(**kwargs)


def test_course_job_refuses_a_world_size_other_than_its_config():
    with pytest.raises(ValueError, match="config.world_size is 2; start it with world_size=config.world_size"):
        course_job(0, 4, JobConfig(world_size=2))


def test_make_model_takes_a_seed_and_defaults_to_the_configs():
    config = JobConfig(seed=3)
    assert all(map(torch.equal, make_model(config).parameters(), make_model(config, seed=3).parameters()))
    assert not any(map(torch.equal, make_model(config).parameters(), make_model(config, seed=4).parameters()))


@settings(max_examples=30, deadline=None)
@given(world_size=st.integers(1, 4), gradient_accumulation_steps=st.integers(1, 4), seed=st.integers(0, 50))
def test_the_ranks_token_sequences_partition_the_steps_sequences(world_size, gradient_accumulation_steps, seed):
    config = JobConfig(world_size=world_size, gradient_accumulation_steps=gradient_accumulation_steps, seed=seed)
    inputs, labels = make_token_data(config)
    per_rank = gradient_accumulation_steps * SEQUENCES_PER_MICRO_BATCH
    assert inputs.shape[0] == labels.shape[0] == world_size * per_rank and inputs.dtype == torch.float64
    rows = [row for rank in range(world_size) for row in range(len(labels))[rank_sequences(config, rank)]]
    assert rows == list(range(len(labels)))
    assert all(map(torch.equal, make_token_data(config), make_token_data(config)))


def test_the_token_job_holds_unequal_token_counts_per_rank():
    config = JobConfig()
    _, labels = make_token_data(config)
    counts = [int((labels[rank_sequences(config, r)] != -100).sum()) for r in range(2)]
    assert counts == [19, 30]
    model = make_token_model(config)
    assert model.weight.shape == (5, 4) and model.weight.dtype == torch.float64
    assert all(map(torch.equal, model.parameters(), make_token_model(config).parameters()))


def test_train_refuses_an_unknown_sync_or_normalisation_before_starting():
    with pytest.raises(ValueError, match="expected sync as one of"):
        train(0, JobConfig(), sync="sometimes")
    with pytest.raises(ValueError, match="expected normalise as one of"):
        train_tokens(0, JobConfig(), normalise="by_magic")
