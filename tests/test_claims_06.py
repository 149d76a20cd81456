"""Notebook 06's claims, recomputed from torch and the helpers (independent of stored outputs)."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.data import make_regression, make_token_sequences
from utils.device import get_device
from utils.measure import grads, largest_difference, rounding_error
from utils.printing import fmt_diff

device = get_device()
data = make_regression(num_samples=96, num_features=4, seed=0, device=device)
X, y = data.X, data.y
train_batch_size, k, lr = 8, 4, 0.1
effective_batch = train_batch_size * k
loss_fn, sum_loss_fn = nn.MSELoss(), nn.MSELoss(reduction="sum")
micro_batches = list(zip(X.split(train_batch_size), y.split(train_batch_size)))
X64, y64 = X[:effective_batch].double(), y[:effective_batch].double()


def make_model(*middle, dtype=torch.float32, on=device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), *middle, nn.Tanh(), nn.Linear(16, 1))
    return model.to(device=on, dtype=dtype)


def big_gradient(X_big=X64, y_big=y64):
    model = make_model(dtype=torch.float64)
    loss_fn(model(X_big), y_big).backward()
    return grads(model)


# 1. Micro-batches of unequal size


def test_unequal_micro_batches_weigh_samples_unequally_and_sum_over_count_fixes_it():
    split = [10, 10, 10, 2]
    model = make_model(dtype=torch.float64)
    for X_micro, y_micro in zip(X64.split(split), y64.split(split)):
        (loss_fn(model(X_micro), y_micro) / k).backward()
    assert fmt_diff(largest_difference(grads(model), big_gradient())) == "0.82"
    model = make_model(dtype=torch.float64)
    for X_micro, y_micro in zip(X64.split(split), y64.split(split)):
        (sum_loss_fn(model(X_micro), y_micro) / len(X64)).backward()
    assert largest_difference(grads(model), big_gradient()) < 1e-10
    # the weights: 1/40 for the samples of a micro-batch of 10, 1/8 for those of the micro-batch of 2
    per_sample = torch.ones(32, dtype=torch.float64, requires_grad=True)
    sum(part.mean() / k for part in per_sample.split(split)).backward()
    torch.testing.assert_close(per_sample.grad, torch.tensor([1 / 40] * 30 + [1 / 8] * 2, dtype=torch.float64))
    assert per_sample.grad[-1] / per_sample.grad[0] == pytest.approx(5.0)


def window_difference(sizes, way):
    X_window, y_window = X64[-sum(sizes):], y64[-sum(sizes):]
    model = make_model(dtype=torch.float64)
    for X_micro, y_micro in zip(X_window.split(sizes), y_window.split(sizes)):
        if way == "sum / samples":
            loss = sum_loss_fn(model(X_micro), y_micro) / len(X_window)
        else:
            loss = loss_fn(model(X_micro), y_micro) / (k if way == "mean / k" else len(sizes))
        loss.backward()
    return fmt_diff(largest_difference(grads(model), big_gradient(X_window, y_window)))


def test_only_sum_over_samples_is_right_for_every_window():
    table = {name: [window_difference(sizes, way) for way in ("mean / k", "mean / micro-batches",
                                                                "sum / samples")]
             for name, sizes in [("full, unequal", [10, 10, 10, 2]), ("partial, equal", [8, 8]),
                                 ("partial, unequal", [12, 4])]}
    assert table == {"full, unequal": ["0.82", "0.82", "< 1e-10"],
                     "partial, equal": ["2.4", "< 1e-10", "< 1e-10"],
                     "partial, unequal": ["2.8", "0.77", "< 1e-10"]}


def test_a_partial_window_divided_by_k_is_a_fraction_of_its_mean():
    """8/8 divided by 4 instead of 2: exactly half the window's gradient."""
    X_window, y_window = X64[-16:], y64[-16:]
    model = make_model(dtype=torch.float64)
    for X_micro, y_micro in zip(X_window.split(8), y_window.split(8)):
        (loss_fn(model(X_micro), y_micro) / k).backward()
    assert all(torch.allclose(a, b / 2) for a, b in zip(grads(model), big_gradient(X_window, y_window)))


# 2. Tokens


def token_setup():
    inputs, labels = make_token_sequences(num_sequences=8, max_len=12, seed=0, device=device, dtype=torch.float64)
    torch.manual_seed(0)
    return inputs, labels, nn.Linear(4, 5).to(device=device, dtype=torch.float64)


def token_loss(logits, labels, reduction="mean"):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction=reduction)


