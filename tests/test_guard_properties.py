"""utils.guard: random loops, their verdict worked out from their description (property-based).

A random loop is a list of operations (backward on some heads, a clear of some kind, a clip,
a step); a small interpreter tracks, for each parameter, which steps' contributions its
`.grad` holds, and says which (step, warning class) pairs a correct guard reports.
"""

from __future__ import annotations

import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_guard import DISCARDED, OPTIMIZERS, STALE, TwoHeads, _state, make

from utils.guard import ZeroGradGuard

HEAD_SETS = [(0,), (1,), (0, 1)]
PARAM_HEAD = [None, None, 0, 0, 1, 1]  # which head each parameter belongs to (None: the body)


def apply(op: tuple, model: TwoHeads, optimizer: torch.optim.Optimizer, counter: list[int]) -> None:
    """Carry out one operation of a loop's description."""
    params = list(model.parameters())
    kind = op[0]
    if kind == "backward":
        counter[0] += 1
        model.loss(counter[0], heads=op[1]).backward()
    elif kind == "zero":
        method, subset = op[1], op[2]
        if method == "optimizer":
            optimizer.zero_grad(set_to_none=op[3])
        elif method == "model":
            [model.body, model.heads[0], model.heads[1], model][subset].zero_grad(set_to_none=op[3])
        else:
            for i in subset:
                if method == "none":
                    params[i].grad = None
                elif params[i].grad is not None:
                    params[i].grad.zero_()
    elif kind == "clip":
        if all(p.grad is None for p in params):
            return  # clip_grad_value_ fails on a list without gradients (torch 2.13)
        if op[1] == "norm":
            torch.nn.utils.clip_grad_norm_(params, max_norm=0.01)
        elif op[1] == "value":
            torch.nn.utils.clip_grad_value_(params, clip_value=0.01)
        else:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(0.5)
    elif kind == "step":
        optimizer.step()


def zeroed_params(op: tuple) -> tuple[list[int], bool]:
    """Which parameters a zero operation clears, and whether it sets them to None."""
    method, subset = op[1], op[2]
    if method == "optimizer":
        return list(range(6)), op[3]
    if method == "model":
        members = [[0, 1], [2, 3], [4, 5], list(range(6))][subset]
        return members, op[3]
    return list(subset), method == "none"


def expected_findings(ops: list[tuple], leftover: bool) -> list[tuple[int, type]]:
    """Interpret a loop's description: the (step, warning class) pairs a correct guard reports.

    Each parameter's `.grad` is None or the set of contributions it holds, each a pair
    (window, from backward()); window w is the stretch between step w and step w + 1 (-1:
    before the guard started). The rules are the guard's documented ones: zero_grad() (of
    the optimizer or of a module) and `p.grad = None` clear; zeroing by hand in place empties
    `.grad` but loses nothing (it looks like masking); an in-place change with no backward()
    since the last step makes `.grad` hold gradients set by hand in this window, which a step
    uses but whose clearing loses nothing. The guard looks at `.grad` only at backward(),
    zero_grad() and step(): zeroed in place by hand, then set to None by hand with none of
    those between, a gradient counts as cleared from what the guard saw last (`unseen`).
    `p.grad = None` by hand for a parameter that is still None at the next step, while that
    step uses new contributions to other parameters, freezes it for the step (DINO's
    cancel_gradients_last_layer): that clear loses nothing.
    """
    grads: list[set | None] = [None] * 6
    if leftover:
        grads = [{(-1, True)}] * 6
    unseen = [False] * 6  # zeroed in place by hand since the guard last looked, with new contributions
    fresh = [False] * 6  # backward() added to it since the last step or a clear the guard saw
    window, lost, by_hand, findings = 0, False, set(), []
    for op in ops:
        if op[0] == "backward":
            for i in range(6):
                if PARAM_HEAD[i] is None or PARAM_HEAD[i] in op[1]:
                    grads[i] = (grads[i] or set()) | {(window, True)}
                    unseen[i], fresh[i] = False, True
        elif op[0] == "zero":
            members, to_none = zeroed_params(op)
            for i in members:
                new = grads[i] is not None and (window, True) in grads[i]
                if op[1] == "in place":  # by hand: looks like masking
                    unseen[i] = unseen[i] or new
                elif op[1] == "none" and (new or unseen[i]):
                    by_hand.add(i)  # lost, unless it stays None until a step that uses other gradients
                elif new:
                    lost = True  # contributions since the last step, thrown away by a clear
                if op[1] != "in place":
                    unseen[i] = False
                    fresh[i] = False  # a clear the guard sees
                grads[i] = None if to_none or grads[i] is None else set()
        elif op[0] == "clip":
            for i in range(6):
                if grads[i] and all(w < window for w, _ in grads[i]):
                    grads[i] = {(window, False)}  # changed with no backward() since the step: set by hand
        elif op[0] == "step":
            unseen = [False] * 6
            frozen = any(fresh) and all(grads[i] is None for i in by_hand)
            if lost or (by_hand and not frozen):
                findings.append((window + 1, DISCARDED))
            if any(g is not None and any(w < window for w, _ in g) for g in grads):
                findings.append((window + 1, STALE))
            window, lost, by_hand, fresh = window + 1, False, set(), [False] * 6
    if lost or by_hand:
        findings.append((window, DISCARDED))
    return findings


