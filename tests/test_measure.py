"""utils.measure: bytes saved for backward, gradient snapshots and their largest difference."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from torch import nn

from utils.device import get_device
from utils.measure import BackwardCounter, SavedTensorMeter, grads, largest_difference, rounding_error

device = get_device()


def mlp(hidden: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1)).to(device)


def test_counts_activations_and_leaves_out_the_parameters():
    model = mlp()
    X, y = torch.ones(8, 4, device=device), torch.zeros(8, 1, device=device)
    with SavedTensorMeter(exclude=model) as meter:
        nn.MSELoss()(model(X), y)
    # input (8×4), tanh output (8×16, also the last layer's input), prediction and target (8×1 each)
    assert meter.shapes == [(8, 4), (8, 16), (8, 1), (8, 1)]
    assert meter.num_tensors == 4 and meter.num_bytes == 4 * 8 * (4 + 16 + 1 + 1)


def test_parameters_count_when_not_excluded():
    model = mlp()
    X = torch.ones(8, 4, device=device)
    with SavedTensorMeter() as everything:
        model(X).sum()
    with SavedTensorMeter(exclude=model.parameters()) as activations:
        model(X).sum()
    # the last weight is saved (as a transposed view) to pass the gradient on to the hidden
    # layer; the first is not, because the input X needs no gradient
    weights = 4 * 16
    assert everything.num_bytes == activations.num_bytes + weights


def test_each_storage_counts_once_and_a_view_counts_its_whole_storage():
    x = torch.randn(10, 3, device=device, requires_grad=True)
    with SavedTensorMeter() as meter:
        (x * x).sum()  # x is saved twice: one storage
    assert meter.num_tensors == 1 and meter.num_bytes == 10 * 3 * 4
    big = torch.randn(100, 3, device=device)
    w = torch.randn(3, 1, device=device, requires_grad=True)
    with SavedTensorMeter(exclude=[w]) as meter:
        (big[:10] @ w).sum()  # a slice keeps all of `big` alive
    assert meter.num_bytes == 100 * 3 * 4
    with SavedTensorMeter(exclude=[w]) as meter:
        (big[:10].clone() @ w).sum()
    assert meter.num_bytes == 10 * 3 * 4


def test_bytes_scale_with_the_batch_and_dtype():
    model = mlp()
    counts = []
    for size in (1, 2, 4, 8, 16, 32):
        with SavedTensorMeter(exclude=model) as meter:
            nn.MSELoss()(model(torch.ones(size, 4, device=device)), torch.zeros(size, 1, device=device))
        counts.append(meter.num_bytes)
    assert counts == [88 * size for size in (1, 2, 4, 8, 16, 32)]
    model64 = mlp().double()
    with SavedTensorMeter(exclude=model64) as meter:
        nn.MSELoss()(model64(torch.ones(8, 4, device=device, dtype=torch.float64)),
                     torch.zeros(8, 1, device=device, dtype=torch.float64))
    assert meter.num_bytes == 2 * counts[3]


def test_nothing_is_counted_without_grad_or_after_the_block():
    model = mlp()
    with torch.no_grad(), SavedTensorMeter(exclude=model) as meter:
        model(torch.ones(8, 4, device=device))
    assert meter.num_bytes == 0 and meter.shapes == []
    with SavedTensorMeter(exclude=model) as meter:
        pass
    model(torch.ones(8, 4, device=device)).sum()
    assert meter.num_bytes == 0


def test_backward_still_works_inside_and_after_and_a_meter_can_be_reused():
    model = mlp()
    meter = SavedTensorMeter(exclude=model)
    for _ in range(2):
        with meter:
            loss = model(torch.ones(8, 4, device=device)).sum()
            loss.backward()
        assert meter.num_bytes == 4 * 8 * (4 + 16)
    with pytest.raises(RuntimeError, match="already counting"):
        with meter, meter:
            pass


@pytest.mark.parametrize("exclude", [5, ["weight"], [torch.ones(1), None]])
def test_bad_exclude_is_a_clear_error(exclude):
    with pytest.raises(TypeError, match="expected"):
        SavedTensorMeter(exclude=exclude)


def test_a_single_tensor_may_be_excluded():
    w = torch.ones(3, 1, device=device, requires_grad=True)
    with SavedTensorMeter(exclude=w) as meter:
        (torch.ones(2, 3, device=device) @ w).sum()
    assert meter.num_bytes == 2 * 3 * 4


def test_grads_copies_and_fills_none_with_zeros():
    model = mlp()
    model[0].weight.requires_grad_(False)  # keeps .grad None
    model(torch.ones(2, 4, device=device)).sum().backward()
    snapshot = grads(model)
    assert [g.shape for g in snapshot] == [p.shape for p in model.parameters()]
    assert torch.count_nonzero(snapshot[0]) == 0
    snapshot[1].add_(1.0)
    assert not torch.equal(snapshot[1], model[0].bias.grad)  # a copy, not the .grad itself


def test_grads_bad_input():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        grads([torch.ones(1)])
    with pytest.raises(ValueError, match="call backward"):
        grads(mlp())


def test_largest_difference_is_exact_and_takes_lists_or_tensors():
    a = torch.tensor([1.0, 2.0, 3.0])
    b = torch.tensor([1.0, 2.5, 2.0])
    assert largest_difference(a, b) == 1.0
    assert largest_difference([a, a], [a, b]) == 1.0
    one = torch.tensor([1.0], dtype=torch.float32)
    nxt = torch.nextafter(one, torch.tensor([2.0]))
    assert largest_difference(one, nxt) == torch.finfo(torch.float32).eps  # float64 keeps one ulp exactly
    assert largest_difference(torch.ones(0), torch.ones(0)) == 0.0


@pytest.mark.parametrize("a, b, error", [
    ([1.0], [1.0], TypeError),
    (torch.ones(2), "x", TypeError),
    ([], [], ValueError),
    ([torch.ones(2)], [torch.ones(2), torch.ones(2)], ValueError),
    (torch.ones(2), torch.ones(3), ValueError),
])
def test_largest_difference_bad_input(a, b, error):
    with pytest.raises(error, match="expected"):
        largest_difference(a, b)


def test_backward_counter_counts_backward_calls_per_step_and_after_the_last():
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    X = torch.ones(4, 2)
    with BackwardCounter(model, optimizer) as counter:
        for calls in (3, 1, 2):
            for _ in range(calls):
                model(X).sum().backward()
            optimizer.step()
        model(X).sum().backward()
        with torch.no_grad():
            model(X)  # a forward pass without backward() counts nothing
        torch.autograd.grad(model(X).sum(), list(model.parameters()))  # adds nothing into .grad
    assert counter.per_step == [3, 1, 2] and counter.pending == 1
    model(X).sum().backward()
    optimizer.step()
    assert counter.per_step == [3, 1, 2] and counter.pending == 1  # removed on leaving the block


def test_backward_counter_counts_one_backward_of_a_summed_window_once():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    counter = BackwardCounter(model, optimizer)
    sum(model(torch.ones(1, 2)).sum() for _ in range(4)).backward()
    optimizer.step()
    counter.remove()
    assert counter.per_step == [1]


def test_backward_counter_skips_frozen_parameters():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].requires_grad_(False)
    optimizer = torch.optim.SGD(model[1].parameters(), lr=0.1)
    with BackwardCounter(model, optimizer) as counter:
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
    assert counter.per_step == [1]


@pytest.mark.parametrize("model, optimizer, error, words", [
    ("model", "optimizer", TypeError, "expected a torch.nn.Module, got str"),
    (nn.Linear(2, 1), [torch.zeros(1)], TypeError, "pass the optimizer, not model.parameters()"),
    (nn.Linear(2, 1).requires_grad_(False), None, ValueError, "no parameter that requires grad"),
])
def test_backward_counter_bad_input(model, optimizer, error, words):
    if optimizer is None:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(error, match=words):
        BackwardCounter(model, optimizer)


# rounding_error (notebook 06's plot of what float16 and bfloat16 keep)

HALF_TYPES = [torch.float16, torch.bfloat16, torch.float32]


@settings(max_examples=200, deadline=None)
@given(exponent=st.floats(-12.0, 4.8), dtype=st.sampled_from(HALF_TYPES))
def test_rounding_error_bounds_what_torch_really_rounds(exponent, dtype):
    """torch is the oracle: storing v in dtype moves it by no more than the bound."""
    value = torch.tensor([10.0**exponent], dtype=torch.float64)
    actual = ((value.to(dtype).double() - value).abs() / value).item()
    assert actual <= rounding_error(value, dtype).item() * (1 + 1e-12)


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("start", [1.0, 2.0**-20, 2.0**-140, 1000.0])
def test_rounding_error_is_reached_somewhere_in_each_range(dtype, start):
    """The bound is tight: just off the midpoints between neighbours, rounding comes close to it."""
    values = torch.linspace(start, 2 * start, 100_001, dtype=torch.float64)
    actual = (values.to(dtype).double() - values).abs() / values
    bound = rounding_error(values, dtype)
    assert bool((actual <= bound * (1 + 1e-12)).all())
    assert (actual / bound).max() > 0.95  # at a midpoint between neighbours it is the bound itself


def test_rounding_error_of_float16_and_bfloat16_at_the_sizes_notebook_06_names():
    sizes = torch.tensor([1.0, 6.2e-5, 3.1e-8, 2.9e-8, 1e-8, 65519.0, 65520.0, 0.0], dtype=torch.float64)
    half, bfloat = rounding_error(sizes, torch.float16), rounding_error(sizes, torch.bfloat16)
    assert half[0] == 2.0**-11 and bfloat[0] == 2.0**-8  # 0.05% against 0.4%
    assert half[1] < 2.0**-10 and 0.5 < half[2] < 1 and half[3] == half[4] == 1.0  # lost below 3e-8
    assert half[5] < 1e-3 and half[6] == float("inf") and half[7] == 0.0
    assert bool((bfloat[:6] <= 2.0**-8).all())  # bfloat16 keeps every size, with fewer digits
    assert sizes[3].half().item() == 0.0 and sizes[2].half().item() > 0


@pytest.mark.parametrize("values, dtype, words", [
    ([1.0], torch.float16, "expected values as a tensor"),
    (torch.ones(2), torch.int32, "floating-point torch.dtype"),
    (torch.ones(2), "float16", "floating-point torch.dtype"),
])
def test_rounding_error_bad_input(values, dtype, words):
    with pytest.raises(TypeError, match=words):
        rounding_error(values, dtype)