def test_token_mean_per_micro_batch_is_not_the_token_mean_and_sum_over_tokens_fixes_it():
    inputs, labels, model = token_setup()
    batches = list(zip(inputs.split(2), labels.split(2)))
    counts = [int((lab != -100).sum()) for _, lab in batches]
    assert counts == [13, 7, 12, 16]
    big_loss = token_loss(model(inputs), labels)
    big_loss.backward()
    big = grads(model)
    model.zero_grad()
    reported = 0.0
    for inputs_micro, labels_micro in batches:
        loss = token_loss(model(inputs_micro), labels_micro) / k
        loss.backward()
        reported += loss.item()
    assert round(big_loss.item(), 4) == 1.7197 and round(reported, 4) == 1.7376
    assert fmt_diff(largest_difference(grads(model), big)) == "0.047"
    model.zero_grad()
    num_tokens_in_step = int((labels != -100).sum())
    for inputs_micro, labels_micro in batches:
        (token_loss(model(inputs_micro), labels_micro, "sum") / num_tokens_in_step).backward()
    assert largest_difference(grads(model), big) < 1e-10
    # a token of the micro-batch of 7 weighs 1/(4·7), one of the micro-batch of 16: 1/(4·16)
    assert math.isclose((1 / (4 * min(counts))) / (1 / (4 * max(counts))), 16 / 7)


# 3. BatchNorm, LayerNorm, GroupNorm


def big_and_accumulated(make_middle):
    models = []
    for num_chunks in (1, k):
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


def tied_linear():
    linear = nn.Linear(16, 16)
    return nn.Sequential(linear, nn.Tanh(), linear)


@pytest.mark.parametrize("make_norm", [lambda: nn.LayerNorm(16), lambda: nn.GroupNorm(4, 16), tied_linear])
def test_per_sample_layers_and_tied_weights_accumulate_exactly(make_norm):
    big, accumulated = big_and_accumulated(make_norm)
    assert largest_difference(grads(accumulated), grads(big)) < 1e-10
    assert largest_difference(grads(big), [torch.zeros_like(g) for g in grads(big)]) > 0.01  # real gradients


def test_the_tied_weight_really_is_one_parameter_used_twice():
    middle = tied_linear()
    assert middle[0] is middle[2] and len(list(middle.parameters())) == 2
    big, _ = big_and_accumulated(tied_linear)
    assert len(list(big.parameters())) == 6  # first, tied (weight and bias once), last


@pytest.mark.parametrize("sparse", [False, True])
def test_embeddings_accumulate_exactly_dense_or_sparse(sparse):
    """'An nn.Embedding is such a layer too': a lookup per token (notebook 06, section 3)."""
    tokens = torch.randint(0, 10, (32, 6), generator=torch.Generator().manual_seed(0)).to(device)

    def make_embedding_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(10, 8, sparse=sparse), nn.Flatten(), nn.Linear(48, 1)).to(
            device=device, dtype=torch.float64)

    def dense(param):
        return param.grad.to_dense() if param.grad.is_sparse else param.grad

    big, accumulated = make_embedding_model(), make_embedding_model()
    loss_fn(big(tokens), y64).backward()
    for tokens_micro, y_micro in zip(tokens.split(8), y64.split(8)):
        (loss_fn(accumulated(tokens_micro), y_micro) / k).backward()
    assert accumulated[0].weight.grad.is_sparse == sparse
    assert largest_difference([dense(p) for p in accumulated.parameters()],
                              [dense(p) for p in big.parameters()]) < 1e-10
    assert float(dense(big[0].weight).abs().sum()) > 0


# 4. Dropout


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
    for _ in range(2):  # the cell seeds itself: a re-run shows the same numbers
        torch.manual_seed(2)
        big_draws = torch.stack([dropout_gradient(1) for _ in range(64)])
        accumulated_draws = torch.stack([dropout_gradient(4) for _ in range(64)])
        gaps = [largest_difference(big_draws[:n].mean(0), accumulated_draws[:n].mean(0)) for n in (1, 4, 16, 64)]
        assert [fmt_diff(g) for g in gaps] == ["1", "0.34", "0.17", "0.081"]
        assert gaps == sorted(gaps, reverse=True)
        assert all(0.25 < later / earlier < 0.75 for earlier, later in zip(gaps, gaps[1:]))  # "about half"


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


# 5. Mixed precision


def test_float16_underflows_at_1e_8_and_bfloat16_does_not():
    assert f"{torch.finfo(torch.float16).tiny:.1e}" == "6.1e-05"
    assert f"{torch.finfo(torch.bfloat16).tiny:.1e}" == "1.2e-38"
    assert torch.tensor(1e-8).half().item() == 0.0
    assert f"{torch.tensor(1e-8).bfloat16().item():.2g}" == "1e-08"
    assert torch.finfo(torch.float16).smallest_normal * torch.finfo(torch.float16).eps < 6.0e-8  # subnormals


