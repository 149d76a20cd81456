"""Notebook 08's claims, recomputed from torch and the helpers (independent of stored outputs)."""

import warnings

import pytest
import torch

from utils.data import make_regression
from utils.device import get_device
from utils.guard import DiscardedGradientWarning, StaleGradientWarning, ZeroGradGuard, ZeroGradWarning

device = get_device()
data = make_regression(num_samples=64, num_features=3, seed=6, device=device, dtype=torch.float64)
X, y = data.X, data.y
train_batch_size, gradient_accumulation_steps, lr = 8, 2, 0.1
batches = [(X[i : i + train_batch_size], y[i : i + train_batch_size]) for i in range(0, 64, train_batch_size)] * 4
loss_fn = torch.nn.MSELoss()


def make_model(optimizer_class=torch.optim.SGD, **options):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(device, torch.float64)
    return model, optimizer_class(model.parameters(), lr=lr, **options)


# The notebook's loops, as written there.
def zero_grad_first(model, optimizer, batches):
    for X, y in batches:
        optimizer.zero_grad()
        loss_fn(model(X), y).backward()
        optimizer.step()


def accumulate(model, optimizer, batches):
    for i, (X, y) in enumerate(batches):
        (loss_fn(model(X), y) / gradient_accumulation_steps).backward()
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()


def forgot_zero_grad(model, optimizer, batches):
    for X, y in batches:
        loss_fn(model(X), y).backward()
        optimizer.step()


def zero_grad_after_backward(model, optimizer, batches):
    for X, y in batches:
        loss_fn(model(X), y).backward()
        optimizer.zero_grad()
        optimizer.step()


def zero_grad_in_window(model, optimizer, batches):
    for i, (X, y) in enumerate(batches):
        optimizer.zero_grad()
        (loss_fn(model(X), y) / gradient_accumulation_steps).backward()
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()


def last_layer_only(model, optimizer, batches):
    for X, y in batches:
        model[2].zero_grad()
        loss_fn(model(X), y).backward()
        optimizer.step()


def clear(model, optimizer, i):
    if i % 3 == 0:
        optimizer.zero_grad(set_to_none=False)
    elif i % 3 == 1:
        model.zero_grad()
    else:
        for p in model.parameters():
            p.grad = None


