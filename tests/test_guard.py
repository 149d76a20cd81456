"""utils.guard: ZeroGradGuard is silent on every correct loop and names each buggy one.

A zoo of loops, correct and buggy, across SGD, Adam and AdamW (plain, foreach, fused), with
the messages, the lines they point at, names, bad input and the hooks left behind. Random
loops are in test_guard_properties.py, the issue's cases in test_guard_cases.py, loops in
the style of public training code in test_guard_loops.py.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch.optim.optimizer import _global_optimizer_post_hooks

from utils.guard import (
    DiscardedGradientWarning,
    StaleGradientWarning,
    ZeroGradGuard,
    ZeroGradWarning,
)

STALE, DISCARDED = StaleGradientWarning, DiscardedGradientWarning


def _fused_works(name: str) -> bool:
    try:
        p = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
        p.grad = torch.ones_like(p)
        getattr(torch.optim, name)([p], lr=0.1, fused=True).step()
        return True
    except (RuntimeError, ValueError):
        return False


OPTIMIZERS = [
    ("SGD", {}),
    ("SGD", {"momentum": 0.9, "foreach": True}),
    ("Adam", {"foreach": False}),
    ("Adam", {"foreach": True}),
    ("AdamW", {"foreach": True, "weight_decay": 0.1}),
]
OPTIMIZERS += [(name, {"fused": True}) for name in ("SGD", "Adam", "AdamW") if _fused_works(name)]
OPTIMIZER_IDS = [f"{name}-{'-'.join(k for k in kw) or 'plain'}" for name, kw in OPTIMIZERS]


def test_fused_is_tested_where_torch_supports_it():
    assert [name for name, kw in OPTIMIZERS if "fused" in kw] == ["SGD", "Adam", "AdamW"]


# -- a small model with a shared body and two heads, so some parameters get no gradient ----------
class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(3, 4)
        self.heads = torch.nn.ModuleList([torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)])

    def loss(self, micro_batch: int, heads: tuple[int, ...] = (0, 1)) -> torch.Tensor:
        generator = torch.Generator().manual_seed(1000 + micro_batch)
        X = torch.randn(5, 3, generator=generator, dtype=torch.float64)
        y = torch.randn(5, 2, generator=generator, dtype=torch.float64)
        hidden = torch.tanh(self.body(X))
        return sum(((self.heads[h](hidden)[:, 0] - y[:, h]) ** 2).mean() for h in heads)


def make(name: str = "SGD", seed: int = 0, **kwargs) -> tuple[TwoHeads, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = TwoHeads().double()
    return model, getattr(torch.optim, name)(model.parameters(), lr=0.01, **kwargs)


NAMES = ["body.weight", "body.bias", "heads.0.weight", "heads.0.bias", "heads.1.weight", "heads.1.bias"]


def run(loop, name="SGD", kwargs=None, *, guard=True, max_warnings=None, model_and_optimizer=None):
    """Run `loop(model, optimizer)`, guarded or not: (model, optimizer, guard, caught warnings)."""
    model, optimizer = model_and_optimizer or make(name, **(kwargs or {}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if guard:
            with ZeroGradGuard(optimizer, model=model, max_warnings=max_warnings) as g:
                loop(model, optimizer)
        else:
            g = None
            loop(model, optimizer)
    return model, optimizer, g, [w for w in caught if issubclass(w.category, ZeroGradWarning)]


# -- the zoo: correct loops ------------------------------------------------------------------------
def zero_first(m, o):
    for i in range(4):
        o.zero_grad()
        m.loss(i).backward()
        o.step()


def zero_after_step_in_place(m, o):
    for i in range(4):
        m.loss(i).backward()
        o.step()
        o.zero_grad(set_to_none=False)


def zero_first_in_place(m, o):
    for i in range(4):
        o.zero_grad(set_to_none=False)
        m.loss(i).backward()
        o.step()


def grad_none_by_hand(m, o):
    for i in range(4):
        for p in m.parameters():
            p.grad = None
        m.loss(i).backward()
        o.step()


def grad_zero_by_hand(m, o):
    for i in range(4):
        m.loss(i).backward()
        o.step()
        for p in m.parameters():
            p.grad.zero_()


def data_zero_before_forward(m, o):  # the old style: W.grad.data.zero_()
    for i in range(4):
        for p in m.parameters():
            if p.grad is not None:
                p.grad.data.zero_()
        m.loss(i).backward()
        o.step()


def model_zero_grad(m, o):
    for i in range(4):
        m.zero_grad()
        m.loss(i).backward()
        o.step()


def model_zero_grad_in_place_after_step(m, o):
    for i in range(4):
        m.loss(i).backward()
        o.step()
        m.zero_grad(set_to_none=False)


def accumulate_zero_after_step(m, o):
    for i in range(9):
        (m.loss(i) / 3).backward()
        if (i + 1) % 3 == 0:
            o.step()
            o.zero_grad()


def accumulate_zero_at_window_start(m, o):
    for i in range(8):
        if i % 2 == 0:
            o.zero_grad(set_to_none=False)
        (m.loss(i) / 2).backward()
        if i % 2 == 1:
            o.step()


def several_backward_per_step(m, o):
    for i in range(4):
        o.zero_grad()
        m.loss(i, heads=(0,)).backward()
        m.loss(i, heads=(1,)).backward()
        loss = m.loss(i + 10)
        loss.backward(retain_graph=True)
        loss.backward()
        o.step()


def clip_norm_before_step(m, o):
    for i in range(4):
        o.zero_grad()
        m.loss(i).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), max_norm=0.01)
        o.step()


def clip_value_before_step_in_place_zeroing(m, o):
    for i in range(4):
        o.zero_grad(set_to_none=False)
        m.loss(i).backward()
        torch.nn.utils.clip_grad_value_(m.parameters(), clip_value=0.01)
        o.step()


def unscale_in_place_before_step(m, o):
    for i in range(4):
        o.zero_grad()
        (1024 * m.loss(i)).backward()
        for p in m.parameters():
            p.grad.mul_(1 / 1024)  # what GradScaler.unscale_ does
        o.step()


def a_head_without_gradient_on_some_steps(m, o):
    for i in range(6):
        o.zero_grad()
        m.loss(i, heads=(i % 2,)).backward()
        o.step()


def a_head_without_gradient_in_place_zeroing(m, o):
    for i in range(6):
        o.zero_grad(set_to_none=False)
        m.loss(i, heads=(0,) if i < 3 else (0, 1)).backward()
        o.step()


def functional_gradients_assigned(m, o):  # never zero_grad: each step assigns new tensors
    params = list(m.parameters())
    for i in range(4):
        grads = torch.autograd.grad(m.loss(i), params)
        for p, g in zip(params, grads):
            p.grad = g
        o.step()


def inspect_with_autograd_grad(m, o):  # torch.autograd.grad leaves .grad alone
    for i in range(4):
        o.zero_grad()
        m.loss(i).backward()
        torch.autograd.grad(m.loss(i + 10), list(m.parameters()))
        o.step()


def create_graph_penalty(m, o):  # double backward: accumulation makes new tensors
    for i in range(4):
        o.zero_grad()
        loss = m.loss(i)
        (grad,) = torch.autograd.grad(loss, m.body.weight, create_graph=True)
        (loss + grad.pow(2).sum()).backward()
        o.step()


def step_without_any_backward_first(m, o):
    o.step()
    zero_first(m, o)


CORRECT = [zero_first, zero_after_step_in_place, zero_first_in_place, grad_none_by_hand, grad_zero_by_hand,
           data_zero_before_forward, model_zero_grad, model_zero_grad_in_place_after_step,
           accumulate_zero_after_step, accumulate_zero_at_window_start, several_backward_per_step,
           clip_norm_before_step, clip_value_before_step_in_place_zeroing, unscale_in_place_before_step,
           a_head_without_gradient_on_some_steps, a_head_without_gradient_in_place_zeroing,
           functional_gradients_assigned, inspect_with_autograd_grad, create_graph_penalty,
           step_without_any_backward_first]


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=OPTIMIZER_IDS)
@pytest.mark.parametrize("loop", CORRECT, ids=lambda f: f.__name__)
def test_silent_on_correct_loops(loop, optimizer):
    _, _, guard, caught = run(loop, *optimizer)
    assert [str(w.message) for w in caught] == []
    assert guard.findings == []
    assert guard.steps > 0


# -- the zoo: buggy loops --------------------------------------------------------------------------
def forgot_zero_grad(m, o):
    for i in range(4):
        m.loss(i).backward()
        o.step()


def zero_grad_on_every_other_step(m, o):
    for i in range(4):
        if i % 2 == 0:
            o.zero_grad()
        m.loss(i).backward()
        o.step()


def zero_only_the_heads(m, o):
    for i in range(4):
        m.heads.zero_grad()
        m.loss(i).backward()
        o.step()


def zero_only_some_params_by_hand(m, o):
    for i in range(4):
        for p in list(m.parameters())[2:]:
            p.grad = None
        m.loss(i).backward()
        o.step()


def step_twice(m, o):
    for i in range(3):
        o.zero_grad()
        m.loss(i).backward()
        o.step()
        o.step()


def accumulate_without_zero_grad(m, o):
    for i in range(6):
        (m.loss(i) / 2).backward()
        if i % 2 == 1:
            o.step()


def zero_only_the_active_task(m, o):  # the idle head keeps its old gradient; the step applies it
    for i in range(4):
        m.body.zero_grad()
        m.heads[i % 2].zero_grad()
        m.loss(i, heads=(i % 2,)).backward()
        o.step()


def zero_between_backward_and_step(m, o):
    for i in range(4):
        m.loss(i).backward()
        o.zero_grad()
        o.step()


def zero_in_place_between_backward_and_step(m, o):
    for i in range(4):
        m.loss(i).backward()
        o.zero_grad(set_to_none=False)
        o.step()


def grad_none_by_hand_between_backward_and_step(m, o):
    for i in range(4):
        m.loss(i).backward()
        for p in m.parameters():
            p.grad = None
        o.step()


def zero_inside_accumulation_window(m, o):
    for i in range(8):
        o.zero_grad()
        (m.loss(i) / 2).backward()
        if i % 2 == 1:
            o.step()


def zero_after_last_backward_without_step(m, o):
    zero_first(m, o)
    m.loss(99).backward()
    o.zero_grad()


# (loop, the warnings' classes in order, the step of the first finding, names in its message)
BUGGY = [
    (forgot_zero_grad, [STALE] * 3, 2, NAMES),
    (zero_grad_on_every_other_step, [STALE] * 2, 2, NAMES),
    (zero_only_the_heads, [STALE] * 3, 2, NAMES[:2]),
    (zero_only_some_params_by_hand, [STALE] * 3, 2, NAMES[:2]),
    (step_twice, [STALE] * 3, 2, NAMES),
    (accumulate_without_zero_grad, [STALE] * 2, 2, NAMES),
    (zero_only_the_active_task, [STALE] * 3, 2, NAMES[2:4]),
    (zero_between_backward_and_step, [DISCARDED] * 4, 1, NAMES),
    (zero_in_place_between_backward_and_step, [DISCARDED] * 4, 1, NAMES),
    (grad_none_by_hand_between_backward_and_step, [DISCARDED] * 4, 1, NAMES),
    (zero_inside_accumulation_window, [DISCARDED] * 4, 1, NAMES),
    (zero_after_last_backward_without_step, [DISCARDED], 4, NAMES),
]


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=OPTIMIZER_IDS)
@pytest.mark.parametrize("loop, kinds, first, names", BUGGY, ids=[b[0].__name__ for b in BUGGY])
def test_warns_on_buggy_loops_with_the_right_class(loop, kinds, first, names, optimizer):
    _, _, guard, caught = run(loop, *optimizer)
    assert [w.category for w in caught] == kinds
    assert [f.kind for f in guard.findings] == kinds
    assert guard.findings[0].step == first
    message = str(caught[0].message)
    assert message.startswith(f"step {first}:") or message.startswith(f"after step {first}:")
    assert list(guard.findings[0].names) == names
    for name in names[:4]:  # the message names four, then says how many more
        assert name in message
    assert f"{len(names)} of 6 parameters" in message


def test_messages_say_what_was_probably_forgotten_and_the_fix():
    stale = str(run(forgot_zero_grad)[3][0].message)
    assert stale.startswith("step 2: optimizer.step() is about to use .grad that still holds gradients "
                            "that step 1 already used, in 6 of 6 parameters (body.weight, body.bias, "
                            "heads.0.weight, heads.0.bias and 2 more).")
    assert "Probably forgotten: optimizer.zero_grad()." in stale
    assert "Fix: call optimizer.zero_grad() once per step" in stale
    partial = str(run(zero_only_the_heads)[3][0].message)
    assert "in 2 of 6 parameters (body.weight, body.bias)" in partial
    assert "Probably: only some gradients were cleared" in partial
    again = str(run(step_twice)[3][0].message)
    assert "applies the old gradient again" in again
    between = str(run(zero_between_backward_and_step)[3][0].message)
    assert between.startswith("step 1: gradients computed since the guard started were cleared before")
    assert "between loss.backward() and optimizer.step()" in between
    window = [str(w.message) for w in run(zero_inside_accumulation_window)[3]]
    assert window[1].startswith("step 2: gradients computed since step 1 were cleared")
    assert "inside a gradient-accumulation window" in window[1]
    end = str(run(zero_after_last_backward_without_step)[3][0].message)
    assert end.startswith("after step 4: gradients computed since step 4 were cleared")
    assert "after the last backward(), with no step after it" in end
    for message in (stale, partial, between, end, *window):
        assert not re.search(r"0x[0-9a-f]{6,}|/tmp/|/work/|site-packages", message)


def test_gradients_there_before_the_guard_started_are_old():
    model, optimizer = make()
    model.loss(0).backward()  # left over from an earlier cell, say
    _, _, guard, caught = run(zero_after_step_in_place, model_and_optimizer=(model, optimizer))
    assert [w.category for w in caught] == [STALE]
    assert str(caught[0].message).startswith("step 1: optimizer.step() is about to use .grad that still "
                                             "holds gradients that were there before the guard started")
    model, optimizer = make()
    model.loss(0).backward()
    assert run(zero_first, model_and_optimizer=(model, optimizer))[3] == []


def test_at_most_one_warning_per_class_per_step_and_a_cap():
    def both_at_once(m, o):  # heads cleared after backward (discarded), body never cleared (stale)
        for i in range(5):
            m.loss(i).backward()
            m.heads.zero_grad()
            o.step()

    _, _, guard, caught = run(both_at_once)
    steps = [(f.step, f.kind) for f in guard.findings]
    assert len(steps) == len(set(steps))
    assert {f.kind for f in guard.findings if f.step == 2} == {STALE, DISCARDED}
    _, _, capped, shown = run(forgot_zero_grad, max_warnings=1)
    assert len(shown) == 1 and len(capped.findings) == 3
    assert "Further StaleGradientWarnings are not shown; guard.findings lists them all." in str(shown[0].message)
    assert len(run(forgot_zero_grad, max_warnings=0)[3]) == 0
    _, _, default, shown = run(lambda m, o: [forgot_zero_grad(m, o) for _ in range(3)], max_warnings=3)
    assert len(shown) == 3 and len(default.findings) == 11


def test_the_warning_points_at_the_line_that_calls_step():
    model, optimizer = make()
    with warnings.catch_warnings(record=True) as caught, ZeroGradGuard(optimizer):
        warnings.simplefilter("always")
        for i in range(2):
            model.loss(i).backward()
            optimizer.step()  # this line
    assert caught[0].filename == __file__
    with open(__file__) as source:
        assert "optimizer.step()  # this line" in source.readlines()[caught[0].lineno - 1]


def test_warnings_are_user_warnings_and_can_become_errors():
    assert issubclass(STALE, UserWarning) and issubclass(DISCARDED, UserWarning)
    assert issubclass(STALE, ZeroGradWarning) and issubclass(DISCARDED, ZeroGradWarning)
    model, optimizer = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroGradWarning)
        with pytest.raises(StaleGradientWarning, match="step 2:"), ZeroGradGuard(optimizer):
            forgot_zero_grad(model, optimizer)
    assert optimizer._optimizer_step_pre_hooks == {}  # the with block removed the hooks on the way out


# -- names -----------------------------------------------------------------------------------------
def test_names_come_from_model_optimizer_or_the_callers_scope():
    torch.manual_seed(0)
    net = TwoHeads().double()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    guard = ZeroGradGuard(optimizer)  # no model=: found as `net` in this function's locals
    assert [r.name for r in guard._records.values()] == NAMES
    guard.remove()
    guard = ZeroGradGuard(optimizer, model=net.heads)  # a sub-module names only its own
    assert [r.name for r in guard._records.values()][2:] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert [r.name for r in guard._records.values()][:2] == ["param_groups[0]['params'][0]",
                                                             "param_groups[0]['params'][1]"]
    guard.remove()
    named = torch.optim.Adam(net.named_parameters(), lr=0.01)  # the optimizer knows the names
    guard = ZeroGradGuard(named, model=None)
    assert [r.name for r in guard._records.values()] == NAMES
    guard.remove()


def _make_guard_without_a_model_in_scope(optimizer):
    return ZeroGradGuard(optimizer)


def test_names_fall_back_to_the_position_in_param_groups():
    optimizer = torch.optim.SGD([{"params": [torch.zeros(2, requires_grad=True)]},
                                 {"params": [torch.zeros(3, requires_grad=True)], "lr": 0.1}], lr=0.01)
    guard = _make_guard_without_a_model_in_scope(optimizer)
    assert [r.name for r in guard._records.values()] == ["param_groups[0]['params'][0]",
                                                         "param_groups[1]['params'][0]"]
    guard.remove()


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [
    (lambda m: m.parameters(), "perhaps model.parameters() or a list of tensors; pass the optimizer itself"),
    (lambda m: list(m.parameters()), "got list, perhaps model.parameters()"),
    (lambda m: m, "got the model (TwoHeads); pass the optimizer that updates it"),
    (lambda m: m.body.weight, "got a Parameter; pass the optimizer"),
    (lambda m: None, "got NoneType; pass the optimizer itself"),
    (lambda m: "SGD", "got str; pass the optimizer itself"),
    (lambda m: torch.optim.SGD, "got type"),
])
def test_bad_input_says_to_pass_the_optimizer(bad, words):
    model, _ = make()
    with pytest.raises(TypeError, match="ZeroGradGuard expects a torch.optim.Optimizer") as error:
        ZeroGradGuard(bad(model))
    assert words in str(error.value)


def test_bad_options():
    model, optimizer = make()
    with pytest.raises(TypeError, match="expected model to be a torch.nn.Module or None, got SGD"):
        ZeroGradGuard(optimizer, model=optimizer)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="expected max_warnings as an int >= 0 or None"):
            ZeroGradGuard(optimizer, max_warnings=bad)
    guard = ZeroGradGuard(optimizer)
    guard.remove()
    guard.remove()  # twice is fine
    with pytest.raises(RuntimeError, match="this ZeroGradGuard was removed; create a new one"):
        with guard:
            pass


# -- no trace left, no effect on the numbers ------------------------------------------------------------
def _hook_counts(model, optimizer):
    params = list(model.parameters())
    return (
        [len(p._backward_hooks or {}) for p in params],
        [len(p._post_accumulate_grad_hooks or {}) for p in params],
        len(optimizer._optimizer_step_pre_hooks),
        len(optimizer._optimizer_step_post_hooks),
        len(_global_optimizer_post_hooks),
    )


def test_removing_the_guard_removes_every_hook_and_keeps_the_users_own():
    model, optimizer = make()
    mine = [model.body.weight.register_hook(lambda g: None),
            model.body.bias.register_post_accumulate_grad_hook(lambda p: None),
            optimizer.register_step_pre_hook(lambda *a: None)]
    before = _hook_counts(model, optimizer)
    guard = ZeroGradGuard(optimizer)
    during = _hook_counts(model, optimizer)
    assert during[0] == [n + 1 for n in before[0]] and during[1] == [n + 1 for n in before[1]]
    assert during[2:] == (before[2] + 1, before[3] + 1, before[4] + 1)
    guard.remove()
    assert _hook_counts(model, optimizer) == before
    with ZeroGradGuard(optimizer):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            forgot_zero_grad(model, optimizer)
    assert _hook_counts(model, optimizer) == before
    for handle in mine:
        handle.remove()


def test_hooks_go_even_when_the_loop_raises():
    model, optimizer = make()
    before = _hook_counts(model, optimizer)
    with pytest.raises(ZeroDivisionError), ZeroGradGuard(optimizer):
        model.loss(0).backward()
        1 / 0
    assert _hook_counts(model, optimizer) == before


def _state(model, optimizer):
    tensors = [p.detach().clone() for p in model.parameters()]
    tensors += [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for state in optimizer.state.values():
        tensors += [v.clone() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=OPTIMIZER_IDS)
@pytest.mark.parametrize("loop", [zero_first, clip_norm_before_step, accumulate_zero_after_step,
                                  forgot_zero_grad, zero_in_place_between_backward_and_step],
                         ids=lambda f: f.__name__)
def test_results_are_bit_identical_with_and_without_the_guard(loop, optimizer):
    guarded = _state(*run(loop, *optimizer, guard=True)[:2])
    plain = _state(*run(loop, *optimizer, guard=False)[:2])
    assert len(guarded) == len(plain)
    assert all(torch.equal(a, b) for a, b in zip(guarded, plain))


# -- loops beyond one optimizer and one backward ----------------------------------------------------
def test_two_optimizers_on_one_backward_are_silent():
    model, _ = make()
    body = torch.optim.SGD(model.body.parameters(), lr=0.01)
    heads = torch.optim.Adam(model.heads.parameters(), lr=0.01)
    with warnings.catch_warnings(record=True) as caught, ZeroGradGuard(body), ZeroGradGuard(heads):
        warnings.simplefilter("always")
        for i in range(4):
            model.loss(i).backward()
            body.step()
            heads.step()
            body.zero_grad()
            heads.zero_grad()
    assert caught == []


def _gan(forget_discriminator_zero_grad: bool) -> list[warnings.WarningMessage]:
    """The DCGAN tutorial's loop: the generator's backward() also fills D's .grad, cleared next round."""
    torch.manual_seed(0)
    G, D = torch.nn.Linear(2, 3).double(), torch.nn.Linear(3, 1).double()
    opt_G, opt_D = torch.optim.Adam(G.parameters(), lr=0.01), torch.optim.Adam(D.parameters(), lr=0.01)
    real = torch.randn(8, 3, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught, ZeroGradGuard(opt_D), ZeroGradGuard(opt_G):
        warnings.simplefilter("always")
        for i in range(4):
            noise = torch.randn(8, 2, dtype=torch.float64)
            if not forget_discriminator_zero_grad:
                D.zero_grad()
            softplus = torch.nn.functional.softplus  # the GAN losses, written without sigmoid
            softplus(-D(real)).mean().backward()
            fake = G(noise)
            softplus(D(fake.detach())).mean().backward()
            opt_D.step()
            G.zero_grad()
            softplus(-D(fake)).mean().backward()  # also adds into D's .grad
            opt_G.step()
    return caught


def test_a_gan_loop_is_silent_and_a_forgotten_discriminator_zero_grad_is_not():
    assert _gan(forget_discriminator_zero_grad=False) == []
    caught = _gan(forget_discriminator_zero_grad=True)
    assert {w.category for w in caught} == {STALE}
    assert "in 2 of 2 parameters (weight, bias)" in str(caught[0].message)


def test_a_closure_step_lbfgs_is_silent():
    model, _ = make()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)

    def closure():
        optimizer.zero_grad()
        loss = model.loss(0)
        loss.backward()
        return loss

    with warnings.catch_warnings(record=True) as caught, ZeroGradGuard(optimizer) as guard:
        warnings.simplefilter("always")
        for _ in range(3):
            optimizer.step(closure)
    assert caught == [] and guard.steps == 3