def first_layer_gradient(dtype, scale=1.0):
    model = make_model()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = loss_fn(model(X[:32]), y[:32]) * 1e-8
    (loss * scale).backward()
    assert model[0].weight.grad.dtype == torch.float32  # ".grad is float32 in every run"
    return model[0].weight.grad / scale


def test_float16_loses_the_tiny_gradient_scaling_or_bfloat16_keeps_it():
    reference = first_layer_gradient(torch.float32)
    assert reference.abs().max() < 1e-8  # tiny indeed
    for dtype, scale, all_zero in [(torch.float16, 1.0, True), (torch.float16, 65536.0, False),
                                   (torch.bfloat16, 1.0, False)]:
        grad = first_layer_gradient(dtype, scale)
        assert grad.dtype == torch.float32
        assert bool((grad == 0).all()) == all_zero
        error = ((grad - reference).abs().max() / reference.abs().max()).item()
        assert (error < 0.02) == (not all_zero)
        assert all_zero or error < 0.01  # a margin for other devices: bfloat16 keeps 0.4% per rounding


def test_where_the_losss_gradient_lies_on_float16s_scale():
    """Below 5e-9: left of the cliff (half float16's smallest subnormal, 2^-25, rounds to 0);
    times 65536, between 3e-6 and 3e-4: above float16's smallest positive number."""
    model = make_model()
    output = model(X[:32])
    output.retain_grad()
    (loss_fn(output, y[:32]) * 1e-8).backward()
    size = output.grad.abs()
    assert size.max() < 5e-9 and size.max() < 2.0**-25
    assert bool((size.half() == 0).all())
    scaled = size * 65536
    assert scaled.min() > 3e-6 and scaled.max() < 3e-4 and scaled.min() > 2.0**-24
    assert bool((scaled.half() > 0).all()) and scaled.max() > torch.finfo(torch.float16).tiny


def test_the_plot_draws_rounding_error_and_its_reading_is_true():
    sizes = torch.logspace(-10, 2, 601, dtype=torch.float64)
    half, bfloat = rounding_error(sizes, torch.float16), rounding_error(sizes, torch.bfloat16)
    assert half[sizes < 2.9e-8].eq(1).all() and half[sizes > 6.2e-5].max() <= 2.0**-11  # 0.05%
    assert bfloat.max() <= 2.0**-8 and bfloat.max() > 0.0039  # up to 0.4%, everywhere
    at_one = rounding_error(torch.tensor([1.0], dtype=torch.float64), torch.bfloat16)
    assert at_one / rounding_error(torch.tensor([1.0], dtype=torch.float64), torch.float16) == 8
    assert (half[sizes > 1e-4] < bfloat[sizes > 1e-4]).all()  # on the right float16 keeps more digits
    assert (half[sizes < 1e-6] > bfloat[sizes < 1e-6]).all()  # on the left it loses more
    fig, ax = plt.subplots()
    for dtype in (torch.float16, torch.bfloat16):
        ax.loglog(sizes, rounding_error(sizes, dtype), label=str(dtype)[6:])
    assert [line.get_label() for line in ax.get_lines()] == ["float16", "bfloat16"]
    plt.close(fig)


def train_with_scaler(scaler, max_norm=1.0):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for i, (X_micro, y_micro) in enumerate(micro_batches):
        scaler.scale(loss_fn(model(X_micro), y_micro) / k).backward()
        if (i + 1) % k == 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_unscale_once_before_the_step_gives_the_unscaled_training_bit_for_bit():
    scaler = torch.amp.GradScaler(device.type)
    assert scaler.is_enabled() and scaler.get_scale() == 65536.0 == 2.0**16
    scaled = train_with_scaler(scaler)
    plain = train_with_scaler(torch.amp.GradScaler(device.type, enabled=False))
    assert all(torch.equal(a, b) for a, b in zip(scaled, plain))
    assert largest_difference(scaled, [p.detach() for p in make_model().parameters()]) > 0.01  # it trained


def test_unscale_per_micro_batch_is_refused():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type)
    with pytest.raises(RuntimeError, match=r"unscale_\(\) has already been called on this optimizer since the last"):
        for X_micro, y_micro in micro_batches[:k]:
            scaler.scale(loss_fn(model(X_micro), y_micro) / k).backward()
            scaler.unscale_(optimizer)


def micro_batch_gradient(X_part, y_part):
    model = make_model(dtype=X_part.dtype)
    (loss_fn(model(X_part), y_part) / k).backward()
    return grads(model)