subsets = st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True).map(tuple)
backward_op = st.tuples(st.just("backward"), st.sampled_from(HEAD_SETS))
zero_op = st.one_of(
    st.tuples(st.just("zero"), st.just("optimizer"), st.just(()), st.booleans()),
    st.tuples(st.just("zero"), st.just("model"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("zero"), st.sampled_from(["none", "in place"]), subsets),
)
clip_op = st.tuples(st.just("clip"), st.sampled_from(["norm", "value", "scale"]))
step_op = st.just(("step",))
any_op = st.one_of(backward_op, backward_op, zero_op, clip_op, step_op, step_op)


@st.composite
def structured_loops(draw) -> list[tuple]:
    """A loop as people write it: windows of backward() calls, zeroing at one chosen place."""
    num_steps = draw(st.integers(1, 4))
    window = draw(st.integers(1, 3))  # gradient_accumulation_steps
    where = draw(st.sampled_from(["before window", "after step", "before every backward",
                                  "between backward and step", "never"]))
    zero = draw(zero_op)
    zero_on = draw(st.lists(st.booleans(), min_size=num_steps, max_size=num_steps))  # only some steps?
    if draw(st.booleans()):
        zero_on = [True] * num_steps
    clip = draw(st.one_of(st.none(), clip_op))
    heads = draw(st.lists(st.sampled_from(HEAD_SETS), min_size=num_steps * window,
                          max_size=num_steps * window))
    ops: list[tuple] = []
    for s in range(num_steps):
        if where == "before window" and zero_on[s]:
            ops.append(zero)
        for k in range(window):
            if where == "before every backward" and zero_on[s]:
                ops.append(zero)
            ops.append(("backward", heads[s * window + k]))
        if where == "between backward and step" and zero_on[s]:
            ops.append(zero)
        if clip is not None:
            ops.append(clip)
        ops.append(("step",))
        if where == "after step" and zero_on[s]:
            ops.append(zero)
    return ops


def check_loop(ops: list[tuple], optimizer: tuple[str, dict], leftover: bool) -> None:
    name, kwargs = optimizer
    results = []
    for guarded in (True, False):
        model, opt = make(name, **kwargs)
        counter = [0]
        if leftover:
            model.loss(0).backward()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            guard = ZeroGradGuard(opt, model=model, max_warnings=None) if guarded else None
            for op in ops:
                apply(op, model, opt, counter)
            if guard is not None:
                guard.remove()
        results.append(_state(model, opt))
        if guarded:
            expected = expected_findings(ops, leftover)
            assert [(f.step, f.kind) for f in guard.findings] == expected, ops
            assert [w.category for w in caught] == [kind for _, kind in expected]
    assert all(torch.equal(a, b) for a, b in zip(*results))  # the guard changed no number


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=structured_loops(), optimizer=st.sampled_from(OPTIMIZERS), leftover=st.booleans())
def test_property_structured_loops(ops, optimizer, leftover):
    check_loop(ops, optimizer, leftover)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(any_op, max_size=16), optimizer=st.sampled_from(OPTIMIZERS), leftover=st.booleans())
def test_property_any_sequence_of_operations(ops, optimizer, leftover):
    check_loop(ops, optimizer, leftover)


def test_the_interpreter_itself_on_hand_worked_examples():
    b, s = ("backward", (0, 1)), ("step",)
    z = ("zero", "optimizer", (), True)
    assert expected_findings([z, b, s, z, b, s], False) == []
    assert expected_findings([b, s, b, s], False) == [(2, STALE)]
    assert expected_findings([b, z, s], False) == [(1, DISCARDED)]
    assert expected_findings([b, z, b, s], False) == [(1, DISCARDED)]
    assert expected_findings([b, s, b, z], False) == [(1, DISCARDED)]
    assert expected_findings([b, s], True) == [(1, STALE)]
    assert expected_findings([("backward", (0,)), s, ("backward", (1,)), s], False) == [(2, STALE)]
    clear_head1 = ("zero", "none", (4, 5))
    assert expected_findings([b, s, ("zero", "model", 0, True), clear_head1, ("backward", (0,)), s],
                             False) == [(2, STALE)]
    body_none = ("zero", "none", (0, 1))  # frozen for this step by hand (DINO), or lost:
    assert expected_findings([b, body_none, s], False) == []  # the heads' new gradients are used
    assert expected_findings([b, body_none, b, s], False) == [(1, DISCARDED)]  # refilled: lost
    assert expected_findings([b, ("zero", "none", tuple(range(6))), s], False) == [(1, DISCARDED)]
    assert expected_findings([z, b, s, body_none], False) == []  # after the step: nothing new lost
    assert expected_findings([b, s, b, body_none], False) == [(1, DISCARDED)]  # at the end: no step
