"""Notebook 04's claims (`set_to_none`: None or zeros), recomputed from torch (independent of stored outputs)."""

import inspect
import math
from functools import partial

import pytest
import torch

from utils.data import make_regression
from utils.device import get_device, make_generator

device = get_device()


def regression():
    data = make_regression(num_samples=32, num_features=4, seed=3, device=device, dtype=torch.float64)
    return data.X, data.y


# ---- section 1 ------------------------------------------------------------------------------------------------
def test_zero_grad_sets_none_by_default():
    for method in (torch.optim.Optimizer.zero_grad, torch.nn.Module.zero_grad):
        assert str(inspect.signature(method)) == "(self, set_to_none: bool = True) -> None"
    X, y = regression()
    model = torch.nn.Linear(4, 1, dtype=torch.float64, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(model(X), y).backward()
    optimizer.zero_grad()
    assert model.weight.grad is None and model.bias.grad is None
    with pytest.raises(AttributeError) as caught:
        for p in model.parameters():
            p.grad.add_(0.01 * p.detach())
    assert str(caught.value) == "'NoneType' object has no attribute 'add_'"
    torch.nn.functional.mse_loss(model(X), y).backward()
    for p in model.parameters():
        p.grad.add_(0.01 * p.detach())  # after backward(): works
    optimizer.step()


def test_the_hand_written_loop_of_the_tuning_guide_does_what_zero_grad_does():
    X, y = regression()
    model = torch.nn.Linear(4, 1, dtype=torch.float64, device=device)
    torch.nn.functional.mse_loss(model(X), y).backward()
    for p in model.parameters():
        p.grad = None
    after_loop = [p.grad for p in model.parameters()]
    torch.nn.functional.mse_loss(model(X), y).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    assert after_loop == [None, None] and all(p.grad is None for p in model.parameters())


# ---- section 3: which optimizers move a parameter whose gradient is zero ------------------------------------
LR, MOMENTUM, WEIGHT_DECAY, BETAS, EPS, ADAMW_DECAY = 0.1, 0.9, 0.1, (0.9, 0.999), 1e-8, 0.01
OPTIMIZERS = {
    "SGD": lambda ps: torch.optim.SGD(ps, lr=LR),
    "SGD momentum=0.9": lambda ps: torch.optim.SGD(ps, lr=LR, momentum=MOMENTUM),
    "SGD weight_decay=0.1": lambda ps: torch.optim.SGD(ps, lr=LR, weight_decay=WEIGHT_DECAY),
    "Adam": lambda ps: torch.optim.Adam(ps, lr=LR),
    "AdamW": lambda ps: torch.optim.AdamW(ps, lr=LR),
}


def train_unused(make_optimizer, set_to_none, num_steps=3, steps_with_grad=2):
    """The notebook's experiment: `unused` is in the loss for the first steps only."""
    gen = make_generator(4)
    used, unused = (torch.randn(3, generator=gen, dtype=torch.float64).to(device).requires_grad_() for _ in range(2))
    optimizer = make_optimizer([used, unused])
    history = []
    for step in range(num_steps):
        optimizer.zero_grad(set_to_none=set_to_none)
        loss = (used**2).sum() + ((unused**2).sum() if step < steps_with_grad else 0.0)
        loss.backward()
        optimizer.step()
        history.append(unused.detach().cpu().clone())
    return history


def by_hand(name):
    """The move of `unused` in step 3 with zeros, from each optimizer's update rule written out."""
    gen = make_generator(4)
    _, p = (torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(2))  # unused's start
    grads = lambda p, step: 2 * p if step < 2 else torch.zeros_like(p)  # noqa: E731
    buf = m = v = None
    for step in range(3):
        before, g = p.clone(), grads(p, step)
        if name == "SGD":
            p = p - LR * g
        elif name == "SGD momentum=0.9":
            buf = g if buf is None else MOMENTUM * buf + g
            p = p - LR * buf
        elif name == "SGD weight_decay=0.1":
            p = p - LR * (g + WEIGHT_DECAY * p)
        else:  # Adam and AdamW
            if name == "AdamW":
                p = p * (1 - LR * ADAMW_DECAY)
            m = (1 - BETAS[0]) * g if m is None else BETAS[0] * m + (1 - BETAS[0]) * g
            v = (1 - BETAS[1]) * g * g if v is None else BETAS[1] * v + (1 - BETAS[1]) * g * g
            t = step + 1
            m_hat, v_hat = m / (1 - BETAS[0] ** t), v / (1 - BETAS[1] ** t)
            p = p - LR * m_hat / (v_hat.sqrt() + EPS)
    return (p - before).abs().max().item()


TABLE = {  # what the notebook prints, zeros column; the None column is 0.0000 everywhere
    "SGD": 0.0,
    "SGD momentum=0.9": 0.3674,
    "SGD weight_decay=0.1": 0.0075,
    "Adam": 0.0771,
    "AdamW": 0.0780,
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_table_zeros_move_by_the_update_rule_and_none_skips(name):
    zeros = train_unused(OPTIMIZERS[name], set_to_none=False)
    nones = train_unused(OPTIMIZERS[name], set_to_none=True)
    move = (zeros[-1] - zeros[-2]).abs().max().item()
    assert math.isclose(move, by_hand(name), rel_tol=1e-9, abs_tol=1e-12)
    assert round(move, 4) + 0.0 == TABLE[name]
    assert torch.equal(nones[-1], nones[-2])  # None: skipped, exactly
    if name != "SGD":
        assert move > 1e-3  # "every other row moves"


def test_plot_zeros_keep_drifting_none_stays():
    def drift(name, set_to_none):
        history = train_unused(OPTIMIZERS[name], set_to_none, num_steps=20, steps_with_grad=5)
        return [(h - history[4]).norm().item() for h in history[4:]]

    for name in ("Adam", "SGD momentum=0.9"):
        moving = drift(name, False)
        assert len(moving) == 16 and moving[0] == 0.0
        assert all(b > a for a, b in zip(moving, moving[1:]))  # still moving 15 steps later
        assert drift(name, True) == [0.0] * 16
    assert round(drift("SGD momentum=0.9", False)[-1], 1) == 3.0  # what the plot shows
    assert round(drift("Adam", False)[-1], 1) == 1.0


# ---- section 2: what backward() does with each, and what each keeps ------------------------------------------
@pytest.fixture
def big_model():
    gen = make_generator(7)
    model = torch.nn.Sequential(
        torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
    ).to(device)
    X = torch.randn(8, 1024, generator=gen).to(device)
    y = torch.randn(8, 1024, generator=gen).to(device)
    return model, X, y, torch.optim.SGD(model.parameters(), lr=0.01)


def test_zeros_keep_the_buffer_none_keeps_the_computed_gradient(big_model):
    model, X, y, optimizer = big_model
    assert sum(p.numel() for p in model.parameters()) == 3_148_800
    computed = {}
    for name, p in model.named_parameters():
        p.register_hook(lambda grad, name=name: computed.__setitem__(name, grad.data_ptr()))
    torch.nn.functional.mse_loss(model(X), y).backward()
    grads = {}
    for set_to_none in (False, True):
        optimizer.zero_grad(set_to_none=set_to_none)
        kept = {name: p.grad for name, p in model.named_parameters()}
        torch.nn.functional.mse_loss(model(X), y).backward()
        grads[set_to_none] = [p.grad.clone() for p in model.parameters()]
        for name, p in model.named_parameters():
            assert (p.grad is kept[name]) is (not set_to_none), name
            assert (p.grad.data_ptr() == computed[name]) is set_to_none, name
            if not set_to_none:
                assert p.grad.data_ptr() == kept[name].data_ptr()
    for zeros, nones in zip(grads[False], grads[True]):  # zeros + computed == computed
        torch.testing.assert_close(zeros, nones)


def test_zeros_hold_12_6_megabytes_none_holds_nothing(big_model):
    model, X, y, optimizer = big_model
    torch.nn.functional.mse_loss(model(X), y).backward()

    def megabytes():
        return sum(p.grad.nbytes for p in model.parameters() if p.grad is not None) / 1e6

    optimizer.zero_grad(set_to_none=False)
    assert round(megabytes(), 1) == 12.6
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    optimizer.zero_grad(set_to_none=True)
    assert megabytes() == 0.0 and all(p.grad is None for p in model.parameters())
    assert len(list(model.parameters())) == 6  # "None only loops over 6 parameters"


def test_backward_with_zeros_adds_into_the_buffer_the_addition_reads_two_and_writes_one(big_model):
    """What the expected cost is worked out from: zeroing writes B bytes, the addition reads the kept
    buffer and the new gradient (2B) and writes the sum (B); None does neither: 4B = about 50 MB."""
    model, X, y, optimizer = big_model
    megabytes = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    assert round(megabytes, 1) == 12.6 and round(4 * megabytes) == 50
    torch.nn.functional.mse_loss(model(X), y).backward()
    optimizer.zero_grad(set_to_none=False)
    kept = [p.grad for p in model.parameters()]
    torch.nn.functional.mse_loss(model(X), y).backward()
    assert all(p.grad is k for p, k in zip(model.parameters(), kept))  # written into, in place


@pytest.mark.parametrize("batch", [8, 64])
def test_what_zeroing_writes_does_not_grow_with_the_batch(big_model, batch):
    model, _, _, optimizer = big_model
    gen = make_generator(8)
    X, y = (torch.randn(batch, 1024, generator=gen).to(device) for _ in range(2))
    torch.nn.functional.mse_loss(model(X), y).backward()
    optimizer.zero_grad(set_to_none=False)
    assert round(sum(p.grad.nbytes for p in model.parameters()) / 1e6, 1) == 12.6


# ---- section 3, the rule across torch.optim -----------------------------------------------------------------
def every_optimizer():
    """Each torch.optim optimizer class with settings that it accepts, for a zero/None test."""
    return {
        "SGD": partial(torch.optim.SGD, lr=0.1), "SGD momentum": partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        "SGD weight_decay": partial(torch.optim.SGD, lr=0.1, weight_decay=0.1),
        "Adam": partial(torch.optim.Adam, lr=0.1), "AdamW": partial(torch.optim.AdamW, lr=0.1),
        "Adagrad": partial(torch.optim.Adagrad, lr=0.1), "RMSprop": partial(torch.optim.RMSprop, lr=0.1),
        "RMSprop centered": partial(torch.optim.RMSprop, lr=0.1, centered=True),
        "RMSprop momentum": partial(torch.optim.RMSprop, lr=0.1, momentum=0.9),
        "Adamax": partial(torch.optim.Adamax, lr=0.1), "NAdam": partial(torch.optim.NAdam, lr=0.1),
        "RAdam": partial(torch.optim.RAdam, lr=0.1), "Adadelta": partial(torch.optim.Adadelta, lr=0.1),
        "Rprop": partial(torch.optim.Rprop, lr=0.1), "ASGD": partial(torch.optim.ASGD, lr=0.1),
        "Adafactor": partial(torch.optim.Adafactor, lr=0.1),
        "Adafactor weight_decay": partial(torch.optim.Adafactor, lr=0.1, weight_decay=0.1),
    }


# Whether the update has a term that is not a multiple of this step's gradient (read off each update rule):
# a buffer or mean of past gradients in the numerator, or a decay of the parameter itself.
HAS_OTHER_TERM = {
    "SGD": False, "SGD momentum": True, "SGD weight_decay": True, "Adam": True, "AdamW": True,
    "Adagrad": False, "RMSprop": False, "RMSprop centered": False, "RMSprop momentum": True, "Adamax": True,
    "NAdam": True, "RAdam": True, "Adadelta": False, "Rprop": False, "ASGD": True, "Adafactor": False,
    "Adafactor weight_decay": True,
}


@pytest.mark.parametrize("name", list(HAS_OTHER_TERM))
def test_the_rule_a_zero_gradient_moves_exactly_when_the_update_has_another_term(name):
    """The old rule ("moves whenever the update uses more than this step's gradient") fails here:
    Adagrad, RMSprop, Adadelta, Rprop and Adafactor use history, yet a zero gradient leaves them still."""
    make = every_optimizer()[name]
    history = train_unused(lambda ps: make(ps), set_to_none=False)
    moved = not torch.equal(history[-1], history[-2])
    assert moved == HAS_OTHER_TERM[name]
    nones = train_unused(lambda ps: make(ps), set_to_none=True)
    assert torch.equal(nones[-1], nones[-2])  # None: skipped, by every one of them


def test_every_optimizer_class_is_covered_or_named_as_an_exception():
    classes = {getattr(torch.optim, n) for n in dir(torch.optim)
               if inspect.isclass(getattr(torch.optim, n)) and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
               and n != "Optimizer"}
    covered = {p.func for p in every_optimizer().values()}
    assert classes - covered == {torch.optim.LBFGS, torch.optim.SparseAdam, torch.optim.Muon}


def test_muon_and_sparse_adam_skip_none_too():
    gen = make_generator(9)
    used, unused = (torch.randn(3, 3, generator=gen).requires_grad_() for _ in range(2))
    optimizer = torch.optim.Muon([used, unused], lr=0.1)
    for step in range(3):
        optimizer.zero_grad()
        before = unused.detach().clone()
        ((used**2).sum() + ((unused**2).sum() if step < 2 else 0.0)).backward()
        optimizer.step()
    assert torch.equal(unused.detach(), before)
    embedding = torch.nn.Embedding(4, 2, sparse=True)
    other = torch.nn.Embedding(4, 2, sparse=True)
    optimizer = torch.optim.SparseAdam([*embedding.parameters(), *other.parameters()], lr=0.1)
    for step in range(3):
        optimizer.zero_grad()
        before = other.weight.detach().clone()
        loss = embedding(torch.tensor([0])).sum() + (other(torch.tensor([1])).sum() if step < 2 else 0.0)
        loss.backward()
        optimizer.step()
    assert other.weight.grad is None and torch.equal(other.weight.detach(), before)


def test_lbfgs_is_the_exception_it_reads_none_as_zeros_and_can_move_such_a_parameter():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([3.0], requires_grad=True)
    optimizer = torch.optim.LBFGS([a, b], lr=1, max_iter=3, history_size=10)

    def coupled():
        optimizer.zero_grad()
        loss = (a.sum() + b.sum() - 1) ** 2 + (a**2).sum()
        loss.backward()
        return loss

    def a_only():
        optimizer.zero_grad()
        loss = ((a - 5) ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(coupled)
    before = b.detach().clone()
    optimizer.step(a_only)
    assert b.grad is None and not torch.equal(b.detach(), before)


# ---- section 4: embeddings --------------------------------------------------------------------------------------
def train_embedding(sparse, make_optimizer, dtype=torch.float32):
    """The notebook's two steps: words 0, 1, 2, then words 3, 4; word 5 never appears."""
    gen = make_generator(5)
    embedding = torch.nn.Embedding(6, 2, sparse=sparse, dtype=dtype)
    with torch.no_grad():
        embedding.weight.copy_(torch.randn(6, 2, generator=gen))
    targets = torch.randn(6, 2, generator=gen, dtype=dtype).to(device)
    embedding, optimizer = embedding.to(device), make_optimizer(embedding.parameters())
    moves = []
    for words in [torch.tensor([0, 1, 2]), torch.tensor([3, 4])]:
        optimizer.zero_grad()
        before = embedding.weight.detach().clone()
        ((embedding(words.to(device)) - targets[words]) ** 2).mean().backward()
        optimizer.step()
        moves.append((embedding.weight.detach() - before).norm(dim=1).cpu())
    return embedding, moves


def test_absent_rows_get_zeros_in_a_dense_grad_never_none():
    """The old claim ("the embedding row of an absent word gets None") fails: None is per tensor."""
    embedding, _ = train_embedding(False, partial(torch.optim.Adam, lr=0.1))
    grad = embedding.weight.grad
    assert grad is not None and not grad.is_sparse and grad.shape == (6, 2)
    assert [bool(r.abs().sum() == 0) for r in grad] == [True, True, True, False, False, True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_adam_moves_absent_rows_sparse_adam_does_not(dtype):
    _, dense = train_embedding(False, partial(torch.optim.Adam, lr=0.1), dtype)
    _, lazy = train_embedding(True, partial(torch.optim.SparseAdam, lr=0.1), dtype)
    dense, lazy = dense[1].tolist(), lazy[1].tolist()
    assert all(v > 0.09 for v in dense[:3]) and dense[5] == 0.0  # absent rows move; word 5's never did
    assert lazy[:3] == [0.0, 0.0, 0.0] and lazy[5] == 0.0  # SparseAdam leaves absent rows alone
    assert all(v > 0.1 for v in lazy[3:5]) and lazy[3:5] == pytest.approx(dense[3:5], rel=1e-4)
    if dtype == torch.float32:  # what the notebook prints
        assert [round(v, 4) for v in dense] == [0.0948, 0.0948, 0.0948, 0.1052, 0.1052, 0.0]
        assert [round(v, 4) for v in lazy] == [0.0, 0.0, 0.0, 0.1052, 0.1052, 0.0]


def test_the_optimizer_decides_sgd_momentum_on_a_sparse_gradient_still_moves_absent_rows():
    embedding, moves = train_embedding(True, partial(torch.optim.SGD, lr=0.1, momentum=0.9))
    assert embedding.weight.grad.is_sparse
    assert embedding.weight.grad.coalesce().indices().tolist() == [[3, 4]]
    assert all(v > 0.02 for v in moves[1][:3].tolist()) and moves[1][5].item() == 0.0
    assert [round(v, 4) for v in moves[1].tolist()] == [0.0214, 0.0374, 0.0371, 0.076, 0.0599, 0.0]


def test_plain_adam_refuses_sparse_gradients():
    with pytest.raises(RuntimeError, match="SparseAdam"):
        train_embedding(True, partial(torch.optim.Adam, lr=0.1))


# ---- section 5: when a gradient is really None ----------------------------------------------------------------
def heads():
    torch.manual_seed(0)
    return [torch.nn.Linear(4, n, dtype=torch.float64).to(device) for n in (4, 1, 1)]


def test_a_head_that_does_not_run_gets_none_one_that_runs_with_weight_zero_gets_zeros():
    X, y = regression()
    trunk, head_a, head_b = heads()
    features = torch.tanh(trunk(X))
    torch.nn.functional.mse_loss(head_a(features), y).backward(retain_graph=True)
    assert head_b.weight.grad is None and head_a.weight.grad is not None
    (torch.nn.functional.mse_loss(head_a(features), y)
     + 0.0 * torch.nn.functional.mse_loss(head_b(features), y)).backward()
    assert head_b.weight.grad is not None and torch.count_nonzero(head_b.weight.grad) == 0


def test_a_task_with_no_labels_in_the_batch_also_gets_zeros_not_none():
    X, y = regression()
    trunk, head_a, head_b = heads()
    features = torch.tanh(trunk(X))
    no_labels = torch.zeros(len(X), dtype=torch.bool, device=device)
    loss_b = torch.nn.functional.mse_loss(head_b(features)[no_labels], y[no_labels])
    assert math.isnan(loss_b.item())  # a mean over no samples
    (torch.nn.functional.mse_loss(head_a(features), y) + loss_b).backward()
    assert head_b.weight.grad is not None and torch.count_nonzero(head_b.weight.grad) == 0


def test_adam_steps_on_a_zero_gradient_head_with_history_and_skips_a_none_one():
    X, y = regression()
    for set_to_none, moves in ((False, True), (True, False)):
        trunk, head_a, head_b = heads()
        optimizer = torch.optim.Adam([*trunk.parameters(), *head_a.parameters(), *head_b.parameters()], lr=0.1)
        for step in range(3):
            optimizer.zero_grad(set_to_none=set_to_none)
            features = torch.tanh(trunk(X))
            loss = torch.nn.functional.mse_loss(head_a(features), y)
            if step < 2:  # head B trains, then its task stops
                loss = loss + torch.nn.functional.mse_loss(head_b(features), y)
            before = head_b.weight.detach().clone()
            loss.backward()
            optimizer.step()
        assert (not torch.equal(head_b.weight.detach(), before)) is moves


# ---- section 6: frozen parameters outside the optimizer ---------------------------------------------------------
def frozen_run(zero_grad_first=False, really_frozen=False, num_steps=20):
    X, y = regression()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model = model.to(device=device, dtype=torch.float64)
    backbone, head = model[0], model[2]
    if really_frozen:
        backbone.requires_grad_(False)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.05)

    def step():
        if zero_grad_first:
            optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        optimizer.step()
        if not zero_grad_first:
            optimizer.zero_grad()

    for _ in range(num_steps):
        step()
    return model, optimizer, step


def test_a_backbone_left_out_of_the_optimizer_piles_up_grad():
    X, y = regression()
    model, _, _ = frozen_run()
    (one_step,) = torch.autograd.grad(torch.nn.functional.mse_loss(model(X), y), model[0].weight)
    ratio = (model[0].weight.grad.norm() / one_step.norm()).item()
    assert round(ratio, 1) == 26.9  # as printed
    assert model[0].weight.grad is not None and model[0].bias.grad is not None  # memory kept
    model_first, _, _ = frozen_run(zero_grad_first=True)
    torch.testing.assert_close(model_first[0].weight.grad, model[0].weight.grad)  # either placement piles


def unfreeze_and_step(model, optimizer, step):
    X, y = regression()
    backbone = model[0]
    (one_step,) = torch.autograd.grad(torch.nn.functional.mse_loss(model(X), y), backbone.weight)
    optimizer.add_param_group({"params": backbone.parameters()})
    before = backbone.weight.detach().clone()
    step()
    return ((backbone.weight.detach() - before).norm() / (0.05 * one_step.norm())).item()


def test_unfreezing_in_a_zero_grad_last_loop_steps_along_the_pile_and_zero_grad_first_does_not():
    assert round(unfreeze_and_step(*frozen_run()), 1) == 27.7  # as printed
    assert round(unfreeze_and_step(*frozen_run(zero_grad_first=True)), 6) == 1.0  # cleared just in time


def test_requires_grad_false_freezes_for_real_and_model_zero_grad_also_clears():
    model, _, _ = frozen_run(really_frozen=True)
    assert model[0].weight.grad is None and model[0].bias.grad is None
    model, _, _ = frozen_run()
    model.zero_grad()
    assert model[0].weight.grad is None


def test_sgds_momentum_buffer_remembers_the_rows_of_earlier_steps():
    embedding, _ = train_embedding(True, partial(torch.optim.SGD, lr=0.1, momentum=0.9))
    # the optimizer of train_embedding is gone; run the two steps again and read its state
    optimizer = torch.optim.SGD(embedding.parameters(), lr=0.1, momentum=0.9)
    for words in ([0, 1, 2], [3, 4]):
        optimizer.zero_grad()
        embedding(torch.tensor(words, device=device)).sum().backward()
        optimizer.step()
    buffer = optimizer.state[embedding.weight]["momentum_buffer"].coalesce()
    assert buffer.indices().flatten().tolist() == [0, 1, 2, 3, 4]  # word 5 never seen, never moved


# ---- claims narrowed by review (issue 12's fact-check) ---------------------------------------------------------
def test_the_computed_gradient_becomes_grad_only_when_nothing_else_holds_it():
    """"With None, it does not even copy (as long as nothing else holds the gradient it computed)":
    a hook that keeps the computed gradient makes backward() copy it into .grad instead."""
    for keep in (False, True):
        w = torch.randn(256, 256, generator=make_generator(10), requires_grad=True)
        held, seen = [], []

        def hook(grad, keep=keep):
            seen.append(grad.data_ptr())
            if keep:
                held.append(grad)  # another reference to the computed gradient

        w.register_hook(hook)
        (w * 2.0).sum().backward()
        assert (w.grad.data_ptr() == seen[0]) is (not keep)


def heads_job(rank, world_size, runs_b_on):
    """Each process runs head A; head B only on the ranks in `runs_b_on`. Returns head B's .grad."""
    torch.manual_seed(0)  # the same initial weights on every rank

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)

        def forward(self, x, run_b):
            features = torch.tanh(self.trunk(x))
            return self.a(features) + (self.b(features) if run_b else 0.0)

    model = torch.nn.parallel.DistributedDataParallel(TwoHeads(), find_unused_parameters=True)
    x = torch.randn(8, 4, generator=make_generator(20 + rank))
    model(x, run_b=rank in runs_b_on).sum().backward()
    grad = model.module.b.weight.grad
    return None if grad is None else grad.clone()


def test_under_ddp_a_head_that_ran_in_another_process_gets_a_gradient_not_none():
    """Section 5's "None means no path from this step's loss", held to several processes: under
    DistributedDataParallel a head that did not run here gets the other process's gradient."""
    from utils.launcher import run_job

    only_rank_0 = run_job(heads_job, 2, args=((0,),), timeout=120)
    assert only_rank_0[1] is not None and torch.count_nonzero(only_rank_0[1]) > 0
    torch.testing.assert_close(only_rank_0[0], only_rank_0[1])  # averaged: the same on both
    nowhere = run_job(heads_job, 2, args=((),), timeout=120)
    assert nowhere == [None, None]


def test_the_pile_is_more_than_20_steps_because_the_early_gradients_were_larger():
    X, y = regression()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model = model.to(device=device, dtype=torch.float64)
    optimizer = torch.optim.SGD(model[2].parameters(), lr=0.05)
    norms = []
    for _ in range(20):
        (g,) = torch.autograd.grad(torch.nn.functional.mse_loss(model(X), y), model[0].weight)
        norms.append(g.norm().item())
        torch.nn.functional.mse_loss(model(X), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    (now,) = torch.autograd.grad(torch.nn.functional.mse_loss(model(X), y), model[0].weight)
    assert model[0].weight.grad.norm() / now.norm() > 20
    assert norms[0] > 1.5 * now.norm().item() and all(b < a for a, b in zip(norms, norms[1:]))


def test_five_rounds_each_all_in_one_order_happens_by_chance_about_1_time_in_126():
    from itertools import combinations

    ranks = range(10)
    one_order = sum(1 for a in combinations(ranks, 5) if max(a) < min(set(ranks) - set(a))
                    or min(a) > max(set(ranks) - set(a)))
    splits = sum(1 for _ in combinations(ranks, 5))
    assert (one_order, splits) == (2, 252) and splits // one_order == 126


def test_the_timing_cells_refill_gives_both_zero_grad_calls_work(big_model):
    model, X, y, optimizer = big_model
    kept = [torch.ones_like(p) for p in model.parameters()]
    for set_to_none in (False, True):
        for p, grad in zip(model.parameters(), kept):
            p.grad = grad
        optimizer.zero_grad(set_to_none=set_to_none)
        if set_to_none:
            assert all(p.grad is None for p in model.parameters())  # 6 references dropped
        else:
            assert all(torch.count_nonzero(k) == 0 for k in kept)  # 12.6 MB of zeros written


def test_with_tied_weights_every_row_gets_a_dense_gradient_and_sparse_adam_refuses_it():
    """Section 4's "absent rows get zeros" holds for a lookup; a tied output layer reaches every row."""
    tied = torch.nn.Embedding(6, 2, sparse=True)
    with torch.no_grad():
        tied.weight.copy_(torch.randn(6, 2, generator=make_generator(6)))
    tied = tied.to(device)
    words = torch.tensor([0, 1, 2], device=device)
    torch.nn.functional.cross_entropy(tied(words) @ tied.weight.T, (words + 1) % 6).backward()
    grad = tied.weight.grad
    assert not grad.is_sparse and bool((grad.norm(dim=1) > 0).all())  # rows 3, 4, 5 too
    with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
        torch.optim.SparseAdam(tied.parameters(), lr=0.1).step()
    lookup = torch.nn.Embedding(6, 2, sparse=True).to(device)
    lookup(words).sum().backward()
    assert lookup.weight.grad.is_sparse  # without the tied output layer: sparse, rows 0-2 only


def test_in_float16_adam_turns_a_never_seen_row_into_nan_float32_and_bfloat16_leave_it():
    """Section 4's aside: eps = 1e-8 rounds to 0 in float16, so m = v = 0 gives 0/0."""
    assert torch.tensor(1e-8, dtype=torch.float16).item() == 0.0
    assert torch.tensor(1e-8, dtype=torch.bfloat16).item() > 0.0
    half, _ = train_embedding(False, partial(torch.optim.Adam, lr=0.1), torch.float16)
    assert torch.isnan(half.weight[5]).all()
    for dtype in (torch.float32, torch.bfloat16):
        embedding, moves = train_embedding(False, partial(torch.optim.Adam, lr=0.1), dtype)
        assert torch.isfinite(embedding.weight).all() and moves[1][5].item() == 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model = torch.nn.Linear(2, 2)
        model(torch.ones(1, 2))
    assert model.weight.dtype == torch.float32  # mixed precision leaves the weights in float32


def test_the_rule_holds_for_muon_and_for_sparse_adam_row_by_row():
    """Muon (2-D parameters only) keeps a momentum buffer and decays the weights: zeros move it.
    SparseAdam steps only the rows its sparse gradient stores: a stored row of zeros moves (its m
    remembers), while a zeroed sparse gradient stores no row, and nothing moves."""
    gen = make_generator(9)
    used, unused = (torch.randn(3, 3, generator=gen).requires_grad_() for _ in range(2))
    optimizer = torch.optim.Muon([used, unused], lr=0.1)
    for step in range(3):
        optimizer.zero_grad(set_to_none=False)
        before = unused.detach().clone()
        ((used**2).sum() + ((unused**2).sum() if step < 2 else 0.0)).backward()
        optimizer.step()
    assert not torch.equal(unused.detach(), before)

    def sparse_adam_moves(third_step_weight):
        embedding, other = torch.nn.Embedding(4, 2, sparse=True), torch.nn.Embedding(4, 2, sparse=True)
        optimizer = torch.optim.SparseAdam([*embedding.parameters(), *other.parameters()], lr=0.1)
        for step in range(3):
            optimizer.zero_grad(set_to_none=False)
            before = other.weight.detach().clone()
            loss = embedding(torch.tensor([0])).sum()
            if step < 2 or third_step_weight is not None:
                loss = loss + (1.0 if step < 2 else third_step_weight) * other(torch.tensor([1])).sum()
            loss.backward()
            optimizer.step()
        return not torch.equal(other.weight.detach(), before), other.weight.grad._nnz()

    assert sparse_adam_moves(0.0) == (True, 1)  # row 1 stored, all zeros: m moves it
    assert sparse_adam_moves(None) == (False, 0)  # zeroed in place: no row stored