def test_an_early_unscale_mixes_scaled_and_unscaled_gradients_and_step_applies_the_mix():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type)
    (X_1, y_1), (X_2, y_2) = micro_batches[:2]
    scaler.scale(loss_fn(model(X_1), y_1) / k).backward()
    scaler.unscale_(optimizer)
    scaler.scale(loss_fn(model(X_2), y_2) / k).backward()
    mixed = grads(model)
    expected = [a + 65536 * b for a, b in zip(micro_batch_gradient(X_1, y_1), micro_batch_gradient(X_2, y_2))]
    assert all(torch.allclose(m, e) for m, e in zip(mixed, expected))
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(optimizer)  # does not unscale again: it applies the mixture
    assert all(torch.allclose(b - lr * m, a) for b, m, a in zip(before, mixed, model.parameters()))
    assert max(m.abs().max().item() for m in mixed) > 1000  # "tens of thousands of times too large"


def test_update_per_micro_batch_is_refused_at_the_first_micro_batch():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type)
    seen = []
    with pytest.raises(AssertionError, match="No inf checks were recorded prior to update"):
        for i, (X_micro, y_micro) in enumerate(micro_batches):
            seen.append(i)
            scaler.scale(loss_fn(model(X_micro), y_micro) / k).backward()
            if (i + 1) % k == 0:
                scaler.step(optimizer)
                optimizer.zero_grad()
            scaler.update()
    assert seen == [0]


def test_unscale_and_update_both_per_micro_batch_pass_and_divide_the_earlier_ones_again():
    model = make_model(dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type)
    parts = list(zip(X64[:16].split(8), y64[:16].split(8)))
    for X_part, y_part in parts:
        scaler.scale(loss_fn(model(X_part), y_part) / k).backward()
        scaler.unscale_(optimizer)
        scaler.update()  # no error on either call
    part_1, part_2 = (micro_batch_gradient(*part) for part in parts)
    assert all(torch.allclose(g, a / 65536 + b, rtol=1e-12) for g, a, b in zip(grads(model), part_1, part_2))
    assert not all(torch.allclose(g, b, rtol=1e-12) for g, b in zip(grads(model), part_2))  # part 1 is there


def test_with_both_per_micro_batch_the_step_sees_the_last_micro_batch_alone():
    """The loop a learner writes to clip every micro-batch: no error, the window shrinks to its last."""
    model = make_model(dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type)
    window = list(zip(X64.split(8), y64.split(8)))
    before = [p.detach().clone() for p in model.parameters()]
    for i, (X_micro, y_micro) in enumerate(window):
        scaler.scale(loss_fn(model(X_micro), y_micro) / k).backward()
        scaler.unscale_(optimizer)
        if i == len(window) - 1:
            scaler.step(optimizer)  # stage is 'unscaled': step divides no more
            optimizer.zero_grad()
        scaler.update()
    parts = [micro_batch_gradient(*part) for part in window]
    seen = [sum(parts[i][j] / 65536 ** (len(window) - 1 - i) for i in range(len(window))) for j in range(4)]
    moved = [b - p.detach() for b, p in zip(before, model.parameters())]
    assert all(torch.allclose(m, lr * g, rtol=1e-9) for m, g in zip(moved, seen))
    flat_moved = torch.cat([m.flatten() for m in moved])
    last = lr * torch.cat([g.flatten() for g in parts[-1]])
    whole = lr * torch.cat([sum(p[j] for p in parts).flatten() for j in range(4)])
    assert (flat_moved - last).norm() / last.norm() < 1e-4  # the last micro-batch alone
    assert (flat_moved - whole).norm() / whole.norm() > 0.5  # not the window


def test_an_inf_in_the_window_skips_the_whole_step_and_update_lowers_the_scale():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**127)
    before = [p.detach().clone() for p in model.parameters()]
    for X_micro, y_micro in micro_batches[:k]:
        scaler.scale(loss_fn(model(X_micro), y_micro) / k).backward()
    assert any(not torch.isfinite(p.grad).all() for p in model.parameters())  # an inf in .grad
    scaler.step(optimizer)
    scaler.update()
    assert all(map(torch.equal, before, model.parameters()))
    assert math.log2(scaler.get_scale()) == 126


def test_update_grows_the_scale_after_growth_interval_clean_steps():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type, growth_interval=2)
    assert torch.amp.GradScaler(device.type).get_growth_interval() == 2000
    scales = []
    for X_micro, y_micro in micro_batches[:3]:
        scaler.scale(loss_fn(model(X_micro), y_micro)).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        scales.append(scaler.get_scale())
    assert scales == [65536.0, 131072.0, 131072.0]
