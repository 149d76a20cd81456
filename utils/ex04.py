"""Checks for the exercises of notebook 04 (`set_to_none`: None or zeros).

Each check works its expected answer out with torch, then prints a verdict (utils.exercises:
hints first, the answer only after several tries or with `reveal=True`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from utils.data import make_regression
from utils.device import make_generator
from utils.exercises import Verdict, call_learner_function, check_number, describe, exercise, verdict

# Exercise 2: optimizers not in the notebook's table, each with lr=0.1.
CANDIDATES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "Adagrad": partial(torch.optim.Adagrad, lr=0.1),
    "RMSprop": partial(torch.optim.RMSprop, lr=0.1),
    "RMSprop momentum=0.9": partial(torch.optim.RMSprop, lr=0.1, momentum=0.9),
    "Adamax": partial(torch.optim.Adamax, lr=0.1),
    "NAdam": partial(torch.optim.NAdam, lr=0.1),
}
FREEZE_STEPS = 5
FREEZE_LR = 0.03  # not the notebook's 0.05, so that a constant copied from it fails


def momentum_on_zeros(lr: float = 0.1, momentum: float = 0.9) -> float:
    """How far SGD with momentum moves a parameter in a step where its .grad holds zeros."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([p], lr=lr, momentum=momentum)
    (1.0 * p).sum().backward()  # step 1: gradient 1.0
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)  # step 2: zeros, p plays no part
    before = p.detach().clone()
    optimizer.step()
    return float((p.detach() - before).abs())


@exercise
def check_momentum_on_zeros(answer: Any) -> Verdict:
    """Exercise 1: SGD(lr=0.1, momentum=0.9), gradient 1.0 then zeros: the move in step 2."""
    lr, momentum = 0.1, 0.9
    return check_number(
        answer,
        momentum_on_zeros(lr, momentum),
        what="the distance p moves in step 2",
        hint=["what does the momentum buffer hold after step 1, and what does a zero gradient do to it?",
              "the buffer becomes momentum · buffer + 0; the step is lr times the buffer"],
        mistakes=[
            (0.0, "a zero gradient, but not a zero step: what is still in the momentum buffer?"),
            (lr, "that is step 1's move; by step 2 the buffer has changed"),
            (momentum, "that is the buffer itself; how does SGD turn the buffer into a step?"),
            (lr * (1 + momentum), "the old gradient is not added a second time: only the new one (0) is"),
            (-lr * momentum, "right size, but a distance is positive"),
        ],
    )


