"""Notebook 02's claims, recomputed from torch and the helpers (independent of stored outputs)."""

import math

import pytest
import torch

from utils.data import make_regression
from utils.device import get_device
from utils.surface import least_squares_minimum, mse_surface

device = get_device()
SGD, Adam = torch.optim.SGD, torch.optim.Adam


def problem(dtype=torch.float64):
    data = make_regression(num_samples=32, num_features=1, seed=0, device=device, dtype=dtype)
    return data.X, data.y


def make_model(dtype=torch.float64):
    model = torch.nn.Linear(1, 1, dtype=dtype)
    with torch.no_grad():
        model.weight.fill_(-1.0)
        model.bias.fill_(2.0)
    return model.to(device)


def train(optimizer_class, lr, num_steps, zero_grad=True, dtype=torch.float64, **options):
    """The notebook's train(): losses and the (w, b) path, start included."""
    X, y = problem(dtype)
    model = make_model(dtype)
    optimizer = optimizer_class(model.parameters(), lr=lr, **options)
    losses, path = [], [(model.weight.item(), model.bias.item())]
    for _ in range(num_steps):
        if zero_grad:
            optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        path.append((model.weight.item(), model.bias.item()))
    return losses, path


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


@pytest.fixture(scope="module")
def runs():
    """The 300-step runs of sections 3, 4 and 6, computed once."""
    return {
        "correct": train(SGD, 0.05, 300),
        "forgot": train(SGD, 0.05, 300, zero_grad=False),
        "momentum_one": train(SGD, 0.05, 300, momentum=1.0, dampening=0.0),
        "adam": train(Adam, 0.1, 300),
        "adam_forgot": train(Adam, 0.1, 300, zero_grad=False),
    }


def lowest_loss():
    X, y = problem()
    w, b = least_squares_minimum(X, y)
    return torch.nn.functional.mse_loss(X * w + b, y).item()


def test_section1_first_steps_agree_then_the_forgotten_loop_falls_faster():
    with_zero_grad, _ = train(SGD, 0.05, 5)
    without, _ = train(SGD, 0.05, 5, zero_grad=False)
    assert with_zero_grad[:2] == without[:2]
    assert all(b < a for a, b in zip(with_zero_grad[2:], without[2:]))


def test_section2_grad_is_exactly_the_running_sum_and_sgd_moves_lr_times_it():
    X, y = problem()
    lr = 0.05
    model = make_model()
    optimizer = SGD(model.parameters(), lr=lr)
    params = list(model.parameters())
    running_sum = torch.zeros(2, dtype=torch.float64, device=device)
    for _ in range(4):
        g = flat(torch.autograd.grad(torch.nn.functional.mse_loss(model(X), y), params))
        running_sum = running_sum + g
        torch.nn.functional.mse_loss(model(X), y).backward()
        assert torch.equal(flat(p.grad for p in params), running_sum)
        optimizer.step()
    torch.nn.functional.mse_loss(model(X), y).backward()
    before = flat(params).detach()
    optimizer.step()
    torch.testing.assert_close(flat(params).detach() - before, -lr * flat(p.grad for p in params))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_section3_forgotten_loop_is_sgd_with_momentum_one_bit_for_bit(dtype):
    forgot = train(SGD, 0.05, 300, zero_grad=False, dtype=dtype)
    momentum_one = train(SGD, 0.05, 300, dtype=dtype, momentum=1.0, dampening=0.0)
    assert forgot == momentum_one  # losses and paths, exactly
    assert forgot != train(SGD, 0.05, 300, dtype=dtype, momentum=0.9)  # friction changes it


def test_section3_momentum_one_bit_for_bit_at_the_small_learning_rate_too():
    assert train(SGD, 0.001, 1500, zero_grad=False)[0] == train(SGD, 0.001, 1500, momentum=1.0)[0]


