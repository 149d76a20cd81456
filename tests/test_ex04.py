"""utils.ex04: the checks of notebook 04 accept right answers, enforce the task, and explain wrong
ones without giving the answer away."""

import copy
import json
from pathlib import Path

import pytest
import torch

from utils import ex04
from utils.exercises import NOT_YET, RIGHT, reset_tries, tries

MOVING = {"RMSprop momentum=0.9", "Adamax", "NAdam"}


def said(capsys):
    """What the checks printed since the last call, with line wraps undone."""
    return " ".join(capsys.readouterr().out.split())


@pytest.fixture(autouse=True)
def fresh_tries():
    reset_tries()


# ---- exercise 1 ---------------------------------------------------------------------------------------------------
def test_exercise_1(capsys):
    assert ex04.momentum_on_zeros() == pytest.approx(0.09)
    assert ex04.check_momentum_on_zeros(0.09)
    assert ex04.check_momentum_on_zeros(torch.tensor(0.09))
    capsys.readouterr()
    for wrong, hint in [(0, "what is still in the momentum buffer"), (0.1, "step 1's move"),
                        (0.9, "the buffer itself"), (0.19, "not added a second time"),
                        (-0.09, "a distance is positive"), (0.5, "too far from 0")]:
        reset_tries()
        assert not ex04.check_momentum_on_zeros(wrong)
        out = said(capsys)
        assert hint in out and "expected:" not in out  # the answer stays hidden
    assert not ex04.check_momentum_on_zeros(...)
    assert "replace the ..." in said(capsys)
    assert not ex04.check_momentum_on_zeros("0.09")
    assert "without quotes" in said(capsys)


def test_exercise_1_reveals_on_request(capsys):
    ex04.check_momentum_on_zeros(0.5, reveal=True)
    assert "expected: 0.09" in said(capsys)


# ---- exercise 2 ---------------------------------------------------------------------------------------------------
def test_exercise_2_truth_is_computed_by_torch_and_none_moves_nothing():
    moving = {name for name, make in ex04.CANDIDATES.items() if ex04.moves_on_zeros(make)}
    assert moving == MOVING
    assert not any(ex04.moves_on_zeros(make, set_to_none=True) for make in ex04.CANDIDATES.values())


def test_exercise_2_accepts_the_set_in_any_container(capsys):
    assert ex04.check_which_move(MOVING)
    assert ex04.check_which_move(sorted(MOVING))
    assert ex04.check_which_move(["RMSprop  momentum=0.9", "Adamax", "NAdam"])  # spaces forgiven
    assert said(capsys).count(RIGHT) == 3


@pytest.mark.parametrize(
    "answer, counts",
    [
        (MOVING | {"Adagrad"}, "1 of your names stays put"),
        ({"Adamax", "RMSprop momentum=0.9"}, "1 that moves is missing"),
        (set(ex04.CANDIDATES), "2 of your names stay put"),
        ({"Adagrad", "RMSprop"}, "2 of your names stay put, 3 that move are missing"),
    ],
)
def test_exercise_2_hints_count_the_mistakes_without_naming_the_verdicts(capsys, answer, counts):
    assert not ex04.check_which_move(answer)
    out = said(capsys)
    assert counts in out and "not a multiple of this step's gradient" in out
    for name in ex04.CANDIDATES:  # no optimizer's verdict is given away
        assert f"{name} stays" not in out and f"{name} moves" not in out
    assert "expected:" not in out


def test_exercise_2_the_answer_shows_from_the_third_try(capsys):
    for _ in range(2):
        ex04.check_which_move({"Adagrad"})
    assert "expected:" not in said(capsys)
    ex04.check_which_move({"Adagrad"})
    assert 'expected: {"Adamax", "NAdam", "RMSprop momentum=0.9"}' in said(capsys)


@pytest.mark.parametrize("bad, text", [(..., "replace the ..."), ("Adamax", "a set of names"),
                                       (3, "a set of names"), ({"adam"}, "copy the names"),
                                       (["Adamax", 3], "names as text"), (None, "a set of names")])
def test_exercise_2_bad_input_gets_a_verdict(capsys, bad, text):
    assert not ex04.check_which_move(bad)
    assert text in said(capsys)