def moves_on_zeros(make_optimizer: Callable[..., torch.optim.Optimizer], set_to_none: bool = False) -> bool:
    """Whether `unused` moves in step 3 after gradients in steps 1-2 (notebook 04's table)."""
    gen = make_generator(4)
    used, unused = (torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    optimizer = make_optimizer([used, unused])
    for step in range(3):
        optimizer.zero_grad(set_to_none=set_to_none)
        loss = (used**2).sum() + ((unused**2).sum() if step < 2 else 0.0)
        before = unused.detach().clone()
        loss.backward()
        optimizer.step()
    return not torch.equal(unused.detach(), before)


@exercise
def check_which_move(answer: Any) -> Verdict:
    """Exercise 2: the set of CANDIDATES that move a parameter whose .grad holds zeros."""
    what = "the optimizers that move a parameter whose .grad holds zeros"
    if answer is Ellipsis:
        return verdict(False, what, hint="replace the ... with your answer, then run the cell again", counts=False)
    if isinstance(answer, (str, bytes)) or not isinstance(answer, (set, frozenset, list, tuple)):
        return verdict(False, what, wanted='a set of names, such as {"Adagrad"}', got=describe(answer))
    if not all(isinstance(n, str) for n in answer):
        return verdict(False, what, wanted='a set of names as text, such as {"Adagrad"}', got=describe(answer))
    names = {" ".join(n.split()) for n in answer}
    unknown = sorted(names - set(CANDIDATES))
    if unknown:
        return verdict(False, what, wanted=f"names from {sorted(CANDIDATES)}", got=f"{unknown}",
                       hint="copy the names exactly as printed")
    truth = {name for name, make in CANDIDATES.items() if moves_on_zeros(make)}
    if names == truth:
        return verdict(True, f"{what}: {', '.join(sorted(truth))}")
    extra, missing = len(names - truth), len(truth - names)
    counts = ", ".join(part for part in (
        (f"{extra} of your names stays put" if extra == 1 else f"{extra} of your names stay put") if extra else "",
        (f"{missing} that moves is missing" if missing == 1 else f"{missing} that move are missing") if missing
        else "") if part)
    return verdict(False, what, got=f"{len(names)} name(s); {counts}",
                   hint=[f"{counts}. For each one, ask: does its step have a term that is not a multiple of "
                         "this step's gradient?",
                         f"{counts}. Where does each keep its history: in the numerator of its step (it "
                         "moves on a zero gradient) or only in a denominator that divides the gradient "
                         "(it stays)?"],
                   expected="{" + ", ".join(f'"{n}"' for n in sorted(truth)) + "}")


class TwoPartModel(torch.nn.Module):
    """Exercise 3's model: a `backbone` (a pretrained part, to freeze) and a `head` (to train)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Linear(4, 8, dtype=torch.float64)
        self.head = torch.nn.Linear(8, 1, dtype=torch.float64)
        gen = make_generator(404)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.backbone(x)))


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    data = make_regression(num_samples=16, num_features=4, seed=404, dtype=torch.float64)
    for _ in range(FREEZE_STEPS):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(data.X), data.y).backward()
        optimizer.step()


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def _replaced(model: torch.nn.Module, part: str, original: torch.nn.Linear) -> str:
    """What became of `model.<part>` if the learner's function swapped it for a module that computes
    something else (an nn.Identity, a new layer) or removed it; "" if it is still the original, or a
    copy that computes the same."""
    now = getattr(model, part, None)
    if now is original:
        return ""
    if not isinstance(now, torch.nn.Module):
        return f"model.{part} removed" if now is None else f"model.{part} replaced by {describe(now)}"
    x = torch.randn(16, original.in_features, generator=make_generator(405), dtype=torch.float64)
    try:
        with torch.no_grad():
            same = torch.allclose(now(x), original(x))
    except Exception:
        same = False
    return "" if same else f"model.{part} replaced by {type(now).__name__}"


@exercise
def check_freeze_backbone(freeze_backbone: Any) -> Verdict:
    """Exercise 3: `freeze_backbone(model, lr)` freezes model.backbone and returns SGD for model.head."""
    what = "freeze_backbone(model, lr) freezes the backbone and returns SGD for the head"
    lr = FREEZE_LR
    reference = TwoPartModel()
    reference.backbone.requires_grad_(False)
    _train(reference, torch.optim.SGD(reference.head.parameters(), lr=lr))
    model = TwoPartModel()
    backbone, head = model.backbone, model.head
    start = _flat(model.backbone)
    ok, optimizer = call_learner_function(freeze_backbone, model, lr, what=what)
    if not ok:
        return optimizer
    for part, original in (("backbone", backbone), ("head", head)):
        if changed := _replaced(model, part, original):
            return verdict(False, what, wanted="the same model, its backbone frozen", got=changed,
                           hint=f"freezing keeps the {part} in the model, computing what it computed; it "
                           "only stops training it. What does your function change instead?"
                           if part == "backbone" else "train the head the model has: the exercise freezes "
                           "a part of this model, it does not build another")
    if not isinstance(optimizer, torch.optim.Optimizer):
        hint = ("your function returns nothing: return the optimizer at its end" if optimizer is None
                else "return the optimizer itself, not its parameters or its class")
        return verdict(False, what, wanted="a torch.optim.SGD optimizer", got=describe(optimizer), hint=hint)
    if not isinstance(optimizer, torch.optim.SGD):
        return verdict(False, what, wanted="a torch.optim.SGD optimizer", got=f"torch.optim.{type(optimizer).__name__}",
                       hint="the exercise asks for plain SGD, so that the check can compare the head's steps")
    head_ids = {id(p) for p in model.head.parameters()}
    backbone_ids = {id(p): p for p in model.backbone.parameters()}
    for group in optimizer.param_groups:
        params = group["params"]
        if group["lr"] == 0 and any(id(p) in backbone_ids and p.requires_grad for p in params):
            return verdict(False, what, wanted="the backbone frozen: backward() computes no gradient for it",
                           got="the backbone in a parameter group with lr=0, still requiring grad",
                           hint=["a learning rate of 0 stops the steps, not the gradients: every backward() "
                                 "still computes the backbone's gradient and stores it in its .grad, time "
                                 "and memory spent for nothing. What tells autograd not to compute it?",
                                 "section 6 ends with the fix: freeze for real"])
    head_lrs = sorted({group["lr"] for group in optimizer.param_groups
                       if any(id(p) in head_ids for p in group["params"])})
    if head_lrs and head_lrs != [lr]:
        copied = next((x for x in head_lrs if x != lr), lr)
        hint = (f"{copied:g} is the notebook's learning rate, written into your code: use the lr your "
                "function receives" if copied == 0.05 else
                "use the lr your function receives, not a number written into your code")
        return verdict(False, what, wanted=f"the learning rate the function receives ({lr})",
                       got=f"lr={head_lrs[0] if len(head_lrs) == 1 else head_lrs} for the head", hint=hint)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not all(id(p) in held for p in model.head.parameters()):
        return verdict(False, what, wanted="an optimizer that holds the head's parameters",
                       got="some of the head's parameters are not in the optimizer",
                       hint="which parameters must the optimizer step? Pass those")
    try:
        _train(model, optimizer)
    except Exception as error:  # e.g. a head frozen as well: nothing requires grad
        frozen_head = not any(p.requires_grad for p in model.head.parameters())
        return verdict(False, what, wanted="a model that can train its head",
                       got=f"training it raised {type(error).__name__}: {str(error)[:80]}",
                       hint="is the head still trainable, that is, does it still require grad?" if frozen_head
                       else "the check trains your model with your optimizer for a few steps: what does your "
                       "function leave in either that a training step cannot use?")
    if not torch.equal(_flat(model.backbone), start):
        return verdict(False, what, wanted="the backbone unchanged", got="the backbone moved",
                       hint="a frozen part must not be stepped: is the backbone in the optimizer, and does "
                       "it still require grad?")
    piled = [name for name, p in model.backbone.named_parameters() if p.grad is not None]
    if piled:
        if "requires_grad" in vars(model.backbone):
            hint = ["model.backbone.requires_grad = False gives the module a new attribute that nothing "
                    "reads: requires_grad belongs to each parameter (a tensor). What sets it on all of a "
                    "module's parameters?"]
        elif not model.backbone.training:
            hint = ["eval() changes how layers such as dropout and BatchNorm compute, not whether "
                    "backward() computes a gradient: what tells autograd not to?"]
        else:
            hint = ["backward() still computes the backbone's gradient, and optimizer.zero_grad() only "
                    "clears what the optimizer holds. What tells autograd not to compute a gradient for "
                    "a parameter?"]
        return verdict(False, what, wanted=f"the backbone's .grad still None after {FREEZE_STEPS} steps",
                       got=f"backbone.{piled[0]}.grad holds {FREEZE_STEPS} gradients added up"
                       if not any(id(p) in held for p in model.backbone.parameters()) else
                       f"backbone.{piled[0]}.grad holds a gradient",
                       hint=[*hint, "section 6 ends with the fix: freeze for real"])
    if not all(p.requires_grad for p in model.head.parameters()):
        return verdict(False, what, wanted="the head trained", got="the head no longer requires grad",
                       hint="freeze the backbone only: the head must keep requires_grad=True")
    if not torch.allclose(_flat(model.head), _flat(reference.head)):
        return verdict(False, what, wanted=f"the head after {FREEZE_STEPS} SGD steps with lr={lr}",
                       got="a different head", hint="does the optimizer hold the head's parameters, "
                       "with the learning rate the function receives, and nothing that changes its steps?")
    return verdict(True, what + ": backward() computes no gradient for the backbone, .grad stays None")
