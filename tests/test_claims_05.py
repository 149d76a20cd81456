"""Notebook 05's claims, recomputed from torch and the helpers (independent of stored outputs)."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.data import make_regression, make_token_sequences
from utils.device import get_device
from utils.measure import SavedTensorMeter, grads, largest_difference
from utils.printing import fmt_diff

device = get_device()
data = make_regression(num_samples=96, num_features=4, seed=0, device=device)
X, y = data.X, data.y
train_batch_size, gradient_accumulation_steps = 8, 4
effective_batch = train_batch_size * gradient_accumulation_steps
micro_batches = list(zip(X.split(train_batch_size), y.split(train_batch_size)))
loss_fn = nn.MSELoss()
lr = 0.1


def make_model(*middle, dtype=torch.float32, on=device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), *middle, nn.Tanh(), nn.Linear(16, 1))
    return model.to(device=on, dtype=dtype)


def train(lr, divide=True, optimizer_class=torch.optim.SGD, batches=micro_batches, k=gradient_accumulation_steps):
    model = make_model()
    optimizer = optimizer_class(model.parameters(), lr=lr)
    for i, (X_micro, y_micro) in enumerate(batches):
        loss = loss_fn(model(X_micro), y_micro)
        (loss / k if divide else loss).backward()
        if (i + 1) % k == 0:
            optimizer.step()
            optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def window_gradients(dtype, split=None, loss=None):
    """Gradients of one window (accumulated) and of the big batch, from the same start."""
    X_big, y_big = X[:effective_batch].to(dtype), y[:effective_batch].to(dtype)
    split = split or [train_batch_size] * gradient_accumulation_steps
    model = make_model(dtype=dtype)
    for X_micro, y_micro in zip(X_big.split(split), y_big.split(split)):
        (loss(model(X_micro), y_micro) if loss else loss_fn(model(X_micro), y_micro) / len(split)).backward()
    big = make_model(dtype=dtype)
    loss_fn(big(X_big), y_big).backward()
    return grads(model), grads(big)


# 1. The loop


def test_the_loop_runs_backward_per_micro_batch_and_steps_once_per_window():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    for i, (X_micro, y_micro) in enumerate(micro_batches):
        (loss_fn(model(X_micro), y_micro) / gradient_accumulation_steps).backward()
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
    assert len(micro_batches) == 12 and len(steps) == 3 and effective_batch == 32


def test_zero_grad_before_every_backward_leaves_only_the_last_micro_batch():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for X_micro, y_micro in micro_batches[:gradient_accumulation_steps]:
        optimizer.zero_grad()
        (loss_fn(model(X_micro), y_micro) / gradient_accumulation_steps).backward()
    wrong = grads(model)
    model.zero_grad()
    (loss_fn(model(X_micro), y_micro) / gradient_accumulation_steps).backward()
    assert largest_difference(wrong, grads(model)) == 0
    accumulated, _ = window_gradients(torch.float32)
    assert largest_difference(wrong, accumulated) > 0.1  # and that is not the window's gradient


# 2. It equals one big batch


def test_accumulated_gradient_equals_the_big_batch_to_rounding():
    accumulated, big = window_gradients(torch.float32)
    torch.testing.assert_close(accumulated, big)
    assert largest_difference(accumulated, big) < 1e-5
    largest_gradient = max(g.abs().max().item() for g in big)
    assert largest_difference(accumulated, big) <= 8 * torch.finfo(torch.float32).eps * largest_gradient
    accumulated64, big64 = window_gradients(torch.float64)
    assert largest_difference(accumulated64, big64) < 1e-12
    assert f"{torch.finfo(torch.float32).eps:.1e}" == "1.2e-07"
    assert f"{torch.finfo(torch.float64).eps:.1e}" == "2.2e-16"


def test_float32_addition_depends_on_the_order():
    a, b, c = (torch.tensor(v, device=device) for v in (0.1, 0.3, 0.4))
    assert ((a + b) + c).item() == 0.800000011920929
    assert (a + (b + c)).item() == 0.8000000715255737


def test_parameters_after_three_steps_agree_with_big_batches():
    accumulated = train(lr)
    big_batches = list(zip(X.split(effective_batch), y.split(effective_batch)))
    torch.testing.assert_close(accumulated, train(lr, batches=big_batches, k=1))


# 3. Forget the division


def test_without_division_the_gradient_is_k_times_and_sgd_sees_k_times_the_lr():
    undivided, _ = window_gradients(torch.float32, loss=loss_fn)
    _, big = window_gradients(torch.float32)
    assert all(torch.allclose(u, gradient_accumulation_steps * b) for u, b in zip(undivided, big))
    forgot, larger_lr = train(lr, divide=False), train(gradient_accumulation_steps * lr)
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
    assert saved[32][0] == 2816 and saved[8][0] / saved[32][0] == 1 / gradient_accumulation_steps


def test_activations_grow_in_proportion_and_parameters_do_not():
    model = make_model()
    sizes = [1, 2, 4, 8, 16, 32]
    activations = []
    for size in sizes:
        with SavedTensorMeter(exclude=model) as meter:
            loss_fn(model(X[:size].clone()), y[:size].clone())
        activations.append(meter.num_bytes)
    assert activations == [88 * size for size in sizes]  # the plotted line, through the origin
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert 2 * param_bytes == 776  # the flat line


# 5. When it is not one big batch (float64)

X64, y64 = X[:effective_batch].double(), y[:effective_batch].double()


def test_unequal_micro_batches_weigh_samples_unequally_and_sum_over_count_fixes_it():
    split = [10, 10, 10, 2]
    bug, big = window_gradients(torch.float64, split=split,
                                loss=lambda p, t: loss_fn(p, t) / gradient_accumulation_steps)
    assert fmt_diff(largest_difference(bug, big)) == "0.82"
    fixed, _ = window_gradients(torch.float64, split=split,
                                loss=lambda p, t: nn.MSELoss(reduction="sum")(p, t) / effective_batch)
    assert largest_difference(fixed, big) < 1e-10
    # the weight of each sample: d(total loss)/d(prediction) = 2 (pred - y) × weight
    pred = torch.randn(32, 1, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.zeros(32, 1, dtype=torch.float64, device=device)
    sum(loss_fn(p, t) / 4 for p, t in zip(pred.split(split), target.split(split))).backward()
    weights = (pred.grad / (2 * pred.detach())).flatten()
    torch.testing.assert_close(weights, torch.tensor([1 / 40] * 30 + [1 / 8] * 2, dtype=torch.float64,
                                                      device=device))


def token_setup():
    inputs, labels = make_token_sequences(num_sequences=8, max_len=12, seed=0, device=device, dtype=torch.float64)
    torch.manual_seed(0)
    token_model = nn.Linear(4, 5).to(device=device, dtype=torch.float64)
    return inputs, labels, token_model


def token_loss(logits, labels, reduction="mean"):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction=reduction)


def test_token_mean_per_micro_batch_is_not_the_token_mean_and_sum_over_tokens_fixes_it():
    inputs, labels, model = token_setup()
    batches = list(zip(inputs.split(2), labels.split(2)))
    assert [int((lab != -100).sum()) for _, lab in batches] == [13, 7, 12, 16]
    big_loss = token_loss(model(inputs), labels)
    big_loss.backward()
    big = grads(model)
    model.zero_grad()
    reported = 0.0
    for inputs_micro, labels_micro in batches:
        loss = token_loss(model(inputs_micro), labels_micro) / 4
        loss.backward()
        reported += loss.item()
    assert round(big_loss.item(), 4) == 1.7197 and round(reported, 4) == 1.7376
    assert fmt_diff(largest_difference(grads(model), big)) == "0.047"
    model.zero_grad()
    num_tokens_in_step = int((labels != -100).sum())
    for inputs_micro, labels_micro in batches:
        (token_loss(model(inputs_micro), labels_micro, "sum") / num_tokens_in_step).backward()
    assert largest_difference(grads(model), big) < 1e-10
    # per token: 1/(4·7) in the short micro-batch against 1/(4·16) in the long one
    assert math.isclose((1 / (4 * 7)) / (1 / (4 * 16)), 16 / 7)


def big_and_accumulated(make_middle):
    models = []
    for num_chunks in (1, gradient_accumulation_steps):
        model = make_model(make_middle(), dtype=torch.float64)
        for X_micro, y_micro in zip(X64.chunk(num_chunks), y64.chunk(num_chunks)):
            (loss_fn(model(X_micro), y_micro) / num_chunks).backward()
        models.append(model)
    return models


def test_batchnorm_changes_gradients_and_running_statistics():
    big, accumulated = big_and_accumulated(lambda: nn.BatchNorm1d(16))
    assert fmt_diff(largest_difference(grads(accumulated), grads(big))) == "0.76"
    assert fmt_diff(largest_difference(accumulated[1].running_mean, big[1].running_mean)) == "0.18"
    assert largest_difference(accumulated[1].running_var, big[1].running_var) > 0.1
    assert accumulated[1].num_batches_tracked.item() == 4 and big[1].num_batches_tracked.item() == 1


@pytest.mark.parametrize("make_norm", [lambda: nn.LayerNorm(16), lambda: nn.GroupNorm(4, 16)])
def test_per_sample_normalization_accumulates_exactly(make_norm):
    big, accumulated = big_and_accumulated(make_norm)
    torch.testing.assert_close(grads(accumulated), grads(big))
    assert largest_difference(grads(accumulated), grads(big)) < 1e-10


def dropout_setup():
    model = make_model(nn.Dropout(0.25), dtype=torch.float64, on=torch.device("cpu"))
    X_cpu, y_cpu = X64.cpu(), y64.cpu()

    def dropout_gradient(num_chunks):
        model.zero_grad()
        for X_micro, y_micro in zip(X_cpu.chunk(num_chunks), y_cpu.chunk(num_chunks)):
            (loss_fn(model(X_micro), y_micro) / num_chunks).backward()
        return torch.cat([g.flatten() for g in grads(model)])

    return dropout_gradient


def test_dropout_differs_per_draw_and_agrees_on_average():
    dropout_gradient = dropout_setup()
    torch.manual_seed(1)
    assert fmt_diff(largest_difference(dropout_gradient(4), dropout_gradient(1))) == "1.2"
    big_draws = torch.stack([dropout_gradient(1) for _ in range(64)])
    accumulated_draws = torch.stack([dropout_gradient(4) for _ in range(64)])
    gaps = [largest_difference(big_draws[:n].mean(0), accumulated_draws[:n].mean(0)) for n in (1, 4, 16, 64)]
    assert [fmt_diff(g) for g in gaps] == ["0.95", "0.47", "0.25", "0.15"]
    assert gaps == sorted(gaps, reverse=True)


def test_dropout_with_the_same_masks_accumulates_exactly():
    """Why 'equal in distribution': given the masks, accumulation is the big batch."""
    model = make_model(dtype=torch.float64)
    mask = (torch.rand(32, 16, generator=torch.Generator().manual_seed(2)) > 0.25).double().to(device) / 0.75

    def masked_loss(rows):
        hidden = model[0](X64[rows]) * mask[rows]
        return loss_fn(model[2](model[1](hidden)), y64[rows])

    masked_loss(slice(0, 32)).backward()
    big = grads(model)
    model.zero_grad()
    for start in range(0, 32, 8):
        (masked_loss(slice(start, start + 8)) / 4).backward()
    assert largest_difference(grads(model), big) < 1e-10


# 6. The step boundary


def clipped_gradient(clip_every_backward, max_norm=1.0):
    model = make_model()
    for X_micro, y_micro in micro_batches[:gradient_accumulation_steps]:
        (loss_fn(model(X_micro), y_micro) / gradient_accumulation_steps).backward()
        if clip_every_backward:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if not clip_every_backward:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return torch.cat([g.flatten() for g in grads(model)])


def test_clipping_per_micro_batch_points_elsewhere():
    once, every = clipped_gradient(False), clipped_gradient(True)
    _, big = window_gradients(torch.float32)
    assert torch.cat([g.flatten() for g in big]).norm() > 1.0  # clipping is active
    assert round(once.norm().item(), 4) == 1.0 and round(every.norm().item(), 4) == 1.0
    assert fmt_diff(largest_difference(once, every)) == "0.083"
    angle = math.degrees(math.acos(min(1.0, F.cosine_similarity(once, every, dim=0).item())))
    assert round(angle) == 12
    torch.testing.assert_close(once, torch.cat([g.flatten() for g in big]) / torch.cat(
        [g.flatten() for g in big]).norm(), rtol=1e-5, atol=1e-6)  # once = the big batch's direction


def final_lr(scheduler_every_micro_batch):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    for i, (X_micro, y_micro) in enumerate(micro_batches):
        (loss_fn(model(X_micro), y_micro) / gradient_accumulation_steps).backward()
        if scheduler_every_micro_batch:
            scheduler.step()
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
            if not scheduler_every_micro_batch:
                scheduler.step()
    return scheduler.last_epoch, optimizer.param_groups[0]["lr"]


def test_the_scheduler_counts_optimizer_steps():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert final_lr(False) == (3, lr * 0.5**3)
    with pytest.warns(UserWarning, match=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"):
        count, final = final_lr(True)
    assert count == 12 and final == lr * 0.5**12
    assert f"{lr * 0.5**3:.3g}" == "0.0125" and f"{final:.3g}" == "2.44e-05"


def test_gradscaler_runs_on_the_cpu_and_its_default_is_cuda():
    scaler = torch.amp.GradScaler("cpu")
    assert scaler.is_enabled() and scaler.get_scale() == 65536.0
    if not torch.cuda.is_available():
        with pytest.warns(UserWarning, match="CUDA is not available.  Disabling"):
            assert not torch.amp.GradScaler().is_enabled()


def train_with_scaler(scaler, max_norm=1.0):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for i, (X_micro, y_micro) in enumerate(micro_batches):
        scaler.scale(loss_fn(model(X_micro), y_micro) / gradient_accumulation_steps).backward()
        if (i + 1) % gradient_accumulation_steps == 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_unscale_once_before_the_step_gives_the_unscaled_training():
    scaled = train_with_scaler(torch.amp.GradScaler(device.type))
    plain = train_with_scaler(torch.amp.GradScaler(device.type, enabled=False))
    assert all(torch.allclose(a, b) for a, b in zip(scaled, plain))
    assert largest_difference(scaled, [p.detach() for p in make_model().parameters()]) > 0.01  # it trained


def test_unscale_per_micro_batch_is_refused():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type)
    (X_1, y_1), (X_2, y_2) = micro_batches[:2]
    scaler.scale(loss_fn(model(X_1), y_1)).backward()
    scaler.unscale_(optimizer)
    scaler.scale(loss_fn(model(X_2), y_2)).backward()
    with pytest.raises(RuntimeError, match=r"unscale_\(\) has already been called on this optimizer since the last"):
        scaler.unscale_(optimizer)


def test_an_early_unscale_mixes_scaled_and_unscaled_gradients_and_step_applies_the_mix():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type)
    (X_1, y_1), (X_2, y_2) = micro_batches[:2]
    scaler.scale(loss_fn(model(X_1), y_1) / 2).backward()
    scaler.unscale_(optimizer)
    scaler.scale(loss_fn(model(X_2), y_2) / 2).backward()
    mixed = grads(model)
    parts = []
    for X_part, y_part in [(X_1, y_1), (X_2, y_2)]:
        part_model = make_model()
        (loss_fn(part_model(X_part), y_part) / 2).backward()
        parts.append(grads(part_model))
    assert all(torch.allclose(m, a + 65536.0 * b) for m, a, b in zip(mixed, *parts))
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(optimizer)  # does not unscale again: it applies the mixture
    after = [p.detach() for p in model.parameters()]
    assert all(torch.allclose(b - lr * m, a) for b, m, a in zip(before, mixed, after))