# ---- exercise 3 ---------------------------------------------------------------------------------------------------
def freeze_backbone(model, lr):  # the solution
    model.backbone.requires_grad_(False)
    return torch.optim.SGD(model.head.parameters(), lr=lr)


def freeze_backbone_filtering(model, lr):  # also right
    for p in model.backbone.parameters():
        p.requires_grad = False
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)


def freeze_backbone_keeping_it_in_the_optimizer(model, lr):  # harmless: SGD skips a None gradient
    model.backbone.requires_grad_(False)
    return torch.optim.SGD(model.parameters(), lr=lr)


def leave_it_out(model, lr):  # the notebook's trap: .grad piles up
    return torch.optim.SGD(model.head.parameters(), lr=lr)


def freeze_the_weight_only(model, lr):
    model.backbone.weight.requires_grad_(False)
    return torch.optim.SGD(model.head.parameters(), lr=lr)


def train_everything(model, lr):
    return torch.optim.SGD(model.parameters(), lr=lr)


def freeze_everything(model, lr):
    model.requires_grad_(False)
    return torch.optim.SGD(model.head.parameters(), lr=lr)


def with_adam(model, lr):
    model.backbone.requires_grad_(False)
    return torch.optim.Adam(model.head.parameters(), lr=lr)


def with_another_lr(model, lr):
    model.backbone.requires_grad_(False)
    return torch.optim.SGD(model.head.parameters(), lr=0.1)


def with_momentum(model, lr):
    model.backbone.requires_grad_(False)
    return torch.optim.SGD(model.head.parameters(), lr=lr, momentum=0.9)


def optimizer_for_the_backbone(model, lr):
    model.backbone.requires_grad_(False)
    return torch.optim.SGD(model.backbone.parameters(), lr=lr)


def test_exercise_3_accepts_a_real_freeze(capsys):
    for solution in (freeze_backbone, freeze_backbone_filtering, freeze_backbone_keeping_it_in_the_optimizer):
        assert ex04.check_freeze_backbone(solution)
    assert said(capsys).count(RIGHT) == 3


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (leave_it_out, "holds 5 gradients added up"),
        (freeze_the_weight_only, "backbone.bias.grad holds 5 gradients"),
        (train_everything, "the backbone moved"),
        (freeze_everything, "does it still require grad"),
        (with_adam, "torch.optim.Adam"),
        (with_another_lr, "use the lr your function receives"),
        (with_momentum, "nothing that changes its steps"),
        (optimizer_for_the_backbone, "holds the head's parameters"),
        (lambda model, lr: None, "replace its ... with your code"),
        (lambda model, lr: [model.backbone.requires_grad_(False)] and None, "returns nothing"),
        (lambda model, lr: model.head, "return the optimizer itself"),
        (lambda model, lr: model.head.parameters(), "not its parameters"),
        (lambda model: model.head, "it raised TypeError"),
    ],
)
def test_exercise_3_explains_each_wrong_freeze(capsys, wrong, hint):
    assert not ex04.check_freeze_backbone(wrong)
    out = said(capsys)
    assert hint in out and NOT_YET in out and RIGHT not in out
    assert "requires_grad_(False)" not in out  # the fix is asked for, never shown


def test_exercise_3_model_is_seeded_and_its_parts_are_named():
    a, b = ex04.TwoPartModel(), ex04.TwoPartModel()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert {name.split(".")[0] for name, _ in a.named_parameters()} == {"backbone", "head"}


def with_the_notebooks_lr(model, lr):  # 0.05 copied from section 6, not the argument
    model.backbone.requires_grad_(False)
    return torch.optim.SGD(model.head.parameters(), lr=0.05)


def test_exercise_3_uses_its_own_learning_rate_so_a_copied_one_fails(capsys):
    assert ex04.FREEZE_LR != 0.05
    assert not ex04.check_freeze_backbone(with_the_notebooks_lr)
    assert "0.05 is the notebook's learning rate, written into your code" in said(capsys)


# ---- review: what a learner really writes -------------------------------------------------------------------------
def backbone_at_lr_zero(model, lr):  # steps nothing, but backward() still computes the backbone's gradient
    return torch.optim.SGD([{"params": model.backbone.parameters(), "lr": 0.0},
                            {"params": model.head.parameters()}], lr=lr)


