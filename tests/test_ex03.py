"""utils.ex03: the checks of notebook 03 accept right answers, enforce "by hand, no optimizer,
no .data", and explain wrong ones without giving the answer away."""

import json
import warnings
from pathlib import Path

import pytest
import torch

from utils import ex03
from utils.exercises import NOT_YET, RIGHT, reset_tries, tries


def said(capsys):
    """What the checks printed since the last call, with line wraps undone."""
    return " ".join(capsys.readouterr().out.split())


@pytest.fixture(autouse=True)
def fresh_tries():
    reset_tries()
    backward = torch.autograd.backward
    yield
    assert "data" not in torch.Tensor.__dict__  # the .data spy is always removed
    assert torch.autograd.backward is backward  # and the backward() spy


# ---- exercise 1 ---------------------------------------------------------------------------------------------------
def train_manually(W, b, X, y, lr, num_steps):  # the solution
    for _ in range(num_steps):
        loss = ((X @ W + b - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad
        W.grad = None
        b.grad = None


def train_manually_zeroing_in_place(W, b, X, y, lr, num_steps):  # also right
    for _ in range(num_steps):
        if W.grad is not None:
            W.grad.zero_()
            b.grad.zero_()
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            W.add_(W.grad, alpha=-lr)
            b.add_(b.grad, alpha=-lr)


def train_manually_through_detach(W, b, X, y, lr, num_steps):  # also right: detach() shares the counter
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        W.detach().sub_(lr * W.grad)
        b.detach().sub_(lr * b.grad)
        W.grad, b.grad = None, None


def train_manually_as_written(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        W.grad.data.zero_()
        b.grad.data.zero_()
        ((X @ W + b - y) ** 2).mean().backward()
        W -= lr * W.grad.data
        b -= lr * b.grad.data


def train_manually_through_data(W, b, X, y, lr, num_steps):  # runs, and gets the numbers right
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        W.data -= lr * W.grad
        b.data -= lr * b.grad
        W.grad, b.grad = None, None


def train_manually_clearing_through_data(W, b, X, y, lr, num_steps):  # right numbers, .data to clear
    for _ in range(num_steps):
        if W.grad is not None:
            W.grad.data.zero_()
            b.grad.data.zero_()
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad


def train_manually_with_an_optimizer(W, b, X, y, lr, num_steps):  # right numbers, not by hand
    optimizer = torch.optim.SGD([W, b], lr=lr)
    for _ in range(num_steps):
        optimizer.zero_grad()
        ((X @ W + b - y) ** 2).mean().backward()
        optimizer.step()


def train_manually_without_clearing(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad


def train_manually_rebinding(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        W = W - lr * W.grad
        b = b - lr * b.grad


def train_manually_without_no_grad(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        W -= lr * W.grad
        W.grad = None


def train_manually_with_a_vector_loss(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).backward()


def train_manually_with_the_sum(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).sum().backward()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad
        W.grad, b.grad = None, None


def train_manually_one_step_short(W, b, X, y, lr, num_steps):
    train_manually(W, b, X, y, lr, num_steps - 1)


def placeholder(W, b, X, y, lr, num_steps):
    ...


def test_exercise_1_accepts_the_modern_loops(capsys):
    assert ex03.check_manual_loop(train_manually)
    assert ex03.check_manual_loop(train_manually_zeroing_in_place)
    assert ex03.check_manual_loop(train_manually_through_detach)
    out = said(capsys)
    assert out.count(RIGHT) == 3 and "no optimizer, no .data" in out


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (train_manually_as_written, "nothing to clear yet"),
        (train_manually_through_data, "no .data anywhere"),
        (train_manually_clearing_through_data, "no .data anywhere"),
        (train_manually_with_an_optimizer, "step() ran 5 time(s)"),
        (train_manually_without_clearing, "what should .grad hold"),
        (train_manually_rebinding, "not a leaf"),
        (train_manually_without_no_grad, "autograd records nothing"),
        (train_manually_with_a_vector_loss, "backward() needs one number"),
        (train_manually_with_the_sum, "their mean"),
        (train_manually_one_step_short, "one step short"),
        (placeholder, "replace its ... with your code"),
        (lambda W, b, X, y, lr, num_steps: W.detach(), "no backward() call"),
        (lambda W, b, X, y, lr, num_steps: ((X @ W + b - y) ** 2).mean().backward(), "all zeros"),
        (lambda W, b, X, y, lr, num_steps: 1 / 0, "it raised ZeroDivisionError"),
    ],
)
def test_exercise_1_explains_each_wrong_loop_and_never_praises_it(capsys, wrong, hint):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rebinding loop reads .grad of a non-leaf
        assert not ex03.check_manual_loop(wrong)
    out = said(capsys)
    assert hint in out and NOT_YET in out and RIGHT not in out


def test_exercise_1_hints_never_show_the_solutions_code(capsys):
    for wrong in (train_manually_as_written, train_manually_rebinding, train_manually_without_no_grad,
                  train_manually_with_a_vector_loss, train_manually_without_clearing):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ex03.check_manual_loop(wrong)
    out = said(capsys)
    for code in ("W.grad = None", "torch.no_grad():", ".mean()", "W -= lr"):
        assert code not in out


def test_exercise_1_the_expected_values_wait_for_the_third_try_or_reveal(capsys):
    ex03.check_manual_loop(train_manually_with_the_sum)
    assert "expected:" not in said(capsys)
    ex03.check_manual_loop(train_manually_with_the_sum, reveal=True)
    assert "expected:" in said(capsys)


@pytest.mark.parametrize("bad", [..., None, 3, "train_manually", torch.optim.SGD])
def test_exercise_1_bad_types_get_a_verdict(capsys, bad):
    assert not ex03.check_manual_loop(bad)
    assert NOT_YET in said(capsys)


def test_the_watch_leaves_torch_as_it_was_even_when_the_learner_raises():
    before = torch.Tensor.data
    ex03.check_manual_loop(lambda *args: (_ for _ in ()).throw(KeyError("boom")))
    ex03.check_manual_loop(train_manually_through_data)
    assert "data" not in torch.Tensor.__dict__ and torch.Tensor.data is before
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    optimizer.step()  # no step hook left behind to count it


# ---- exercise 2 ---------------------------------------------------------------------------------------------------
def test_exercise_2_the_gradient_after_a_change_through_data(capsys):
    grad, true_grad = ex03.gradient_after_data()
    assert (grad, true_grad) == (27.0, 12.0)  # 3 · 3² from the changed w, not 3 · 2²
    assert ex03.check_gradient_after_data(27)
    assert ex03.check_gradient_after_data(torch.tensor(27.0))
    capsys.readouterr()
    for wrong, hint in [(12, "true gradient at w = 2"), (3, "new value of w"), (9, "3·w²"),
                        (13, "not to its gradient"), (-27, "sign is wrong")]:
        reset_tries()
        assert not ex03.check_gradient_after_data(wrong)
        out = said(capsys)
        assert hint in out and "27" not in out.replace("-27", "")  # the answer stays hidden
    assert not ex03.check_gradient_after_data(...)
    assert "replace the ..." in said(capsys)
    assert not ex03.check_gradient_after_data("27")
    assert "without quotes" in said(capsys)


# ---- exercise 3 ---------------------------------------------------------------------------------------------------
def train_with_momentum(W, b, X, y, lr, momentum, num_steps):  # the solution
    buffers = [torch.zeros_like(W), torch.zeros_like(b)]
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            for p, buffer in zip((W, b), buffers):
                buffer.mul_(momentum).add_(p.grad)
                p -= lr * buffer
        W.grad, b.grad = None, None


def train_with_momentum_buffers_from_the_first_gradient(W, b, X, y, lr, momentum, num_steps):  # also right
    buffers = {}
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            for name, p in (("W", W), ("b", b)):
                buffers[name] = p.grad.clone() if name not in buffers else momentum * buffers[name] + p.grad
                p -= lr * buffers[name]
        W.grad, b.grad = None, None


def train_without_momentum(W, b, X, y, lr, momentum, num_steps):
    train_manually(W, b, X, y, lr, num_steps)


def train_with_dampening(W, b, X, y, lr, momentum, num_steps):
    buffers = [torch.zeros_like(W), torch.zeros_like(b)]
    for step in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            for p, buffer in zip((W, b), buffers):
                if step == 0:
                    buffer.copy_(p.grad)
                else:
                    buffer.mul_(momentum).add_((1 - momentum) * p.grad)
                p -= lr * buffer
        W.grad, b.grad = None, None


def train_with_momentum_never_clearing(W, b, X, y, lr, momentum, num_steps):
    buffers = [torch.zeros_like(W), torch.zeros_like(b)]
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            for p, buffer in zip((W, b), buffers):
                buffer.mul_(momentum).add_(p.grad)
                p -= lr * buffer


def train_with_momentum_by_optimizer(W, b, X, y, lr, momentum, num_steps):
    optimizer = torch.optim.SGD([W, b], lr=lr, momentum=momentum)
    for _ in range(num_steps):
        optimizer.zero_grad()
        ((X @ W + b - y) ** 2).mean().backward()
        optimizer.step()


def test_exercise_3_accepts_momentum_by_hand(capsys):
    assert ex03.check_momentum_by_hand(train_with_momentum)
    assert ex03.check_momentum_by_hand(train_with_momentum_buffers_from_the_first_gradient)
    assert said(capsys).count(RIGHT) == 2


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (train_without_momentum, "plain SGD's parameters"),
        (train_with_dampening, "dampening=0"),
        (train_with_momentum_never_clearing, "this step's gradient only"),
        (train_with_momentum_by_optimizer, "step() ran 5 time(s)"),
        (lambda W, b, X, y, lr, momentum, num_steps: None, "replace its ... with your code"),
        (lambda W, b, X, y, lr, momentum, num_steps: W.sum(), "no backward() call"),
        (lambda W, b, X, y, lr, num_steps: W.sum(), "it raised TypeError"),
    ],
)
def test_exercise_3_explains_each_wrong_loop(capsys, wrong, hint):
    assert not ex03.check_momentum_by_hand(wrong)
    out = said(capsys)
    assert hint in out and RIGHT not in out and "expected:" not in out


# ---- what the task says, enforced ---------------------------------------------------------------------------------
def train_manually_with_variable(W, b, X, y, lr, num_steps):  # right numbers, but the task says no Variable
    from torch.autograd import Variable

    X, y = Variable(X), Variable(y)
    train_manually(W, b, X, y, lr, num_steps)


def train_manually_with_the_notebooks_lr(W, b, X, y, lr, num_steps):  # a constant copied from section 1
    train_manually(W, b, X, y, 0.1, num_steps)


def train_with_the_usual_momentum(W, b, X, y, lr, momentum, num_steps):  # 0.9 written in, not the argument
    train_with_momentum(W, b, X, y, lr, 0.9, num_steps)


def test_exercise_1_refuses_variable_and_leaves_it_as_it_was(capsys):
    from torch.autograd import Variable

    assert not ex03.check_manual_loop(train_manually_with_variable)
    out = said(capsys)
    assert "no Variable anywhere" in out and "called Variable 2 time(s)" in out and RIGHT not in out
    assert "__new__" not in Variable.__dict__  # the spy is gone
    assert type(Variable(torch.ones(2), requires_grad=True)) is torch.Tensor
    assert ex03.check_momentum_by_hand(train_with_momentum)  # and a loop without it still passes


def test_the_checks_use_their_own_constants_so_a_copied_one_fails(capsys):
    assert (ex03.LR, ex03.MOMENTUM) != (0.1, 0.9)
    assert not ex03.check_manual_loop(train_manually_with_the_notebooks_lr)
    assert not ex03.check_momentum_by_hand(train_with_the_usual_momentum)
    assert RIGHT not in said(capsys)


# ---- review: what a learner really writes ---------------------------------------------------------------------------
def train_with_momentum_in_grad(W, b, X, y, lr, momentum, num_steps):  # SGD's numbers, the history in .grad
    for _ in range(num_steps):
        with torch.no_grad():
            for p in (W, b):
                if p.grad is not None:
                    p.grad *= momentum  # the old gradients decay; backward() adds the new one
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad


def train_with_momentum_lr_inside_the_buffer(W, b, X, y, lr, momentum, num_steps):  # also right (lr constant)
    buffers = [torch.zeros_like(W), torch.zeros_like(b)]
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            for p, buffer in zip((W, b), buffers):
                buffer.mul_(momentum).add_(lr * p.grad)
                p -= buffer
            W.grad.zero_()
            b.grad.zero_()


def test_exercise_3_refuses_the_history_kept_in_grad_though_the_numbers_match(capsys):
    assert not ex03.check_momentum_by_hand(train_with_momentum_in_grad)
    out = said(capsys)
    assert RIGHT not in out and "the history lived in .grad" in out and "W.grad and b.grad" in out
    assert "where does the task ask it to live?" in out and "expected:" not in out
    assert ex03.check_momentum_by_hand(train_with_momentum)  # buffers of one's own, .grad cleared: right
    assert ex03.check_momentum_by_hand(train_with_momentum_lr_inside_the_buffer)  # .grad zeroed: right
    assert said(capsys).count(RIGHT) == 2


@pytest.mark.parametrize(
    "check, wrong, named",
    [
        (ex03.check_manual_loop, train_manually_with_the_notebooks_lr, "uses lr = 0.1"),
        (ex03.check_manual_loop, lambda W, b, X, y, lr, num_steps: train_manually(W, b, X, y, lr, 20),
         "uses num_steps = 20"),
        (ex03.check_momentum_by_hand, train_with_the_usual_momentum, "uses momentum = 0.9"),
        (ex03.check_momentum_by_hand,
         lambda W, b, X, y, lr, momentum, num_steps: train_with_momentum(W, b, X, y, 0.1, 0.9, num_steps),
         "uses lr = 0.1 and momentum = 0.9"),
    ],
)
def test_a_constant_copied_from_the_notebook_is_named(capsys, check, wrong, named):
    assert not check(wrong)
    out = said(capsys)
    assert named in out and "use its arguments" in out and "expected:" not in out


def train_manually_clearing_before_the_update(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        W.grad, b.grad = None, None
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad


def train_manually_forgetting_b(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            W -= lr * W.grad
        W.grad, b.grad = None, None


def train_manually_uphill(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            W += lr * W.grad
            b += lr * b.grad
        W.grad, b.grad = None, None


def train_manually_on_copies(W, b, X, y, lr, num_steps):
    W, b = W.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    train_manually(W, b, X, y, lr, num_steps)
    return W, b


def train_manually_clearing_w_only(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad
        W.grad = None


def train_with_a_buffer_made_every_step(W, b, X, y, lr, momentum, num_steps):
    for _ in range(num_steps):
        buffers = [torch.zeros_like(W), torch.zeros_like(b)]
        ((X @ W + b - y) ** 2).mean().backward()
        with torch.no_grad():
            for p, buffer in zip((W, b), buffers):
                buffer.mul_(momentum).add_(p.grad)
                p -= lr * buffer
        W.grad, b.grad = None, None


@pytest.mark.parametrize(
    "check, wrong, named, not_said",
    [
        (ex03.check_manual_loop, train_manually_clearing_before_the_update, "between backward() and the update",
         "not a leaf"),
        (ex03.check_manual_loop, train_manually_forgetting_b, "b never moved", "section 1's loop"),
        (ex03.check_manual_loop, train_manually_uphill, "moved uphill", "section 1's loop"),
        (ex03.check_manual_loop, train_manually_on_copies, "copies of W and b", "replace the ..."),
        (ex03.check_manual_loop, train_manually_clearing_w_only, "b.grad still held an earlier gradient",
         "W.grad still"),
        (ex03.check_momentum_by_hand, train_with_a_buffer_made_every_step, "starts afresh every step",
         "buffer = momentum"),
    ],
)
def test_wrong_loops_a_learner_writes_get_their_own_named_mistake(capsys, check, wrong, named, not_said):
    assert not check(wrong)
    out = said(capsys)
    assert named in out and not_said not in out and RIGHT not in out and "expected:" not in out


def test_exercise_3_the_last_hint_asks_without_spelling_the_update_out(capsys):
    def nesterov(W, b, X, y, lr, momentum, num_steps):
        buffers = [torch.zeros_like(W), torch.zeros_like(b)]
        for _ in range(num_steps):
            ((X @ W + b - y) ** 2).mean().backward()
            with torch.no_grad():
                for p, buffer in zip((W, b), buffers):
                    buffer.mul_(momentum).add_(p.grad)
                    p -= lr * (p.grad + momentum * buffer)
            W.grad, b.grad = None, None

    for _ in range(3):
        ex03.check_momentum_by_hand(nesterov)
    out = said(capsys)
    assert "work out steps 1 and 2" in out and "part by part" in out
    assert "buffer = momentum" not in out and "p -= lr" not in out


def test_the_exercise_cells_as_handed_out_spend_no_try(capsys):
    """Run All on the lesson as handed out: every check answers its `...`, and no try is counted."""
    notebook = json.loads((Path(__file__).parents[1] / "notebooks" / "03-manual-descent.ipynb").read_text())
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"
             and "ex03.check_" in "".join(c["source"])]
    assert len(cells) == 3
    for source in cells:
        exec(source, {"ex03": ex03, "torch": torch})
    out = said(capsys)
    assert out.count(NOT_YET) == 3 and RIGHT not in out and "answer:" not in out
    assert [tries(check) for check in (ex03.check_manual_loop, ex03.check_gradient_after_data,
                                       ex03.check_momentum_by_hand)] == [0, 0, 0]



def train_manually_with_the_loss_under_no_grad(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        with torch.no_grad():
            loss = ((X @ W + b - y) ** 2).mean()
            loss.backward()
            W -= lr * W.grad
            b -= lr * b.grad
        W.grad, b.grad = None, None


def train_manually_with_one_loss_for_all_steps(W, b, X, y, lr, num_steps):
    loss = ((X @ W + b - y) ** 2).mean()
    for _ in range(num_steps):
        loss.backward()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad
        W.grad, b.grad = None, None


@pytest.mark.parametrize("wrong, named", [
    (train_manually_with_the_loss_under_no_grad, "inside torch.no_grad()?"),
    (train_manually_with_one_loss_for_all_steps, "does each step compute its own loss?"),
])
def test_exercise_1_errors_a_learner_meets_are_explained(capsys, wrong, named):
    assert not ex03.check_manual_loop(wrong)
    out = said(capsys)
    assert named in out and "read the error" not in out



def train_manually_zeroing_before_the_update(W, b, X, y, lr, num_steps):
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        W.grad.zero_()
        b.grad.zero_()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad


def train_with_momentum_zeroing_before_the_update(W, b, X, y, lr, momentum, num_steps):
    buffers = [torch.zeros_like(W), torch.zeros_like(b)]
    for _ in range(num_steps):
        ((X @ W + b - y) ** 2).mean().backward()
        W.grad.zero_()
        b.grad.zero_()
        with torch.no_grad():
            for p, buffer in zip((W, b), buffers):
                buffer.mul_(momentum).add_(p.grad)
                p -= lr * buffer


@pytest.mark.parametrize("check, wrong", [
    (ex03.check_manual_loop, train_manually_zeroing_before_the_update),
    (ex03.check_momentum_by_hand, train_with_momentum_zeroing_before_the_update),
])
def test_an_update_that_read_a_cleared_grad_is_not_blamed_on_rebinding(capsys, check, wrong):
    assert not check(wrong)
    out = said(capsys)
    assert "what did .grad hold when the update read it?" in out and "Binding the name" not in out
