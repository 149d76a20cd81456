"""Notebook 03's claims (manual descent and `.data`), recomputed from torch (independent of stored outputs)."""

import warnings

import pytest
import torch
from torch.autograd import Variable

from utils.data import make_regression
from utils.device import get_device, make_generator

device = get_device()

# The error values nbval compares (ename, evalue), exactly as the notebook shows them.
NO_GRAD_YET = (AttributeError, "'NoneType' object has no attribute 'data'")
NOT_SCALAR = (RuntimeError, "grad can be implicitly created only for scalar outputs")
LEAF_IN_PLACE = (RuntimeError, "a leaf Variable that requires grad is being used in an in-place operation.")
SAVED_TENSOR_CHANGED = (
    RuntimeError,
    "one of the variables needed for gradient computation has been modified by an inplace operation: "
    "[torch.FloatTensor [3]] is at version 1; expected version 0 instead. Hint: enable anomaly detection "
    "to find the operation that failed to compute its gradient, with "
    "torch.autograd.set_detect_anomaly(True, check_nan=False).",
)
TEMPTING_MEND = (TypeError, "unsupported operand type(s) for *: 'float' and 'NoneType'")


# ---- section 2: the old loop, on the CPU as in the notebook ---------------------------------------------------
def legacy_problem():
    gen = make_generator(0)
    data = torch.randn(16, 4, generator=gen)
    true_W, true_b = torch.randn(4, 3, generator=gen), torch.randn(3, generator=gen)
    return data, data @ true_W + true_b


def start():
    gen = make_generator(1)
    W = Variable(torch.randn(4, 3, generator=gen), requires_grad=True)
    b = Variable(torch.randn(3, generator=gen), requires_grad=True)
    return W, b


def run_legacy(mends, reached=None, learning_rate=0.05):
    """The notebook's loop with the given mends; `reached` collects the index of each sample begun."""
    data, targets = legacy_problem()
    W, b = start()
    reached = [] if reached is None else reached
    for i, (sample, target) in enumerate(zip(data, targets)):
        reached.append(i)
        if 1 not in mends or W.grad is not None:
            W.grad.data.zero_()
            b.grad.data.zero_()
        output = sample @ W + b
        loss = ((output - target) ** 2).sum() if 2 in mends else (output - target) ** 2
        loss.backward()
        if 3 in mends:
            with torch.no_grad():
                W -= learning_rate * W.grad.data
                b -= learning_rate * b.grad.data
        else:
            W -= learning_rate * W.grad.data
            b -= learning_rate * b.grad.data
    return W, b, reached


@pytest.mark.parametrize("mends, failure", [((), NO_GRAD_YET), ((1,), NOT_SCALAR), ((1, 2), LEAF_IN_PLACE)])
def test_the_old_loop_fails_three_times_each_on_the_first_sample(mends, failure):
    error_type, message = failure
    for _ in range(2):  # the same text on every run: nbval compares the whole evalue
        reached = []
        with pytest.raises(error_type) as caught:
            run_legacy(mends, reached)
        assert type(caught.value) is error_type
        assert str(caught.value) == message
        assert reached == [0]  # the first sample, every time


def test_the_mended_loop_runs_and_lowers_the_loss():
    data, targets = legacy_problem()

    def mean_loss(W, b):
        return ((data @ W + b - targets) ** 2).mean().item()

    W, b, reached = run_legacy((1, 2, 3))
    assert reached == list(range(16))
    assert round(mean_loss(*start()), 4) == 4.5855
    assert round(mean_loss(W, b), 4) == 0.4315
    W, b = start()
    assert tuple(((data[0] @ W + b - targets[0]) ** 2).shape) == (3,)  # "loss.shape: (3,)"


# ---- section 4 -----------------------------------------------------------------------------------------------
def test_variable_returns_a_plain_tensor_sharing_memory():
    t = torch.ones(3)
    v = Variable(t, requires_grad=True)
    assert type(v) is torch.Tensor and type(v).__name__ == "Tensor"
    assert v.data_ptr() == t.data_ptr()
    assert v.requires_grad and v.is_leaf
    assert isinstance(torch.ones(3), Variable)


# ---- section 5 -----------------------------------------------------------------------------------------------
def test_data_skips_the_version_counter_and_no_grad_bumps_it():
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    assert w._version == 0
    w.data.mul_(10)
    assert w._version == 0
    with torch.no_grad():
        w.mul_(10)
    assert w._version == 1