def backbone_replaced_by_identity(model, lr):  # nothing left to train in the backbone, and another model
    model.backbone = torch.nn.Identity()
    return torch.optim.SGD(model.head.parameters(), lr=lr)


def backbone_deleted(model, lr):
    del model.backbone
    return torch.optim.SGD(model.head.parameters(), lr=lr)


def head_replaced(model, lr):
    model.backbone.requires_grad_(False)
    model.head = torch.nn.Linear(8, 1, dtype=torch.float64)
    return torch.optim.SGD(model.head.parameters(), lr=lr)


def requires_grad_set_on_the_module(model, lr):  # a new attribute of the module: nothing reads it
    model.backbone.requires_grad = False
    return torch.optim.SGD(model.head.parameters(), lr=lr)


def backbone_in_eval_mode(model, lr):
    model.backbone.eval()
    return torch.optim.SGD(model.head.parameters(), lr=lr)


def frozen_copy_of_the_backbone(model, lr):  # odd, but the same model, frozen: right
    model.backbone = copy.deepcopy(model.backbone).requires_grad_(False)
    return torch.optim.SGD(model.head.parameters(), lr=lr)


def frozen_and_at_lr_zero(model, lr):  # frozen for real; the lr-0 group is harmless: right
    model.backbone.requires_grad_(False)
    return backbone_at_lr_zero(model, lr)


@pytest.mark.parametrize(
    "wrong, named, not_said",
    [
        (backbone_at_lr_zero, "a learning rate of 0 stops the steps, not the gradients", "pass lr=lr"),
        (backbone_replaced_by_identity, "model.backbone replaced by Identity", "still trainable"),
        (backbone_deleted, "model.backbone removed", "still trainable"),
        (head_replaced, "model.head replaced by Linear", "a different head"),
        (requires_grad_set_on_the_module, "gives the module a new attribute that nothing reads", "Right"),
        (backbone_in_eval_mode, "eval() changes how layers such as dropout and BatchNorm compute", "Right"),
    ],
)
def test_exercise_3_review_mistakes_get_their_own_named_mistake(capsys, wrong, named, not_said):
    assert not ex04.check_freeze_backbone(wrong)
    out = said(capsys)
    assert named in out and not_said not in out and NOT_YET in out and RIGHT not in out
    assert "requires_grad_(False)" not in out


def test_exercise_3_an_lr_zero_group_is_said_to_compute_the_gradient_it_does():
    model = ex04.TwoPartModel()
    optimizer = backbone_at_lr_zero(model, ex04.FREEZE_LR)
    start = ex04._flat(model.backbone)
    ex04._train(model, optimizer)
    assert torch.equal(ex04._flat(model.backbone), start)  # it steps nothing ...
    assert all(p.grad is not None and torch.count_nonzero(p.grad) for p in model.backbone.parameters())  # ... yet


def test_exercise_3_accepts_what_freezes_the_same_model(capsys):
    assert ex04.check_freeze_backbone(frozen_copy_of_the_backbone)
    assert ex04.check_freeze_backbone(frozen_and_at_lr_zero)
    assert said(capsys).count(RIGHT) == 2


def test_exercise_3_a_failed_training_is_not_blamed_on_the_head_when_the_head_is_trainable(capsys):
    def head_made_float32(model, lr):  # the model is float64: the head's matmul now refuses its input
        model.backbone.requires_grad_(False)
        model.head.float()
        return torch.optim.SGD(model.head.parameters(), lr=lr)

    assert not ex04.check_freeze_backbone(head_made_float32)
    out = said(capsys)
    assert "training it raised" in out and "still require grad" not in out


def test_the_exercise_cells_as_handed_out_spend_no_try(capsys):
    """Run All on the lesson as handed out: every check answers its `...`, and no try is counted."""
    notebook = json.loads((Path(__file__).parents[1] / "notebooks" / "04-none-or-zeros.ipynb").read_text())
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"
             and "ex04.check_" in "".join(c["source"])]
    assert len(cells) == 3
    for source in cells:
        exec(source, {"ex04": ex04})
    out = said(capsys)
    assert out.count(NOT_YET) == 3 and RIGHT not in out and "answer:" not in out
    assert [tries(check) for check in (ex04.check_momentum_on_zeros, ex04.check_which_move,
                                       ex04.check_freeze_backbone)] == [0, 0, 0]
