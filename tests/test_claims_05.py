"""Notebook 05's claims, recomputed from torch and the helpers (independent of stored outputs)."""

import math
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.data import make_regression
from utils.device import get_device
from utils.measure import BackwardCounter, SavedTensorMeter, grads, largest_difference
from utils.plotting import plot_schedules
from utils.printing import fmt_diff

device = get_device()
data = make_regression(num_samples=96, num_features=4, seed=0, device=device)
X, y = data.X, data.y
train_batch_size, gradient_accumulation_steps = 8, 4
effective_batch = train_batch_size * gradient_accumulation_steps
micro_batches = list(zip(X.split(train_batch_size), y.split(train_batch_size)))
loss_fn = nn.MSELoss()
lr = 0.1
k = gradient_accumulation_steps


def make_model(dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    return model.to(device=device, dtype=dtype)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def train(lr, divide=True, optimizer_class=torch.optim.SGD, batches=micro_batches, k=k, max_norm=None,
          dtype=torch.float32):
    model = make_model(dtype)
    optimizer = optimizer_class(model.parameters(), lr=lr)
    for i, (X_micro, y_micro) in enumerate(batches):
        loss = loss_fn(model(X_micro.to(dtype)), y_micro.to(dtype))
        (loss / k if divide else loss).backward()
        if (i + 1) % k == 0:
            if max_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            optimizer.zero_grad()
    return params(model)


def window_gradients(dtype, divide=True):
    """Gradients of one window (accumulated) and of the big batch, each from a fresh model."""
    X_big, y_big = X[:effective_batch].to(dtype), y[:effective_batch].to(dtype)
    model = make_model(dtype)
    for X_micro, y_micro in zip(X_big.split(train_batch_size), y_big.split(train_batch_size)):
        loss = loss_fn(model(X_micro), y_micro)
        (loss / k if divide else loss).backward()
    big = make_model(dtype)
    loss_fn(big(X_big), y_big).backward()
    return grads(model), grads(big)


# 1. The loop


def test_the_loop_runs_backward_per_micro_batch_and_steps_once_per_window():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with BackwardCounter(model, optimizer) as counter:
        for i, (X_micro, y_micro) in enumerate(micro_batches):
            (loss_fn(model(X_micro), y_micro) / k).backward()
            if (i + 1) % k == 0:
                optimizer.step()
                optimizer.zero_grad()
    assert len(micro_batches) == 12 and counter.per_step == [4, 4, 4] and effective_batch == 32


def test_zero_grad_before_every_backward_leaves_only_the_last_micro_batch():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for X_micro, y_micro in micro_batches[:k]:
        optimizer.zero_grad()
        (loss_fn(model(X_micro), y_micro) / k).backward()
    wrong = grads(model)
    model.zero_grad()
    (loss_fn(model(X_micro), y_micro) / k).backward()
    assert largest_difference(wrong, grads(model)) == 0
    accumulated, _ = window_gradients(torch.float32)
    assert largest_difference(wrong, accumulated) > 0.1  # and that is not the window's gradient


# 2. It equals one big batch


def test_accumulated_gradient_equals_the_big_batch_to_rounding():
    accumulated, big = window_gradients(torch.float32)
    torch.testing.assert_close(accumulated, big)
    largest_gradient = max(g.abs().max().item() for g in big)
    assert largest_difference(accumulated, big) <= 8 * torch.finfo(torch.float32).eps * largest_gradient
    accumulated64, big64 = window_gradients(torch.float64)
    assert largest_difference(accumulated64, big64) < 1e-12
    largest64 = max(g.abs().max().item() for g in big64)
    assert largest_difference(accumulated64, big64) <= 8 * torch.finfo(torch.float64).eps * largest64
    assert f"{torch.finfo(torch.float32).eps:.1e}" == "1.2e-07"
    assert f"{torch.finfo(torch.float64).eps:.1e}" == "2.2e-16"


def test_a_rerun_of_the_comparison_proves_the_same():
    """window_gradients starts from fresh models: calling it twice gives the same gradients."""
    first, second = window_gradients(torch.float64), window_gradients(torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(first[0] + first[1], second[0] + second[1]))


def test_assert_close_float32_defaults_are_rtol_1_3e_6_and_atol_1e_5():
    zero, big_value = torch.zeros(1), torch.full((1,), 100.0)
    torch.testing.assert_close(zero + 0.99e-5, zero)  # at 0, only atol allows anything
    with pytest.raises(AssertionError):
        torch.testing.assert_close(zero + 1.01e-5, zero)
    allowed = 1e-5 + 1.3e-6 * 100.0  # atol + rtol · |expected|
    torch.testing.assert_close(big_value + 0.99 * allowed, big_value)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(big_value + 1.01 * allowed, big_value)


def test_atol_is_the_larger_term_for_every_element_of_this_gradient():
    _, big = window_gradients(torch.float32)
    largest = max(g.abs().max().item() for g in big)
    assert round(largest, 1) == 4.1 and largest < 1e-5 / 1.3e-6
    assert f"{1e-5 + 1.3e-6 * largest:.1e}" == "1.5e-05"
    for g in big:
        assert bool((1e-5 > 1.3e-6 * g.abs()).all())


def test_float32_addition_depends_on_the_order():
    a, b, c = (torch.tensor(v, device=device) for v in (0.1, 0.3, 0.4))
    assert ((a + b) + c).item() == 0.800000011920929
    assert (a + (b + c)).item() == 0.8000000715255737


def test_parameters_after_three_steps_agree_with_big_batches():
    big_batches = list(zip(X.split(effective_batch), y.split(effective_batch)))
    torch.testing.assert_close(train(lr), train(lr, batches=big_batches, k=1))


@pytest.mark.parametrize("optimizer_class", [torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop])
def test_any_optimizer_lands_where_it_lands_on_batches_of_32(optimizer_class):
    """'Nothing here depends on SGD': the optimizer reads .grad, which is the same to rounding."""
    big_batches = list(zip(X.split(effective_batch), y.split(effective_batch)))
    accumulated = train(0.01, optimizer_class=optimizer_class)
    torch.testing.assert_close(accumulated, train(0.01, optimizer_class=optimizer_class, batches=big_batches, k=1))
    assert largest_difference(accumulated, params(make_model())) > 1e-3  # it trained


# 3. Forget the division


def test_without_division_the_gradient_is_k_times_and_sgd_sees_k_times_the_lr():
    undivided, big = window_gradients(torch.float32, divide=False)
    assert all(torch.allclose(u, k * b) for u, b in zip(undivided, big))
    forgot, larger_lr = train(lr, divide=False), train(k * lr)
    assert all(torch.allclose(a, b) for a, b in zip(forgot, larger_lr))
    assert largest_difference(forgot, train(lr)) > 0.01  # and it is a different training


def test_adam_almost_cancels_a_constant_factor():
    forgot = train(0.01, divide=False, optimizer_class=torch.optim.Adam)
    right = train(0.01, optimizer_class=torch.optim.Adam)
    assert largest_difference(forgot, right) < 1e-5


# 4. Memory


def test_a_micro_batch_saves_one_kth_of_the_activations():
    model = make_model()
    saved = {}
    for size in (train_batch_size, effective_batch):
        with SavedTensorMeter(exclude=model) as meter:
            loss_fn(model(X[:size].clone()), y[:size].clone())
        saved[size] = (meter.num_bytes, meter.shapes)
    assert saved[8] == (704, [(8, 4), (8, 16), (8, 1), (8, 1)])
    assert saved[32][0] == 2816 and saved[8][0] / saved[32][0] == 1 / k


def test_what_accumulation_does_not_shrink():
    """Parameters, gradients and Adam's two moments do not depend on train_batch_size."""
    sizes = {}
    for size in (train_batch_size, effective_batch):
        model = make_model()
        optimizer = torch.optim.Adam(model.parameters())
        loss_fn(model(X[:size]), y[:size]).backward()
        optimizer.step()
        state = [t for s in optimizer.state.values() for t in (s["exp_avg"], s["exp_avg_sq"])]
        sizes[size] = sum(t.numel() for t in [*model.parameters(), *grads(model), *state])
    assert sizes[train_batch_size] == sizes[effective_batch] == 4 * 97


# 5. The end of an epoch

epoch = micro_batches[:10]
num_epochs = 3


def leaky_loop():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with BackwardCounter(model, optimizer) as counter:
        for _ in range(num_epochs):
            for i, (X_micro, y_micro) in enumerate(epoch):
                (loss_fn(model(X_micro), y_micro) / k).backward()
                if (i + 1) % k == 0:
                    optimizer.step()
                    optimizer.zero_grad()
    return model, counter


def window_loop():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with BackwardCounter(model, optimizer) as counter:
        for _ in range(num_epochs):
            for start in range(0, len(epoch), k):
                window = epoch[start:start + k]
                num_samples = sum(len(y_micro) for _, y_micro in window)
                for X_micro, y_micro in window:
                    (nn.MSELoss(reduction="sum")(model(X_micro), y_micro) / num_samples).backward()
                optimizer.step()
                optimizer.zero_grad()
    return model, counter


def big_batches_per_window():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(num_epochs):
        for X_big, y_big in zip(X[:80].split(32), y[:80].split(32)):
            loss_fn(model(X_big), y_big).backward()
            optimizer.step()
            optimizer.zero_grad()
    return params(model)


def test_the_leaky_loop_steps_on_4_4_6_4_6_4_and_leaves_2_in_grad():
    model, counter = leaky_loop()
    assert counter.per_step == [4, 4, 6, 4, 6, 4] and counter.pending == 2
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


def test_a_six_micro_batch_step_is_one_and_a_half_times_the_mean():
    """Each micro-batch still divided by 4: a window of 6 gives 6/4 of their mean gradient."""
    six = list(zip(X[:48].double().split(8), y[:48].double().split(8)))
    model = make_model(torch.float64)
    for X_micro, y_micro in six:
        (loss_fn(model(X_micro), y_micro) / k).backward()
    leaked = grads(model)
    mean = make_model(torch.float64)
    loss_fn(mean(X[:48].double()), y[:48].double()).backward()
    assert all(torch.allclose(a, 1.5 * b) for a, b in zip(leaked, grads(mean)))


def test_the_window_loop_steps_on_4_4_2_and_equals_big_batches_per_window():
    model, counter = window_loop()
    assert counter.per_step == [4, 4, 2] * 3 and counter.pending == 0
    torch.testing.assert_close(params(model), big_batches_per_window())
    leaky, _ = leaky_loop()
    assert fmt_diff(largest_difference(params(leaky), big_batches_per_window())) == "0.12"


def learning_rates(total_steps, num_optimizer_steps):
    optimizer = torch.optim.SGD(make_model().parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0,
                                                  total_iters=total_steps)
    used = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cell shows no warning
        for _ in range(num_optimizer_steps):
            used.append(round(optimizer.param_groups[0]["lr"], 4))
            optimizer.step()
            scheduler.step()
    return used


def test_the_scheduler_needs_epochs_times_ceil_of_windows():
    _, counter = window_loop()
    steps = len(counter.per_step)
    assert steps == num_epochs * math.ceil(len(epoch) / k) == 9
    assert len(leaky_loop()[1].per_step) == num_epochs * (len(epoch) // k) == 6
    floor = learning_rates(6, steps)
    assert floor[6:] == [0.0, 0.0, 0.0] and all(v > 0 for v in floor[:6])  # the last epoch: lr 0
    ceil = learning_rates(9, steps)
    assert all(v > 0 for v in ceil) and ceil[0] == lr
    assert floor == [0.1, 0.0833, 0.0667, 0.05, 0.0333, 0.0167, 0.0, 0.0, 0.0]


def test_the_schedule_plot_shows_those_rates():
    floor, ceil = learning_rates(6, 9), learning_rates(9, 9)
    ax = plot_schedules({"floor": floor, "ceil": ceil}, steps_per_epoch=3)
    lines = ax.get_lines()
    assert [list(line.get_ydata()) for line in lines[:2]] == [floor, ceil]
    assert [line.get_xdata()[0] for line in lines[2:]] == [3.5, 6.5]  # the epoch boundaries
    assert lines[0].get_marker() != lines[1].get_marker()
    plt.close("all")


# 6. The step boundary


def clipped_gradient(clip_every_backward, max_norm=1.0):
    model = make_model()
    for X_micro, y_micro in micro_batches[:k]:
        (loss_fn(model(X_micro), y_micro) / k).backward()
        if clip_every_backward:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if not clip_every_backward:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return torch.cat([g.flatten() for g in grads(model)])


def test_clipping_per_micro_batch_points_elsewhere():
    once, every = clipped_gradient(False), clipped_gradient(True)
    _, big = window_gradients(torch.float32)
    big = torch.cat([g.flatten() for g in big])
    assert big.norm() > 1.0  # clipping is active
    assert round(once.norm().item(), 4) == 1.0 and round(every.norm().item(), 4) == 1.0
    angle = math.degrees(math.acos(min(1.0, F.cosine_similarity(once, every, dim=0).item())))
    assert round(angle) == 12
    torch.testing.assert_close(once, big / big.norm(), rtol=1e-5, atol=1e-6)  # the big batch's direction


def window_norms(divide):
    """The norm of each window's gradient along the Adam run (before clipping)."""
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    norms = []
    for i, (X_micro, y_micro) in enumerate(micro_batches):
        loss = loss_fn(model(X_micro), y_micro)
        (loss / k if divide else loss).backward()
        if (i + 1) % k == 0:
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0).item())
            optimizer.step()
            optimizer.zero_grad()
    return norms


