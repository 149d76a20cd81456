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


def test_grad_starts_none_then_is_exactly_k_times_g_for_five_calls(problem):
    data, mse = problem
    w = torch.zeros(3, 1, device=device, requires_grad=True)
    assert w.grad is None
    mse(w).backward()
    g = w.grad.clone()
    torch.testing.assert_close(g, 2 * data.X.T @ (data.X @ w - data.y) / 8)
    for k in range(2, 6):
        mse(w).backward()
        assert torch.equal(w.grad, k * g), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_adding_one_g_at_a_time_is_k_times_g_only_to_rounding_from_the_sixth_call(dtype):
    """ "Exactly" for five calls; from the sixth on the running sum and k·g can differ."""
    g = torch.randn(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    running = g.clone()
    differs = {}
    for k in range(2, 9):
        running = running + g  # what backward() does to .grad
        differs[k] = (running != k * g).float().mean().item()
        torch.testing.assert_close(running, k * g, rtol=k * torch.finfo(dtype).eps, atol=0)
    assert all(differs[k] == 0.0 for k in range(2, 6))
    assert all(differs[k] > 0.1 for k in range(6, 9))  # about half of the entries


def test_the_notebooks_scalar_example_differs_from_the_sixth_call_on():
    v = torch.tensor(1.0, requires_grad=True)
    exact = []
    for k in range(1, 8):
        (0.3 * v).backward()
        exact.append(torch.equal(v.grad, k * torch.tensor(0.3)))
    assert exact == [True] * 5 + [False] * 2
    assert torch.allclose(v.grad, 7 * torch.tensor(0.3))


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


def test_inside_one_backward_grad_is_written_once_across_calls_once_per_call():
    """The two kinds of adding: autograd sums the paths before .grad is touched (one write),
    while two backward() calls write .grad twice. (The old framing, "adding is the chain rule
    either way", would have both write once per path.)"""
    a = torch.tensor(3.0, requires_grad=True)
    writes = []
    a.register_post_accumulate_grad_hook(lambda p: writes.append(p.grad.item()))
    (2 * a + a**2).backward()
    assert writes == [8.0]
    a.grad, writes[:] = None, []
    (2 * a).backward()
    (a**2).backward()
    assert writes == [2.0, 8.0]
    # a tied weight and a recurrent weight: also one write per backward()
    W = torch.randn(2, 2, generator=torch.Generator().manual_seed(1)).requires_grad_()
    tied = []
    W.register_post_accumulate_grad_hook(lambda p: tied.append(1))
    (W @ (W @ torch.ones(2, 1))).sum().backward()
    assert tied == [1]


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


def recurrent_problem():
    inputs, targets = make_sequences(num_sequences=4, num_steps=5, num_features=2, seed=2, device=device)
    gen = torch.Generator().manual_seed(3)
    W_h = (0.5 * torch.randn(3, 3, generator=gen)).to(device).requires_grad_()
    W_x = (0.5 * torch.randn(3, 2, generator=gen)).to(device)
    return inputs, targets, W_h, W_x


def test_recurrent_weight_gradient_is_the_sum_over_time_steps():
    inputs, targets, W_h, W_x = recurrent_problem()
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


def passes_through_time_steps(num_steps, per_step_backward):
    """How many times the backward() calls pass back through a hidden state, over all calls."""
    gen = torch.Generator().manual_seed(4)
    W_h = (0.5 * torch.randn(3, 3, generator=gen)).requires_grad_()
    inputs = torch.randn(num_steps, 3, 2, generator=gen)
    passes, h, total = [], torch.zeros(3, 2), 0.0
    for t in range(num_steps):
        h = torch.tanh(W_h @ h + inputs[t])
        h.register_hook(lambda grad: passes.append(1))
        step_loss = (h**2).mean()
        if per_step_backward:
            step_loss.backward(retain_graph=True)
        total = total + step_loss
    if not per_step_backward:
        total.backward()
    return len(passes), h


@pytest.mark.parametrize("num_steps", [1, 2, 5, 8, 100])
def test_one_backward_per_time_step_costs_T_T_plus_1_over_2_passes(num_steps):
    per_step, _ = passes_through_time_steps(num_steps, per_step_backward=True)
    once, _ = passes_through_time_steps(num_steps, per_step_backward=False)
    assert per_step == num_steps * (num_steps + 1) // 2
    assert once == num_steps
    if num_steps == 5:
        assert (per_step, once) == (15, 5)  # "15 instead of 5 here"
    if num_steps == 100:
        assert per_step == 5050  # "5,050 instead of 100"


def test_the_notebooks_cell_passes_15_times():
    inputs, targets, W_h, W_x = recurrent_problem()
    passes, h = [], torch.zeros(3, 4, device=device)
    for t in range(5):
        h = torch.tanh(W_h @ h + W_x @ inputs[:, t].T)
        h.register_hook(lambda grad: passes.append(1))
        ((h[0] - targets[:, t]) ** 2).mean().backward(retain_graph=True)
    assert len(passes) == 15


def test_retain_graph_keeps_saved_tensors_alive_after_backward():
    _, h_retained = passes_through_time_steps(5, per_step_backward=True)
    assert h_retained.grad_fn._saved_result is not None  # still there after the last backward()
    _, h_freed = passes_through_time_steps(5, per_step_backward=False)
    with pytest.raises(RuntimeError, match="freed"):
        h_freed.grad_fn._saved_result


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


def test_at_one_w_the_two_halves_add_up_to_the_full_batch_direction(problem):
    """The old section 6 took both gradients at the same w: that sum is a good direction
    (exactly twice the full batch's gradient), not the bug."""
    data, mse = problem
    w = data.weight.clone().requires_grad_()

    def half(part):
        return ((data.X[part] @ w - data.y[part]) ** 2).mean()

    (full,) = torch.autograd.grad(mse(w), w)
    half(slice(0, 4)).backward()
    half(slice(4, 8)).backward()
    torch.testing.assert_close(w.grad, 2 * full)


def run_with_steps(data, clear, lr=0.05):
    """Section 6: SGD on halves A, B, A, B; per step, .grad and this batch's own gradient."""
    w = torch.zeros(3, 1, device=device, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=lr)
    rows, own = [], []
    for batch in [slice(0, 4), slice(4, 8)] * 2:

        def half():
            return ((data.X[batch] @ w - data.y[batch]) ** 2).mean()

        (this,) = torch.autograd.grad(half(), w)
        own.append(this)
        if clear:
            optimizer.zero_grad()
        half().backward()
        rows.append((w.grad.clone(), this))
        optimizer.step()
    return rows, own


def degrees(u, v):
    cosine = torch.nn.functional.cosine_similarity(u.flatten().double(), v.flatten().double(), dim=0)
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine.item()))))