def test_section4_correct_loop_settles_at_the_minimum_and_forgotten_one_never_does(runs):
    lowest = lowest_loss()
    last_correct, last_forgot = runs["correct"][0][-100:], runs["forgot"][0][-100:]
    assert round(lowest, 4) == 0.0105
    assert max(last_correct) - lowest < 1e-9
    assert min(last_forgot) > 5 * lowest and max(last_forgot) > 10.0  # printed: 0.0824 to 11.9953


def test_section4_paths_one_settles_the_other_swings_back_near_the_start(runs):
    X, y = problem()
    best = least_squares_minimum(X, y)
    start = runs["correct"][1][0]
    assert math.dist(runs["correct"][1][40], best) < 0.1  # on the star after 40 steps (0.06 away)
    forgot = runs["forgot"][1][:41]
    assert min(math.dist(p, best) for p in forgot[1:10]) < 0.6  # rushes past the minimum (0.52)
    assert max(math.dist(p, best) for p in forgot[5:15]) > 0.95 * math.dist(start, best)  # far side
    assert min(math.dist(p, start) for p in forgot[15:41]) < 0.3  # back near the start (0.22)


def test_section4_the_drawn_surface_is_the_loss_of_the_model():
    X, y = problem()
    w_values, b_values = torch.tensor([-1.0, 0.5, 3.0]), torch.tensor([2.0, -0.25])
    surface = mse_surface(X, y, w_values, b_values)
    for i, b in enumerate(b_values.tolist()):
        for j, w in enumerate(w_values.tolist()):
            torch.testing.assert_close(surface[i, j].item(), torch.nn.functional.mse_loss(X * w + b, y).item())


def test_section5_a_short_run_hides_the_bug():
    with_zero_grad, _ = train(SGD, 0.001, 1500)
    without, _ = train(SGD, 0.001, 1500, zero_grad=False)
    at = {step: (with_zero_grad[step - 1], without[step - 1]) for step in (30, 100, 300, 1000, 1500)}
    assert [b < a for a, b in at.values()] == [True, True, True, False, False]
    assert 8 < at[100][0] / at[100][1] < 10  # "about 9 times lower" at step 100
    assert 190 < at[1500][1] / at[1500][0] < 230  # "200 times higher" at step 1500
    assert with_zero_grad[-1] < with_zero_grad[-2]  # "the correct loop is still improving"


def test_section6_sgd_swings_keep_one_size_adams_grow_wider_and_slower(runs):
    def peaks(losses):
        return [max(losses[i : i + 100]) for i in (0, 100, 200)]

    sgd = peaks(runs["forgot"][0])
    assert max(sgd) / min(sgd) < 1.02
    adam = peaks(runs["adam_forgot"][0])
    assert adam[0] < adam[1] < adam[2] and adam[2] > 5 * adam[0]
    assert abs(runs["adam"][0][-1] - lowest_loss()) < 1e-4  # correct Adam settles
    X, y = problem()
    w_best = least_squares_minimum(X, y)[0]
    side = [w > w_best for w, _ in runs["adam_forgot"][1]]
    crossings = [t for t in range(1, len(side)) if side[t] != side[t - 1]]
    gaps = [b - a for a, b in zip(crossings, crossings[1:])]
    assert len(crossings) >= 4 and all(a < b for a, b in zip(gaps, gaps[1:]))
    assert gaps == [58, 69, 83]  # as the notebook's prose says


def train_zeroing(where, optimizer_class, lr, num_steps=50, set_to_none=True):
    X, y = problem()
    model = make_model()
    optimizer = optimizer_class(model.parameters(), lr=lr)
    for _ in range(num_steps):
        if where == "first":
            optimizer.zero_grad(set_to_none=set_to_none)
        torch.nn.functional.mse_loss(model(X), y).backward()
        if where == "between":
            optimizer.zero_grad(set_to_none=set_to_none)
        optimizer.step()
        if where == "last":
            optimizer.zero_grad(set_to_none=set_to_none)
    return model, optimizer


