"""Notebook 01's claims, recomputed from torch and the helpers (independent of stored outputs)."""

import math

import pytest
import torch

from utils.data import make_regression, make_sequences
from utils.device import get_device

device = get_device()


@pytest.fixture
def problem():
    data = make_regression(num_samples=8, num_features=3, seed=0, device=device)
    return data, lambda w: ((data.X @ w - data.y) ** 2).mean()


def test_grad_starts_none_then_is_exactly_k_times_g(problem):
    data, mse = problem
    w = torch.zeros(3, 1, device=device, requires_grad=True)
    assert w.grad is None
    mse(w).backward()
    g = w.grad.clone()
    torch.testing.assert_close(g, 2 * data.X.T @ (data.X @ w - data.y) / 8)
    for k in range(2, 6):
        mse(w).backward()
        assert torch.equal(w.grad, k * g), k


def test_second_backward_on_a_freed_graph_fails_and_retain_graph_adds(problem):
    _, mse = problem
    w = torch.zeros(3, 1, device=device, requires_grad=True)
    loss = mse(w)
    loss.backward()
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        loss.backward()
    w.grad = None
    loss = mse(w)
    loss.backward(retain_graph=True)
    once = w.grad.clone()
    loss.backward()
    assert torch.equal(w.grad, 2 * once)


def test_value_used_twice_gets_the_sum_of_both_paths():
    a = torch.tensor(3.0, requires_grad=True)
    (2 * a + a**2).backward()
    assert a.grad.item() == 8.0
    a.grad = None
    (2 * a).backward()
    (a**2).backward()
    assert a.grad.item() == 8.0


def test_tied_weight_gets_the_sum_of_both_uses():
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(2, 2, generator=gen).to(device).requires_grad_()
    x = torch.randn(2, 1, generator=gen).to(device)
    (W @ (W @ x)).sum().backward()
    inner, outer = (W.detach().clone().requires_grad_() for _ in range(2))
    (outer @ (inner @ x)).sum().backward()
    torch.testing.assert_close(W.grad, inner.grad + outer.grad)
    assert not torch.allclose(inner.grad, outer.grad)  # the two uses really differ


def test_loss_in_pieces_equals_one_backward_and_halves_over_two_equal_the_batch(problem):
    data, mse = problem
    w = torch.zeros(3, 1, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(mse(w), w)

    def half(part):
        return ((data.X[part] @ w - data.y[part]) ** 2).mean()

    first, second = slice(0, 4), slice(4, 8)
    (half(first) + half(second)).backward()
    together = w.grad.clone()
    w.grad = None
    half(first).backward()
    half(second).backward()
    torch.testing.assert_close(w.grad, together)
    w.grad = None
    (half(first) / 2).backward()
    (half(second) / 2).backward()
    torch.testing.assert_close(w.grad, g)


def _rnn(inputs, targets, W_x, weights, per_step_backward=False):
    h = torch.zeros(3, inputs.shape[0], device=device)
    loss = 0.0
    for t, W_step in enumerate(weights):
        h = torch.tanh(W_step @ h + W_x @ inputs[:, t].T)
        step_loss = ((h[0] - targets[:, t]) ** 2).mean()
        if per_step_backward:
            step_loss.backward(retain_graph=True)
        loss = loss + step_loss
    return loss


def test_recurrent_weight_gradient_is_the_sum_over_time_steps():
    inputs, targets = make_sequences(num_sequences=4, num_steps=5, num_features=2, seed=2, device=device)
    gen = torch.Generator().manual_seed(3)
    W_h = (0.5 * torch.randn(3, 3, generator=gen)).to(device).requires_grad_()
    W_x = (0.5 * torch.randn(3, 2, generator=gen)).to(device)
    _rnn(inputs, targets, W_x, [W_h] * 5).backward()
    copies = [W_h.detach().clone().requires_grad_() for _ in range(5)]
    _rnn(inputs, targets, W_x, copies).backward()
    per_step = torch.stack([c.grad for c in copies])
    torch.testing.assert_close(W_h.grad, per_step.sum(dim=0))
    assert torch.count_nonzero(per_step[0]) == 0  # h0 = 0: the first step adds nothing
    assert (per_step[1:, 0, 0] < 0).all()  # what the bar chart shows: every later step adds
    full = W_h.grad.clone()
    W_h.grad = None
    _rnn(inputs, targets, W_x, [W_h] * 5, per_step_backward=True)
    torch.testing.assert_close(W_h.grad, full)


def test_only_leaves_keep_grad_unless_retained(problem):
    data, _ = problem
    w = torch.zeros(3, 1, device=device, requires_grad=True)
    pred = data.X @ w
    ((pred - data.y) ** 2).mean().backward()
    assert w.is_leaf and not pred.is_leaf
    with pytest.warns(UserWarning, match="The .grad attribute of a Tensor that is not a leaf Tensor"):
        assert pred.grad is None
    pred = data.X @ w
    pred.retain_grad()
    ((pred - data.y) ** 2).mean().backward()
    torch.testing.assert_close(pred.grad, 2 * (pred - data.y) / 8)


def test_functional_gradients_leave_grad_alone_and_do_not_accumulate(problem):
    _, mse = problem
    w = torch.zeros(3, 1, device=device, requires_grad=True)
    mse(w).backward()
    g = w.grad.clone()
    w.grad = None
    (grad,) = torch.autograd.grad(mse(w), w)
    assert w.grad is None
    torch.testing.assert_close(grad, g)
    grad_of_mse = torch.func.grad(mse)
    first, second = grad_of_mse(w.detach()), grad_of_mse(w.detach())
    torch.testing.assert_close(first, g)
    assert torch.equal(first, second)


def test_without_clearing_the_gradient_points_away_from_the_batch(problem):
    data, _ = problem
    w = data.weight.clone().requires_grad_()

    def half(part):
        return ((data.X[part] @ w - data.y[part]) ** 2).mean()

    a, b = slice(0, 4), slice(4, 8)
    (g_a,) = torch.autograd.grad(half(a), w)
    (g_b,) = torch.autograd.grad(half(b), w)
    half(a).backward()
    half(b).backward()
    torch.testing.assert_close(w.grad, g_a + g_b)
    cosine = torch.nn.functional.cosine_similarity(w.grad.flatten(), g_b.flatten(), dim=0).item()
    angle = math.degrees(math.acos(cosine))
    assert 40 < angle < 50  # the notebook prints 44 degrees: "tens of degrees away"
    w.grad = None
    half(b).backward()
    assert torch.equal(w.grad, g_b)
