"""utils.digits: real data split the same way everywhere, a seeded CNN, minibatches, meters, plots."""

import copy

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from utils.device import get_device  # noqa: E402
from utils.digits import (  # noqa: E402
    NUM_TEST, GradientMeter, WindowMeter, accuracy, load_digits_split, make_model, minibatches, plot_digits,
    predict,
)

DATA = load_digits_split()
loss_fn = torch.nn.CrossEntropyLoss()


# -- data --------------------------------------------------------------------------------------------
def test_the_split_holds_every_image_once_with_its_label():
    bunch = load_digits()
    assert len(DATA.X_train) == 1440 and len(DATA.X_test) == NUM_TEST == 357
    images = torch.cat([DATA.X_train, DATA.X_test]).flatten(1)
    labels = torch.cat([DATA.y_train, DATA.y_test])
    original = torch.tensor(bunch.data) / 16
    # every original image appears once, with its own label
    order = torch.cdist(images, original).argmin(dim=1)
    assert sorted(order.tolist()) == list(range(len(original)))
    assert torch.equal(labels, torch.tensor(bunch.target)[order])
    assert 0.0 <= images.min() and images.max() == 1.0
    assert DATA.X_train.dtype == torch.float64 and DATA.y_train.dtype == torch.int64


def test_the_split_is_seeded_and_every_class_is_tested():
    again = load_digits_split()
    assert all(torch.equal(a, b) for a, b in zip(DATA, again))
    other = load_digits_split(seed=1)
    assert not torch.equal(other.y_test, DATA.y_test)
    assert torch.bincount(DATA.y_test, minlength=10).min() >= 25
    assert load_digits_split(dtype=torch.float32).X_train.dtype == torch.float32


def test_data_moves_to_the_course_device():
    device = get_device()
    data = load_digits_split(device=device)
    assert data.X_test.device.type == device.type and data.y_test.device.type == device.type
    assert torch.equal(data.X_test.cpu(), DATA.X_test)


@pytest.mark.parametrize("kwargs, error", [
    ({"num_test": 0}, ValueError), ({"num_test": 1797}, ValueError), ({"num_test": 2.5}, TypeError),
    ({"seed": -1}, ValueError), ({"seed": "0"}, TypeError), ({"dtype": torch.int64}, TypeError),
])
def test_bad_arguments_to_the_split_get_clear_errors(kwargs, error):
    with pytest.raises(error, match="expected"):
        load_digits_split(**kwargs)


# -- model -------------------------------------------------------------------------------------------
def test_the_model_is_seeded_and_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = make_model(), make_model(), make_model(seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a[0].weight, c[0].weight)
    assert a(DATA.X_train[:5]).shape == (5, 10)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in a)
    with pytest.raises(TypeError, match="expected seed as an int"):
        make_model(seed=None)


# -- minibatches -------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(num_samples=st.integers(1, 60), batch_size=st.integers(1, 70), seed=st.integers(0, 10_000))
def test_minibatches_cover_every_sample_once_in_order_of_a_seeded_shuffle(num_samples, batch_size, seed):
    X, y = torch.arange(num_samples).double().view(-1, 1), torch.arange(num_samples)
    batches = minibatches(X, y, batch_size, seed=seed)
    assert all(len(b[0]) == batch_size for b in batches[:-1]) and 1 <= len(batches[-1][0]) <= batch_size
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(num_samples))
    assert all(torch.equal(bx.flatten().long(), by) for bx, by in batches)  # pairs stay together
    assert torch.equal(seen, torch.cat([b[1] for b in minibatches(X, y, batch_size, seed=seed)]))


def test_minibatches_of_8_split_the_batches_of_32_of_the_same_seed():
    big = minibatches(DATA.X_train, DATA.y_train, 32, seed=3)
    small = minibatches(DATA.X_train, DATA.y_train, 8, seed=3)
    assert len(big) == 45 and len(small) == 180
    assert all(torch.equal(big[j][1], torch.cat([b[1] for b in small[4 * j: 4 * j + 4]])) for j in range(45))


@pytest.mark.parametrize("args, error", [
    ((DATA.X_train, DATA.y_train[:5], 8), ValueError), ((DATA.X_train, DATA.y_train, 0), ValueError),
    ((list(DATA.X_train), DATA.y_train, 8), TypeError), ((DATA.X_train, DATA.y_train, 8.0), TypeError),
])
def test_bad_arguments_to_minibatches_get_clear_errors(args, error):
    with pytest.raises(error, match="expected"):
        minibatches(*args, seed=0)


# -- accuracy and predictions ------------------------------------------------------------------------
def test_accuracy_counts_right_predictions_in_eval_mode_and_restores_the_mode():
    model = make_model()
    model.train()
    before = [b.clone() for b in model.buffers()]
    guesses = predict(model, DATA.X_test)
    assert model.training and all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    assert accuracy(model, DATA.X_test, DATA.y_test) == (guesses == DATA.y_test).double().mean().item()
    model.eval()
    predict(model, DATA.X_test[:3])
    assert not model.training
    with pytest.raises(ValueError, match="one label per image"):
        accuracy(model, DATA.X_test, DATA.y_test[:3])
    with pytest.raises(TypeError, match="nn.Module"):
        predict("model", DATA.X_test)


