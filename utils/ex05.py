"""Checks for the exercises of notebook 05 (gradient accumulation).

Each check works its expected answer out with torch, recognises the usual mistakes by
running them too, then prints a verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from utils.data import make_regression, make_token_sequences
from utils.exercises import Verdict, call_learner_function, check_number, describe, verdict


def _count_steps(num_samples: int, train_batch_size: int, gradient_accumulation_steps: int) -> int:
    """Run the accumulation loop on a one-weight model and count optimizer.step() calls."""
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    for i, X in enumerate(torch.ones(num_samples, 1).split(train_batch_size)):
        ((X @ weight).mean() / gradient_accumulation_steps).backward()
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
    return len(steps)


def check_optimizer_steps(answer: Any) -> Verdict:
    """Exercise 1: 96 samples, train_batch_size 8, gradient_accumulation_steps 4: how many steps?"""
    num_samples, train_batch_size, gradient_accumulation_steps = 96, 8, 4
    micro_batches = num_samples // train_batch_size
    effective = train_batch_size * gradient_accumulation_steps
    return check_number(
        answer,
        _count_steps(num_samples, train_batch_size, gradient_accumulation_steps),
        what="optimizer.step() calls in one pass over 96 samples",
        hint="backward() runs once per micro-batch; step() once per gradient_accumulation_steps of them",
        mistakes=[
            (micro_batches, f"{micro_batches} is the number of micro-batches (backward() calls); "
                            "step() runs once every gradient_accumulation_steps of them"),
            (effective, f"{effective} is the effective batch, train_batch_size × gradient_accumulation_steps"),
            (num_samples / gradient_accumulation_steps,
             "gradient_accumulation_steps counts micro-batches, not samples"),
        ],
    )


def _regression_setup() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    data = make_regression(num_samples=48, num_features=3, seed=104, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):  # leave the learner's random state alone
        model = nn.Linear(3, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.linspace(-1.0, 1.0, 3, dtype=torch.float64))
        model.bias.fill_(0.5)
    micro_batches = [(X.clone(), y.clone()) for X, y in zip(data.X.split(4), data.y.split(4))]
    return model, micro_batches


def _variant(kind: str, model: nn.Module, micro_batches: list, k: int, lr: float) -> list[torch.Tensor]:
    """Train with a known mistake in the accumulation loop; return the final parameters."""
    loss_fn = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for i, (X, y) in enumerate(micro_batches):
        if kind == "zero_grad after backward":
            optimizer.zero_grad()
        loss = loss_fn(model(X), y)
        (loss if kind == "no division" else loss / k).backward()
        if kind == "step every micro-batch" or (i + 1) % k == 0:
            optimizer.step()
            if kind != "never zero_grad":
                optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def _big_batch_training(model: nn.Module, micro_batches: list, k: int, lr: float) -> list[torch.Tensor]:
    """Train with one step per batch of k micro-batches put together; return the final parameters."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for start in range(0, len(micro_batches), k):
        X, y = (torch.cat(parts) for parts in zip(*micro_batches[start:start + k]))
        nn.MSELoss()(model(X), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


MISTAKES = {
    "no division": "the loss of each micro-batch must be divided by gradient_accumulation_steps: "
                   "without it the step is gradient_accumulation_steps times too large",
    "zero_grad after backward": "zero_grad() runs before every backward(), so only the last micro-batch "
                                "reaches the step: call it only after step()",
    "step every micro-batch": "step() runs after every micro-batch: call it only when "
                              "(i + 1) % gradient_accumulation_steps == 0",
    "never zero_grad": "the gradient of one window leaks into the next: call optimizer.zero_grad() after "
                       "optimizer.step()",
}


def check_accumulation_loop(train_with_accumulation: Any) -> Verdict:
    """Exercise 2: `train_with_accumulation(model, loss_fn, optimizer, micro_batches, k)` trains
    like batches of k micro-batches put together."""
    what = "train_with_accumulation(...) trains like one big batch per step"
    k, lr = 4, 0.1
    model, micro_batches = _regression_setup()
    start = [p.detach().clone() for p in model.parameters()]
    truth = _big_batch_training(model, micro_batches, k, lr)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with torch.no_grad():
        for p, s in zip(model.parameters(), start):
            p.copy_(s)
    ok, result = call_learner_function(train_with_accumulation, model, nn.MSELoss(), optimizer,
                                       micro_batches, k, what=what)
    if not ok:
        return result
    got = [p.detach().clone() for p in model.parameters()]
    if all(torch.allclose(g, t) for g, t in zip(got, truth)):
        return verdict(True, what + f": the same parameters as steps on batches of {len(micro_batches[0][0]) * k}")
    if all(torch.equal(g, s) for g, s in zip(got, start)):
        return verdict(False, what, expected="the parameters to change", got="they did not",
                       hint="train on every micro-batch and call optimizer.step() at the end of each window")
    for kind, hint in MISTAKES.items():
        fresh, _ = _regression_setup()
        if all(torch.allclose(g, m) for g, m in zip(got, _variant(kind, fresh, micro_batches, k, lr))):
            return verdict(False, what, hint=hint)
    return verdict(False, what, expected=torch.cat([t.flatten() for t in truth]),
                   got=torch.cat([g.flatten() for g in got]),
                   hint="per micro-batch: loss / gradient_accumulation_steps, backward(); "
                        "every gradient_accumulation_steps: step(), then zero_grad()")


def _token_setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    inputs, labels = make_token_sequences(num_sequences=8, max_len=10, num_features=3, vocab_size=4,
                                          seed=105, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        model = nn.Linear(3, 4).double()
    with torch.no_grad():
        model.weight.copy_(torch.linspace(-1.0, 1.0, 12, dtype=torch.float64).reshape(4, 3))
        model.bias.zero_()
    return model, inputs, labels


def _accumulated_gradient(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                          loss_of: Callable[[torch.Tensor, torch.Tensor, int], Any], what: str = ""
                          ) -> torch.Tensor | Verdict:
    """Backward through `loss_of(logits, labels, num_tokens_in_step)` per micro-batch of 2 sequences.

    Returns the accumulated gradient, or a printed Verdict if `loss_of` fails or returns no loss.
    """
    model.zero_grad()
    num_tokens = int((labels != -100).sum())
    for inputs_micro, labels_micro in zip(inputs.split(2), labels.split(2)):
        ok, loss = call_learner_function(loss_of, model(inputs_micro), labels_micro, num_tokens, what=what)
        if not ok:
            return loss
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            got = describe(loss) + ("" if not isinstance(loss, torch.Tensor) or loss.requires_grad
                                    else " that backward() cannot use")
            return verdict(False, what, expected="a one-element loss tensor built from logits", got=got,
                           hint="return the loss itself (no .item()), computed from logits and labels")
        loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _ce(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction=reduction)


TOKEN_MISTAKES = [
    (lambda lo, la, n: _ce(lo, la) / 4, "that is the mean per micro-batch divided by "
     "gradient_accumulation_steps, the October 2024 bug: tokens in short micro-batches weigh more"),
    (lambda lo, la, n: _ce(lo, la), "that is each micro-batch's mean, added up: divide a sum over "
     "tokens by num_tokens_in_step instead"),
    (lambda lo, la, n: _ce(lo, la, "sum"), "the sum over tokens is right; now divide it by num_tokens_in_step"),
    (lambda lo, la, n: _ce(lo, la, "sum") / la.numel(),
     "la.numel() counts this micro-batch's positions, padding included: divide by num_tokens_in_step"),
]


def check_token_loss(micro_batch_token_loss: Any) -> Verdict:
    """Exercise 3: `micro_batch_token_loss(logits, labels, num_tokens_in_step)` makes the accumulated
    gradient equal the gradient of the mean over all real tokens of the step."""
    what = "micro_batch_token_loss(...) accumulates to the mean over all tokens of the step"
    model, inputs, labels = _token_setup()
    model.zero_grad()
    _ce(model(inputs), labels).backward()
    truth = torch.cat([p.grad.flatten() for p in model.parameters()])
    result = _accumulated_gradient(model, inputs, labels, micro_batch_token_loss, what)
    if isinstance(result, Verdict):
        return result
    if torch.allclose(result, truth):
        return verdict(True, what)
    for wrong, hint in TOKEN_MISTAKES:
        if torch.allclose(result, _accumulated_gradient(model, inputs, labels, wrong)):
            return verdict(False, what, hint=hint)
    return verdict(False, what, expected=truth, got=result,
                   hint='F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") '
                        "/ num_tokens_in_step")
