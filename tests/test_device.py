"""utils.device: choosing the device and seeding."""

import pytest
import torch

from utils.device import ENV_VAR, describe_environment, get_device, make_generator


def test_default_is_cuda_when_available(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert get_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_environment_variable_forces_cpu(monkeypatch):
    monkeypatch.setenv(ENV_VAR, " CPU ")
    assert get_device() == torch.device("cpu")


def test_argument_wins_over_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "nonsense")
    assert get_device("cpu") == torch.device("cpu")


def test_unknown_device_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "tpu")
    with pytest.raises(ValueError, match=f"{ENV_VAR} must be 'cpu' or 'cuda', got 'tpu'"):
        get_device()


def test_wrong_type_is_a_clear_error():
    with pytest.raises(TypeError, match="expected the device as a string"):
        get_device(0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_one_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="asks for 'cuda', but torch .* sees no CUDA GPU"):
        get_device()


def test_generator_is_seeded_and_on_the_cpu():
    a = torch.randn(5, generator=make_generator(7))
    b = torch.randn(5, generator=make_generator(7))
    assert make_generator(7).device.type == "cpu"
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.randn(5, generator=make_generator(8)))


@pytest.mark.parametrize("seed, error", [(1.5, TypeError), ("1", TypeError), (True, TypeError), (-1, ValueError)])
def test_bad_seed_is_a_clear_error(seed, error):
    with pytest.raises(error, match="seed"):
        make_generator(seed)


def test_describe_environment_names_versions():
    text = describe_environment(torch.device("cpu"))
    assert torch.__version__ in text and "device     cpu" in text