# -- meters ------------------------------------------------------------------------------------------
def test_gradient_meter_sees_this_steps_gradient_and_the_running_sum():
    batches = minibatches(DATA.X_train, DATA.y_train, 32, seed=0)[:6]
    for zero_grad in (True, False):
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        own, running = [], []
        with GradientMeter(optimizer) as meter:
            for X, y in batches:
                twin = copy.deepcopy(model)  # this step's own gradient, computed apart
                g = torch.cat([t.flatten() for t in torch.autograd.grad(loss_fn(twin(X), y), list(twin.parameters()))])
                own.append(g)
                running.append(g if not running or zero_grad else running[-1] + g)
                if zero_grad:
                    optimizer.zero_grad()
                loss_fn(model(X), y).backward()
                optimizer.step()
        assert meter.added_norms == pytest.approx([g.norm().item() for g in own], rel=1e-9)
        assert meter.grad_norms == pytest.approx([r.norm().item() for r in running], rel=1e-9)
        cosines = [torch.cosine_similarity(r, g, dim=0).item() for r, g in zip(running, own)]
        assert meter.cosines == pytest.approx(cosines, abs=1e-9)
        if not zero_grad:
            assert all(c < 0.99 for c in meter.cosines[1:])
            assert all(torch.equal(p.grad, t) for p, t in zip(model.parameters(), meter.added_total))
    hooks = sum(len(p._backward_hooks or {}) for p in model.parameters())
    assert hooks == 0 and not optimizer._optimizer_step_pre_hooks


def test_window_meter_counts_micro_batches_and_their_factors():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    micro = minibatches(DATA.X_train, DATA.y_train, 16, seed=0)[:10]
    with WindowMeter(loss_fn) as meter:
        for i, (X, y) in enumerate(micro):
            (loss_fn(model(X), y) / 4).backward()
            if (i + 1) % 4 == 0:
                optimizer.step()
                optimizer.zero_grad()
        with torch.no_grad():
            loss_fn(model(X), y)  # no gradient: not a micro-batch
    assert meter.micro_batches() == [4, 4] and len(meter.pending) == 2
    assert meter.steps[0] == [(16, 0.25)] * 4 and meter.sample_weights() == [(1.0, 1.0), (1.0, 1.0)]
    (loss_fn(model(X), y)).backward()
    optimizer.step()
    assert len(meter.steps) == 2, "removed: the meter no longer records"


def test_window_meter_without_a_loss_watches_every_loss_module_and_weighs_uneven_windows():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    other = torch.nn.CrossEntropyLoss()
    X, y = DATA.X_train[:20], DATA.y_train[:20]
    with WindowMeter() as meter:
        other(model(X[:16]), y[:16]).backward()  # undivided: 16 samples at weight 1
        (other(model(X[16:]), y[16:]) * 4 / 20).backward()  # 4 samples, weighted by their share
        optimizer.step()
    (samples_a, factor_a), (samples_b, factor_b) = meter.steps[0]
    assert (samples_a, samples_b) == (16, 4) and factor_a == 1.0 and factor_b == pytest.approx(0.2)
    low, high = meter.sample_weights()[0]
    assert low == pytest.approx(1.0) and high == pytest.approx(20 / 16)
    with pytest.raises(TypeError, match="nn.Module"):
        WindowMeter(lambda a, b: a)
    with pytest.raises(TypeError, match="Optimizer"):
        GradientMeter(list(model.parameters()))


def test_window_meter_counts_a_summed_loss_against_the_mean():
    """A loss with reduction="sum" is its micro-batch's mean times its samples: dividing it by 64 is a mean."""
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    summed = torch.nn.CrossEntropyLoss(reduction="sum")
    with WindowMeter() as meter:
        for X, y in minibatches(DATA.X_train, DATA.y_train, 16, seed=0)[:4]:
            (summed(model(X), y) / 64).backward()
        optimizer.step()
    assert meter.steps[0] == [(16, 0.25)] * 4 and meter.sample_weights() == [(1.0, 1.0)]


def test_the_digits_are_read_from_scikit_learns_own_file_without_importing_it():
    import subprocess
    import sys

    code = ("import sys; from utils.digits import load_digits_split; load_digits_split(); "
            "print('sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "False", done.stderr


# -- plot --------------------------------------------------------------------------------------------
def test_plot_digits_draws_labels_and_marks_wrong_predictions():
    predictions = DATA.y_test[:10].clone()
    predictions[3] = (predictions[3] + 1) % 10
    ax = plot_digits(DATA.X_test[:10], DATA.y_test[:10], predictions)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 10 and sum("✘" in t for t in texts) == 1
    assert texts[3] == f"{predictions[3].item()} ✘ ({DATA.y_test[3].item()})"
    assert ax.images[0].get_array().shape == (2 * 14, 8 * 10 - 2)
    plt.close("all")


@pytest.mark.parametrize("args", [
    (DATA.X_test[:3, 0], DATA.y_test[:3]), (DATA.X_test[:17], DATA.y_test[:17]),
    (DATA.X_test[:3], DATA.y_test[:2]), (DATA.X_test[:3], DATA.y_test[:3], DATA.y_test[:1]),
])
def test_plot_digits_refuses_what_it_cannot_draw(args):
    with pytest.raises((TypeError, ValueError), match="expected"):
        plot_digits(*args)
    with pytest.raises(TypeError, match="Axes"):
        plot_digits(DATA.X_test[:2], DATA.y_test[:2], ax="left")