def test_grad_scaler_skipping_an_overflowing_step_is_silent():
    model, optimizer = make()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, backoff_factor=2.0**-100)
    with warnings.catch_warnings(record=True) as caught, ZeroGradGuard(optimizer) as guard:
        warnings.simplefilter("always")
        for i in range(4):
            optimizer.zero_grad()
            scaler.scale(model.loss(i).float() * 1e6).backward()  # the first step overflows
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
    assert caught == []
    assert guard.steps == 3  # one step was skipped


def test_a_zero_gradient_rescaled_in_place_is_not_mistaken_for_zeroing():
    """LoRA starts with B = 0, so A's gradient is exactly zero; clipping then rescales it in place."""
    torch.manual_seed(0)
    A = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    B = torch.nn.Parameter(torch.zeros(2, 1, dtype=torch.float64))
    optimizer = torch.optim.AdamW([A, B], lr=0.01)
    X = torch.randn(8, 3, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught, ZeroGradGuard(optimizer) as guard:
        warnings.simplefilter("always")
        for _ in range(3):
            optimizer.zero_grad(set_to_none=False)
            ((X @ A @ B - 1) ** 2).mean().backward()
            torch.nn.utils.clip_grad_norm_([A, B], 0.5)
            optimizer.step()
    assert caught == [] and guard.steps == 3


def test_sparse_gradients():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    for forget, kinds in ((False, []), (True, [STALE, STALE])):
        embedding.weight.grad = None
        optimizer = torch.optim.SGD(embedding.parameters(), lr=0.1)
        with warnings.catch_warnings(record=True) as caught, ZeroGradGuard(optimizer):
            warnings.simplefilter("always")
            for i in range(3):
                if not forget:
                    optimizer.zero_grad()
                embedding(torch.tensor([i, i + 1])).sum().backward()
                optimizer.step()
        assert [w.category for w in caught] == kinds


def test_parameters_added_or_unfrozen_later_are_watched():
    model, optimizer = make()
    model.heads[1].requires_grad_(False)
    optimizer = torch.optim.SGD(model.body.parameters(), lr=0.01)
    with warnings.catch_warnings(record=True) as caught, ZeroGradGuard(optimizer, model=model) as guard:
        warnings.simplefilter("always")
        zero_first(model, optimizer)
        optimizer.add_param_group({"params": list(model.heads[0].parameters())})
        model.heads[1].requires_grad_(True)
        optimizer.add_param_group({"params": list(model.heads[1].parameters())})
        zero_first(model, optimizer)
        assert caught == []
        forgot_zero_grad(model, optimizer)
    assert len(guard._records) == 6
    assert "6 of 6 parameters" in str(caught[-1].message)


def test_gradients_assigned_by_hand_then_cleared_by_zero_grad_are_discarded():
    """zero_grad() is seen as it happens, so even gradients assigned by hand are seen lost."""
    def assign_then_clear(m, o):
        params = list(m.parameters())
        for i in range(3):
            for p, g in zip(params, torch.autograd.grad(m.loss(i), params)):
                p.grad = g
            o.zero_grad()
            o.step()

    assert [w.category for w in run(assign_then_clear)[3]] == [DISCARDED] * 3


def test_known_limit_gradients_assigned_by_hand_and_cleared_by_hand_unseen():
    """The guard looks at .grad around accumulations, clears and steps: an assignment it never saw is gone."""
    def assign_then_clear_by_hand(m, o):
        params = list(m.parameters())
        for i in range(3):
            for p, g in zip(params, torch.autograd.grad(m.loss(i), params)):
                p.grad = g
            for p in params:
                p.grad = None
            o.step()

    assert run(assign_then_clear_by_hand)[3] == []


def test_known_limit_zeroing_through_data_between_backward_and_step_is_not_seen():
    """`.data` has its own version counter, so `p.grad.data.zero_()` after backward() goes unseen."""
    def data_zero_between(m, o):
        for i in range(3):
            m.loss(i).backward()
            for p in m.parameters():
                p.grad.data.zero_()
            o.step()

    assert run(data_zero_between)[3] == []


# -- robustness: many optimizers, and an error inside the guard --------------------------------------------
def test_optimizers_a_program_drops_are_released_with_their_hooks():
    """A meta-learning loop builds an optimizer per task: each guard goes with its optimizer."""
    from utils.guard import auto

    model, _ = make()
    auto.install()
    try:
        for task in range(50):
            inner = torch.optim.SGD(model.parameters(), lr=0.01)
            inner.zero_grad()
            model.loss(task).backward()
            inner.step()
        del inner
        hooks = [len(p._backward_hooks or {}) for p in model.parameters()]
        alive = sum(g.optimizer is not None for g in auto.guards())
    finally:
        made = auto.uninstall()
    # Python 3.11 keeps a snapshot of this function's variables from when the last optimizer was
    # built (frame.f_locals, read to name the parameters): it can hold the one before it a while.
    assert alive <= 1 and max(hooks) <= 1  # not 50 guards' hooks piled on the parameters
    assert len(made) == 50 and all(g.steps == 1 for g in made) and all(g.findings == [] for g in made)


def test_an_error_inside_the_guard_stops_the_guard_not_the_loop(monkeypatch, capsys):
    import utils.guard.checker as checker

    def broken(grad):
        raise RuntimeError("a bug of the guard's own")

    model, optimizer = make()
    with ZeroGradGuard(optimizer) as guard:
        monkeypatch.setattr(checker, "summary", broken)
        forgot_zero_grad(model, optimizer)  # would need a summary: the guard breaks, the loop runs on
    assert guard.steps == 0 or guard._broken
    assert "utils.guard: stopped checking SGD after an error of its own (RuntimeError: a bug of the " \
           "guard's own); the loop goes on unchecked." in capsys.readouterr().err
    trained, _ = make()
    forgot_zero_grad(trained, torch.optim.SGD(trained.parameters(), lr=0.01))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), trained.parameters()))