@pytest.mark.parametrize("optimizer_class, lr", [(SGD, 0.05), (Adam, 0.1)])
def test_section7_zero_grad_first_or_last_is_identical_between_trains_nothing(optimizer_class, lr):
    start = flat(make_model().parameters())
    first, _ = train_zeroing("first", optimizer_class, lr)
    last, _ = train_zeroing("last", optimizer_class, lr)
    assert torch.equal(flat(first.parameters()), flat(last.parameters()))
    assert not torch.equal(flat(first.parameters()), start)
    broken, optimizer = train_zeroing("between", optimizer_class, lr)
    assert torch.equal(flat(broken.parameters()), start) and len(optimizer.state) == 0
    zeros, _ = train_zeroing("between", optimizer_class, lr, set_to_none=False)
    assert torch.equal(flat(zeros.parameters()), start)  # a zero gradient moves nothing either


def test_section8_model_and_optimizer_zero_grad_agree_when_they_hold_the_same_parameters():
    X, y = problem()
    model = make_model()
    optimizer = SGD(model.parameters(), lr=0.05)
    for clear in (model.zero_grad, optimizer.zero_grad):
        torch.nn.functional.mse_loss(model(X), y).backward()
        clear()
        assert all(p.grad is None for p in model.parameters())


def train_two_optimizers(zero_grad, num_steps=200):
    X, y = problem()
    model = make_model()
    optimizers = [SGD([model.weight], lr=0.05), SGD([model.bias], lr=0.05)]
    losses = []
    for _ in range(num_steps):
        zero_grad(model, optimizers)
        loss = torch.nn.functional.mse_loss(model(X), y)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        losses.append(loss.item())
    return losses


def test_section8_clearing_one_of_two_optimizers_leaves_the_bias_swinging():
    lowest = lowest_loss()
    weight_only = train_two_optimizers(lambda m, opts: opts[0].zero_grad())[-100:]
    whole_model = train_two_optimizers(lambda m, opts: m.zero_grad())[-100:]
    each = train_two_optimizers(lambda m, opts: [o.zero_grad() for o in opts])[-100:]
    assert max(weight_only) > 1.0 and min(weight_only) > lowest
    assert max(whole_model) - lowest < 1e-5 and whole_model == each  # settled (printed: 0.0105)


def test_section8_model_zero_grad_misses_a_tensor_outside_the_model():
    X, y = problem()
    model = make_model()
    temperature = torch.ones(1, dtype=torch.float64, device=device, requires_grad=True)
    loss = torch.nn.functional.mse_loss(model(X), y)
    (loss * temperature).backward()
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(temperature.grad.item(), loss.item())


def test_section9_zero_grad_leaves_the_momentum_buffer_and_adams_state_untouched():
    X, y = problem()
    model = make_model()
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
    suggestions = []
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        suggestions.append(model.weight.grad.clone())
        optimizer.step()
    buffer = optimizer.state[model.weight]["momentum_buffer"].clone()
    g1, g2, g3 = suggestions
    torch.testing.assert_close(buffer, 0.81 * g1 + 0.9 * g2 + g3)
    optimizer.zero_grad()
    assert model.weight.grad is None and torch.equal(optimizer.state[model.weight]["momentum_buffer"], buffer)

    model = make_model()
    optimizer = Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        optimizer.step()
    state = optimizer.state[model.weight]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and float(state["step"]) == 3.0
    before = {name: value.clone() for name, value in state.items()}
    optimizer.zero_grad()
    assert all(torch.equal(before[name], state[name]) for name in state)


def test_section6_adams_running_sum_grows_as_the_swings_grow():
    X, y = problem()
    model = make_model()
    optimizer = Adam(model.parameters(), lr=0.1)
    sizes = []
    for _ in range(300):  # no zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        optimizer.step()
        sizes.append(model.weight.grad.abs().item())
    largest = [max(sizes[i : i + 100]) for i in (0, 100, 200)]
    assert largest[0] < largest[1] < largest[2]  # 117, 207, 341
