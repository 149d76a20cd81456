"""utils.data: seeded synthetic data, identical on every machine."""

import pytest
import torch

from utils.data import make_regression, make_sequences
from utils.device import get_device, make_generator


def test_regression_shapes_and_types():
    data = make_regression(num_samples=10, num_features=2)
    assert data.X.shape == (10, 2) and data.y.shape == (10, 1)
    assert data.weight.shape == (2, 1) and data.bias.shape == (1,)
    assert all(t.dtype == torch.float32 for t in data)


def test_regression_is_linear_plus_small_noise():
    data = make_regression(num_samples=500, num_features=3, noise=0.1, seed=4, dtype=torch.float64)
    residual = data.y - (data.X @ data.weight + data.bias)
    assert 0.08 < residual.std().item() < 0.12
    exact = make_regression(num_samples=20, noise=0.0, seed=4, dtype=torch.float64)
    torch.testing.assert_close(exact.y, exact.X @ exact.weight + exact.bias)


def test_regression_is_drawn_from_the_seeded_cpu_generator():
    generator = make_generator(3)
    weight = torch.randn(2, 1, generator=generator, dtype=torch.float64)
    data = make_regression(num_features=2, seed=3, dtype=torch.float64)
    assert torch.equal(data.weight, weight)
    assert torch.equal(make_regression(seed=3).X, make_regression(seed=3).X)
    assert not torch.equal(make_regression(seed=3).X, make_regression(seed=5).X)


def test_regression_moves_to_the_course_device():
    device = get_device()
    data = make_regression(seed=1, device=device)
    assert data.X.device.type == device.type
    assert torch.equal(data.X.cpu(), make_regression(seed=1).X)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"num_samples": 0}, ValueError, "num_samples >= 1"),
        ({"num_features": 2.0}, TypeError, "num_features as an int"),
        ({"noise": -1.0}, ValueError, "noise as a number >= 0"),
        ({"dtype": torch.int64}, TypeError, "floating dtype"),
        ({"seed": "0"}, TypeError, "seed as an int"),
    ],
)
def test_regression_bad_input_is_a_clear_error(kwargs, error, words):
    with pytest.raises(error, match=words):
        make_regression(**kwargs)


def test_sequences_targets_are_running_means_of_the_first_feature():
    inputs, targets = make_sequences(num_sequences=3, num_steps=4, num_features=2, seed=0, dtype=torch.float64)
    assert inputs.shape == (3, 4, 2) and targets.shape == (3, 4)
    torch.testing.assert_close(targets[:, 2], inputs[:, :3, 0].mean(dim=1))


def test_sequences_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="num_steps >= 1"):
        make_sequences(num_steps=0)