def clip_then_step(model, optimizer, batches):
    for i, (X, y) in enumerate(batches):
        loss_fn(model(X), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        clear(model, optimizer, i)


@torch.no_grad()
def full_loss(model):
    return loss_fn(model(X), y).item()


def run(train, optimizer_class=torch.optim.SGD, **options):
    model, optimizer = make_model(optimizer_class, **options)
    curve = [full_loss(model)]
    optimizer.register_step_post_hook(lambda *_: curve.append(full_loss(model)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ZeroGradGuard(optimizer, model=model) as guard:
            train(model, optimizer, batches)
    return curve, guard, caught


ZOO = {  # name: (loop, the warning class or None, steps flagged, steps)
    "zero_grad first": (zero_grad_first, None, 0, 32),
    "accumulate": (accumulate, None, 0, 16),
    "forgot zero_grad": (forgot_zero_grad, StaleGradientWarning, 31, 32),
    "zero_grad after backward": (zero_grad_after_backward, DiscardedGradientWarning, 32, 32),
    "zero_grad in window": (zero_grad_in_window, DiscardedGradientWarning, 16, 16),
    "last layer only": (last_layer_only, StaleGradientWarning, 31, 32),
}


@pytest.fixture(scope="module")
def zoo():
    return {name: run(loop) for name, (loop, *_) in ZOO.items()}


@pytest.mark.parametrize("name", ZOO)
def test_the_zoo_verdicts(zoo, name):
    _, kind, flagged, steps = ZOO[name]
    curve, guard, caught = zoo[name]
    assert {f.kind for f in guard.findings} == ({kind} if kind else set())
    assert len({f.step for f in guard.findings}) == flagged
    assert guard.steps == steps and len(curve) == steps + 1
    assert len(caught) == min(3, len(guard.findings))  # the first three are shown


def test_forgot_zero_grad_is_fine_on_its_first_step_only(zoo):
    assert [f.step for f in zoo["forgot zero_grad"][1].findings] == list(range(2, 33))


def test_the_loss_curves(zoo):
    final = {name: curve[-1] for name, (curve, _, _) in zoo.items()}
    start = zoo["zero_grad first"][0][0]
    assert all(curve[0] == start for curve, _, _ in zoo.values())  # the same fresh model
    assert round(start, 2) == 5.28
    assert final["forgot zero_grad"] > 20 * start  # blows up
    assert zoo["zero_grad after backward"][0] == [start] * 33  # never moves: step() skips None
    assert final["zero_grad first"] < start / 50 and final["accumulate"] < start / 50
    assert final["zero_grad in window"] > 1.5 * final["accumulate"]  # the same 16 steps, learned worse
    assert final["last layer only"] > 3 * final["zero_grad first"]
    # "Only the silent loops learn well": the two silent loops end lowest
    assert sorted(final, key=final.get)[:2] == ["zero_grad first", "accumulate"]


def test_reading_the_warnings(zoo):
    _, guard, caught = zoo["forgot zero_grad"]
    assert (len(caught), len(guard.findings)) == (3, 31)
    assert str(caught[0].message).startswith(
        "step 2: optimizer.step() is about to use .grad that still holds gradients that step 1 "
        "already used, in 4 of 4 parameters (0.weight, 0.bias, 2.weight, 2.bias). Probably forgotten: "
        "optimizer.zero_grad().")
    window = str(zoo["zero_grad in window"][2][0].message)
    assert window.startswith("step 1: gradients computed since the guard started were cleared")
    assert "inside a gradient-accumulation window" in window
    partial = str(zoo["last layer only"][2][0].message)
    assert "in 2 of 4 parameters (0.weight, 0.bias)" in partial
    assert "only some gradients were cleared" in partial


def test_the_two_hooks_see_grad_before_and_after_each_accumulation():
    w = torch.zeros(2, device=device, requires_grad=True)
    seen = []
    w.register_hook(lambda grad: seen.append(None if w.grad is None else w.grad.tolist()))
    w.register_post_accumulate_grad_hook(lambda w: seen.append(w.grad.tolist()))
    for _ in range(2):
        (w * torch.tensor([1.0, 2.0], device=device)).sum().backward()
    assert seen == [None, [1.0, 2.0], [1.0, 2.0], [2.0, 4.0]]
    grad = w.grad
    versions = [grad._version]
    grad.mul_(0.5)
    versions.append(grad._version)
    grad.zero_()
    versions.append(grad._version)
    assert w.grad is grad and versions == [1, 2, 3]


SETTINGS = [(torch.optim.SGD, {"momentum": 0.9}), (torch.optim.Adam, {"foreach": True}),
            (torch.optim.AdamW, {"fused": True})]


@pytest.mark.parametrize("optimizer_class, options", SETTINGS)
def test_silent_on_more_correct_styles(optimizer_class, options):
    for train, steps in ((clip_then_step, 32), (accumulate, 16), (zero_grad_first, 32)):
        _, guard, caught = run(train, optimizer_class, **options)
        assert caught == [] and guard.findings == [] and guard.steps == steps


def test_bit_identical_and_no_hooks_left():
    model_a, optimizer_a = make_model(torch.optim.AdamW, fused=True)
    model_b, optimizer_b = make_model(torch.optim.AdamW, fused=True)
    with ZeroGradGuard(optimizer_a, model=model_a):
        clip_then_step(model_a, optimizer_a, batches)
    clip_then_step(model_b, optimizer_b, batches)
    assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(model_a.parameters(), make_model()[0].parameters()))
    hooks = sum(len(p._backward_hooks or {}) + len(p._post_accumulate_grad_hooks or {})
                for p in model_a.parameters())
    assert hooks == 0
    assert optimizer_a._optimizer_step_pre_hooks == {} and optimizer_a._optimizer_step_post_hooks == {}


def test_warnings_as_errors_stop_at_the_first_bad_step():
    model, optimizer = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroGradWarning)
        with pytest.raises(StaleGradientWarning, match=r"^step 2: optimizer\.step\(\) is about to use"):
            with ZeroGradGuard(optimizer, model=model) as guard:
                forgot_zero_grad(model, optimizer, batches)
    assert guard.steps == 1  # step 2 never ran


def test_the_guard_cannot_see_data_zeroing_between_backward_and_step():
    """The notebook's first limit: `.data` has a version counter of its own."""
    def data_zero(model, optimizer, batches):
        for X, y in batches:
            loss_fn(model(X), y).backward()
            for p in model.parameters():
                p.grad.data.zero_()
            optimizer.step()

    _, guard, _ = run(data_zero)
    assert guard.findings == []
    _, guard, _ = run(zero_grad_after_backward)  # the same bug through zero_grad() is seen
    assert guard.findings


def test_inspected_then_cleared_gradients_count_as_discarded_but_autograd_grad_does_not():
    def inspect_with_backward(model, optimizer, batches):
        for X, y in batches:
            loss_fn(model(X), y).backward()  # only to look at the gradient norm
            optimizer.zero_grad()
            loss_fn(model(X), y).backward()
            optimizer.step()
            optimizer.zero_grad()

    def inspect_with_autograd_grad(model, optimizer, batches):
        for X, y in batches:
            torch.autograd.grad(loss_fn(model(X), y), list(model.parameters()))
            loss_fn(model(X), y).backward()
            optimizer.step()
            optimizer.zero_grad()

    assert {f.kind for f in run(inspect_with_backward)[1].findings} == {DiscardedGradientWarning}
    assert run(inspect_with_autograd_grad)[1].findings == []