def test_a_step_between_backward_calls_leaves_a_stale_growing_grad(problem):
    data, _ = problem
    rows, own = run_with_steps(data, clear=False)
    for k, (grad, _) in enumerate(rows):  # .grad is the sum of gradients taken at k+1 different w
        torch.testing.assert_close(grad, sum(own[: k + 1]))
    angles = [round(degrees(grad, this)) for grad, this in rows]
    ratios = [round((grad.norm() / this.norm()).item(), 2) for grad, this in rows]
    assert angles == [0, 25, 32, 35]  # as printed: "25° to 35° away"
    assert ratios == [1.0, 1.37, 3.77, 3.31]  # "up to nearly 4 times as long"
    # the stale terms were taken at weights that no longer exist: .grad is not what the same two
    # batches give at today's w (the harmless accumulation of the old framing)
    grad, _ = rows[1]
    w_now = torch.zeros(3, 1, device=device) - 0.05 * rows[0][0]
    at_today = sum(torch.autograd.grad(((data.X[p] @ w_now.requires_grad_() - data.y[p]) ** 2).mean(),
                                       w_now)[0] for p in (slice(0, 4), slice(4, 8)))
    assert not torch.allclose(grad, at_today, rtol=1e-2)


def test_clearing_before_each_backward_gives_exactly_this_batchs_gradient(problem):
    data, _ = problem
    rows, _ = run_with_steps(data, clear=True)
    assert all(torch.equal(grad, this) for grad, this in rows)