def test_a_change_through_data_gives_a_silently_wrong_gradient():
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (true_grad,) = torch.autograd.grad((w**2).sum(), w)
    loss = (w**2).sum()
    w.data.mul_(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "no error and no warning"
        loss.backward()
    assert true_grad.tolist() == [2.0, 4.0, 6.0]
    assert w.grad.tolist() == [20.0, 40.0, 60.0]
    assert torch.equal(w.grad, 10 * true_grad)  # "ten times too large"


def test_the_same_change_through_detach_raises_with_a_stable_message():
    for _ in range(2):  # the same text every run: no address, no id
        w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
        loss = (w**2).sum()
        w.detach().mul_(10)
        with pytest.raises(SAVED_TENSOR_CHANGED[0]) as caught:
            loss.backward()
        assert str(caught.value) == SAVED_TENSOR_CHANGED[1]


def test_an_update_under_no_grad_before_backward_raises_instead():
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    loss = (w**2).sum()
    with torch.no_grad():
        w.mul_(10)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# ---- section 3 -----------------------------------------------------------------------------------------------
def test_the_tempting_mend_fails_on_the_second_sample():
    data, targets = legacy_problem()
    W, b = start()
    leaves = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TEMPTING_MEND[0]) as error:
            for sample, target in zip(data, targets):
                leaves.append(W.is_leaf)
                ((sample @ W + b - target) ** 2).sum().backward()
                W = W - 0.05 * W.grad
                b = b - 0.05 * b.grad
    assert str(error.value) == TEMPTING_MEND[1]
    assert leaves == [True, False]  # sample 0 went through, sample 1 failed
    assert type(W.grad_fn).__name__ == "SubBackward0"
    first = str(caught[0].message).split(". ")[0]
    assert first == "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed"


def test_after_the_tempting_mend_backward_runs_back_to_the_first_W():
    data, targets = legacy_problem()
    W0, b = start()
    ((data[0] @ W0 + b - targets[0]) ** 2).sum().backward()
    W = W0 - 0.05 * W0.grad
    first = W0.grad.clone()
    ((data[1] @ W + b - targets[1]) ** 2).sum().backward()
    assert not W.is_leaf and W.grad_fn is not None
    assert not torch.equal(W0.grad, first)  # the second loss reached the first W


# ---- section 1: the manual loop of today ---------------------------------------------------------------------
def regression():
    data = make_regression(num_samples=32, num_features=4, seed=3, device=device, dtype=torch.float64)
    return data.X, data.y


def zero_parameters(on=device):
    W = torch.zeros(4, 1, dtype=torch.float64, device=on, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, device=on, requires_grad=True)
    return W, b


def manual(X, y, update, lr=0.1, num_steps=20):
    W, b = zero_parameters(X.device)
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            update(W, lr)
            update(b, lr)
        W.grad = None
        b.grad = None
    return W, b


def with_sgd(X, y, lr=0.1, num_steps=20):
    W, b = zero_parameters(X.device)
    optimizer = torch.optim.SGD([W, b], lr=lr)
    for _ in range(num_steps):
        optimizer.zero_grad()
        loss = ((X @ W + b - y) ** 2).mean()
        loss.backward()
        optimizer.step()
    return W, b, loss


def test_the_manual_loop_gives_the_parameters_of_sgd():
    X, y = regression()
    W, b = manual(X, y, lambda p, lr: p.sub_(lr * p.grad))
    W_sgd, b_sgd, loss = with_sgd(X, y)
    torch.testing.assert_close(W, W_sgd, rtol=0, atol=1e-12)
    torch.testing.assert_close(b, b_sgd, rtol=0, atol=1e-12)
    assert round(loss.item(), 4) == 0.0120


def test_the_fused_update_matches_sgd_bit_for_bit_on_the_cpu():
    X, y = (t.cpu() for t in regression())
    W, b = manual(X, y, lambda p, lr: p.add_(p.grad, alpha=-lr))
    W_sgd, b_sgd, _ = with_sgd(X, y)
    assert torch.equal(W, W_sgd) and torch.equal(b, b_sgd)


def test_the_manual_loop_is_not_sgd_with_momentum_or_weight_decay():
    """The comparison can fail: other update rules give other parameters."""
    X, y = regression()
    W, _ = manual(X, y, lambda p, lr: p.sub_(lr * p.grad))
    for options in ({"momentum": 0.9}, {"weight_decay": 0.1}):
        W_other, b_other = zero_parameters(X.device)
        optimizer = torch.optim.SGD([W_other, b_other], lr=0.1, **options)
        for _step in range(20):
            optimizer.zero_grad()
            ((X @ W_other + b_other - y) ** 2).mean().backward()
            optimizer.step()
        assert not torch.allclose(W, W_other, rtol=0, atol=1e-6)