def test_clipping_ends_adams_hiding_of_the_missing_division():
    right, undivided = window_norms(True), window_norms(False)
    assert all(7 < n < 9 for n in right)  # "norms between 7 and 9": never clipped at 10
    assert all(n > 10 for n in undivided)  # the undivided run is clipped at every step
    for max_norm, hidden in [(None, True), (1.0, True), (10.0, False)]:
        difference = largest_difference(train(0.01, False, torch.optim.Adam, max_norm=max_norm),
                                        train(0.01, True, torch.optim.Adam, max_norm=max_norm))
        assert (difference < 1e-5) == hidden
    difference = largest_difference(train(0.01, False, torch.optim.Adam, max_norm=10.0),
                                    train(0.01, True, torch.optim.Adam, max_norm=10.0))
    assert f"{difference:.2g}" == "0.00072"


def test_the_clip_factor_changes_from_step_to_step():
    undivided = window_norms(False)
    factors = [10.0 / n for n in undivided]
    assert max(factors) / min(factors) > 1.1  # not a constant Adam could cancel


def final_lr(scheduler_every_micro_batch):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    for i, (X_micro, y_micro) in enumerate(micro_batches):
        (loss_fn(model(X_micro), y_micro) / k).backward()
        if scheduler_every_micro_batch:
            scheduler.step()
        if (i + 1) % k == 0:
            optimizer.step()
            optimizer.zero_grad()
            if not scheduler_every_micro_batch:
                scheduler.step()
    return scheduler.last_epoch, optimizer.param_groups[0]["lr"]


def test_the_scheduler_counts_optimizer_steps_and_warns_once():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert final_lr(False) == (3, lr * 0.5**3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count, final = final_lr(True)
    assert count == 12 and final == lr * 0.5**12
    assert len(caught) == 1 and "Detected call of `lr_scheduler.step()` before `optimizer.step()`" in str(
        caught[0].message)
    assert f"{lr * 0.5**3:.3g}" == "0.0125" and f"{final:.3g}" == "2.44e-05"
