"""utils.ex06: the checks of notebook 06 accept right answers, enforce the task, and explain wrong
ones without giving the answer away."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils import ex06
from utils.exercises import NOT_YET, RIGHT, reset_tries, tries


@pytest.fixture(autouse=True)
def fresh_tries():
    reset_tries()


# Exercise 1


@pytest.mark.parametrize("answer", [5, 5.0, torch.tensor(5.0), np.float64(5.0)])
def test_exercise_1_right(answer):
    assert ex06.check_weight_ratio(answer)


def test_exercise_1_is_worked_out_with_torch():
    weights = ex06._sample_weights([10, 10, 10, 2], divisor=4)
    torch.testing.assert_close(weights, torch.tensor([1 / 40] * 30 + [1 / 8] * 2, dtype=torch.float64))
    assert torch.allclose(ex06._sample_weights([8, 8, 8, 8], divisor=4), torch.full((32,), 1 / 32,
                                                                                   dtype=torch.float64))


@pytest.mark.parametrize("answer, words", [
    (0.2, "the other way round"), (1, "only when the micro-batches are equal"),
    (4, "compare the micro-batch sizes"), (50, "too far from 0"), ("5", "without quotes"),
    (..., "replace the ..."),
])
def test_exercise_1_mistakes(answer, words, capsys):
    assert not ex06.check_weight_ratio(answer)
    out = " ".join(capsys.readouterr().out.split())  # verdicts wrap lines at spaces
    assert words in out and "expected:" not in out


# Exercise 2


def sum_over_step_tokens(logits, labels, num_tokens_in_step):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / num_tokens_in_step


def by_mask(logits, labels, num_tokens_in_step):
    real = labels != -100
    return -F.log_softmax(logits, dim=-1)[real].gather(1, labels[real][:, None]).sum() / num_tokens_in_step


@pytest.mark.parametrize("solution", [sum_over_step_tokens, by_mask])
def test_exercise_2_right(solution):
    assert ex06.check_token_loss(solution)


@pytest.mark.parametrize("mistake, words", [
    (lambda lo, la, n: F.cross_entropy(lo.flatten(0, 1), la.flatten()) / 4, "the October 2024 bug"),
    (lambda lo, la, n: F.cross_entropy(lo.flatten(0, 1), la.flatten()), "each micro-batch's own mean"),
    (lambda lo, la, n: F.cross_entropy(lo.flatten(0, 1), la.flatten(), reduction="sum"), "what must the sum"),
    (lambda lo, la, n: F.cross_entropy(lo.flatten(0, 1), la.flatten(), reduction="sum") / la.numel(),
     "padding included"),
    (lambda lo, la, n: F.cross_entropy(lo.flatten(0, 1), la.flatten(), reduction="sum") / (la != -100).sum(),
     "each micro-batch's own mean"),
])
def test_exercise_2_common_mistakes(mistake, words, capsys):
    assert not ex06.check_token_loss(mistake)
    out = " ".join(capsys.readouterr().out.split())
    assert words in out and 'reduction="sum"' not in out


@pytest.mark.parametrize("answer, words", [
    (..., "replace the ..."),
    ("loss", "pass its name"),
    (lambda lo, la, n: None, "write the body of <lambda>"),
    (lambda lo, la, n: [None][0], "got: None"),
    (lambda lo, la, n: sum_over_step_tokens(lo, la, n).item(), ".item() or a float"),
    (lambda lo, la, n: sum_over_step_tokens(lo, la, n).detach(), "build the loss from logits"),
    (lambda lo, la, n: lo.sum(dim=-1), "one number per micro-batch"),
    (lambda lo, la, n: 1 / 0, "it raised ZeroDivisionError"),
    (lambda lo, la: lo.sum(), "it raised TypeError"),
])
def test_exercise_2_bad_answers_get_a_verdict_not_a_traceback(answer, words, capsys):
    assert not ex06.check_token_loss(answer)
    assert words in " ".join(capsys.readouterr().out.split())


def test_exercise_2_other_wrong_answers_get_a_ladder_not_the_solution(capsys):
    wrong = lambda lo, la, n: lo.sum() / n  # noqa: E731
    assert not ex06.check_token_loss(wrong)
    first = capsys.readouterr().out
    assert "is padding (-100) left out" in " ".join(first.split())
    assert not ex06.check_token_loss(wrong)
    assert "reduction= decides" in " ".join(capsys.readouterr().out.split())


# Exercise 3


def scaled_epoch(model, loss_fn, optimizer, scaler, micro_batches, k, max_norm):  # the solution
    for start in range(0, len(micro_batches), k):
        window = micro_batches[start:start + k]
        for X, y in window:
            scaler.scale(loss_fn(model(X), y) / len(window)).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()


def enumerate_scaled(model, loss_fn, optimizer, scaler, micro_batches, k, max_norm):
    n = len(micro_batches)
    for i, (X, y) in enumerate(micro_batches):
        scaler.scale(loss_fn(model(X), y) * len(X) / sum(len(y) for _, y in
                                                          micro_batches[i // k * k:i // k * k + k])).backward()
        if (i + 1) % k == 0 or i == n - 1:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()


def variant(**changes):
    def run(model, loss_fn, optimizer, scaler, micro_batches, k, max_norm):
        for start in range(0, len(micro_batches), k):
            window = micro_batches[start:start + k]
            for X, y in window:
                loss = loss_fn(model(X), y) / (k if changes.get("last_by_k") else len(window))
                (loss if changes.get("no_scale") else scaler.scale(loss)).backward()
                if changes.get("update_per_micro_batch"):
                    scaler.update()
                if changes.get("unscale_per_micro_batch"):
                    scaler.unscale_(optimizer)
            if changes.get("clip_first"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            if not changes.get("no_unscale") and not changes.get("unscale_per_micro_batch"):
                scaler.unscale_(optimizer)
            if not changes.get("no_clip") and not changes.get("clip_first"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            if changes.get("optimizer_step"):
                optimizer.step()
            else:
                scaler.step(optimizer)
            if not changes.get("no_update") and not changes.get("update_per_micro_batch"):
                scaler.update()
            optimizer.zero_grad()
            if changes.get("leaky") and start + k >= len(micro_batches) - len(micro_batches) % k:
                break
    return run


@pytest.mark.parametrize("solution", [scaled_epoch, enumerate_scaled])
def test_exercise_3_right(solution, capsys):
    assert ex06.check_scaled_epoch(solution)
    assert "a window that overflows is skipped" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("changes, words", [
    ({"clip_first": True}, "the norm of scaled gradients"),
    ({"no_unscale": True}, "the norm of scaled gradients"),
    ({"no_clip": True}, "never cut to max_norm"),
    ({"update_per_micro_batch": True}, "it belongs once per optimizer step"),
    ({"unscale_per_micro_batch": True}, "ran twice in one step"),
    ({"no_scale": True}, "never scaled"),
    ({"optimizer_step": True}, "scaler.step() 0 times"),
    ({"no_update": True}, "scaler.update() must follow every scaler.step()"),
    ({"last_by_k": True}, "divided as if it were full"),
])
def test_exercise_3_mistakes_are_named(changes, words, capsys):
    assert not ex06.check_scaled_epoch(variant(**changes))
    out = " ".join(capsys.readouterr().out.split())  # verdicts wrap lines at spaces
    assert words in out and "expected:" not in out


def test_exercise_3_a_step_that_ignores_the_overflow_is_caught(capsys):
    def optimizer_step_after_scaler_bookkeeping(model, loss_fn, optimizer, scaler, micro_batches, k, max_norm):
        for start in range(0, len(micro_batches), k):
            window = micro_batches[start:start + k]
            for X, y in window:
                scaler.scale(loss_fn(model(X), y) / len(window)).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            if all(torch.isfinite(p.grad).all() for p in model.parameters()) or start == 0:
                scaler.step(optimizer)
            else:
                optimizer.step()  # bypasses the skip on the overflowing window
            scaler.update()
            optimizer.zero_grad()

    assert not ex06.check_scaled_epoch(optimizer_step_after_scaler_bookkeeping)
    assert "when a window overflows" in " ".join(capsys.readouterr().out.split())


def test_exercise_3_concatenation_and_one_graph_per_window_are_refused(capsys):
    def concatenated(model, loss_fn, optimizer, scaler, micro_batches, k, max_norm):
        for start in range(0, len(micro_batches), k):
            X, y = (torch.cat(parts) for parts in zip(*micro_batches[start:start + k]))
            scaler.scale(loss_fn(model(X), y)).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()

    assert not ex06.check_scaled_epoch(concatenated)
    assert "its own forward pass" in " ".join(capsys.readouterr().out.split())


def test_the_counting_scaler_records_only_the_learners_calls():
    scaler = ex06._CountingScaler()
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    scaler.step(optimizer)  # unscales inside: not the learner's unscale_
    scaler.update()
    assert scaler.calls == ["scale", "step", "update"]


def test_exercise_2_a_loss_that_runs_backward_itself_is_told_so(capsys):
    def backward_inside(logits, labels, num_tokens_in_step):
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / num_tokens_in_step
        loss.backward(retain_graph=True)
        return loss

    assert not ex06.check_token_loss(backward_inside)
    out = " ".join(capsys.readouterr().out.split())
    assert "backward() ran twice per micro-batch" in out and "expected:" not in out


def test_exercise_3_autocast_gets_its_own_verdict(capsys):
    def under_autocast(model, loss_fn, optimizer, scaler, micro_batches, k, max_norm):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            scaled_epoch(model, loss_fn, optimizer, scaler, micro_batches, k, max_norm)

    assert not ex06.check_scaled_epoch(under_autocast)
    assert "leave autocast out here" in " ".join(capsys.readouterr().out.split())


def test_exercise_3_a_loop_must_use_the_sizes_it_is_given(capsys):
    def hard_coded_k(model, loss_fn, optimizer, scaler, micro_batches, k, max_norm):
        scaled_epoch(model, loss_fn, optimizer, scaler, micro_batches, 4, max_norm)

    assert not ex06.check_scaled_epoch(hard_coded_k)
    out = " ".join(capsys.readouterr().out.split())
    assert "use the argument, not the exercise's 4" in out and "expected:" not in out


def test_exercise_3_unscale_and_update_per_micro_batch_are_caught(capsys):
    def both_per_micro_batch(model, loss_fn, optimizer, scaler, micro_batches, k, max_norm):
        for start in range(0, len(micro_batches), k):
            window = micro_batches[start:start + k]
            for X, y in window:
                scaler.scale(loss_fn(model(X), y) / len(window)).backward()
                scaler.unscale_(optimizer)  # accepted: update() below resets the refusal
                scaler.update()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()

    assert not ex06.check_scaled_epoch(both_per_micro_batch)
    assert "once per optimizer step" in " ".join(capsys.readouterr().out.split())


# Review: what a learner really writes


def flat(out):
    return " ".join(out.split())


@pytest.mark.parametrize("mistake, words", [
    (lambda lo, la, n: F.cross_entropy(lo, la, reduction="sum") / n, "classes in dimension 1"),
    (lambda lo, la, n: F.cross_entropy(lo.flatten(0, 1), la.flatten()) / n, "divides twice"),
    (lambda lo, la, n: F.cross_entropy(lo.flatten(0, 1), la.flatten().clamp(min=0), reduction="sum") / n,
     "the padding positions (-100) count as tokens"),
])
def test_exercise_2_review_mistakes_are_named(mistake, words, capsys):
    assert not ex06.check_token_loss(mistake)
    out = flat(capsys.readouterr().out)
    assert words in out and "read the error" not in out and "is padding (-100) left out" not in out


def test_exercise_2_transposed_logits_are_right(capsys):
    assert ex06.check_token_loss(lambda lo, la, n: F.cross_entropy(lo.transpose(1, 2), la, reduction="sum") / n)


def scaled_variant(split=False, twice=False, both_steps=False, max_norm_of_the_notebook=False,
                   never_zero_grad=False, zero_grad_before_step=False, fixed_divisors=False):
    def run(model, loss_fn, optimizer, scaler, micro_batches, k, max_norm):
        for start in range(0, len(micro_batches), k):
            window = micro_batches[start:start + k]
            for i, (X, y) in enumerate(window):
                divisor = (2 if start + i >= 8 else 4) if fixed_divisors else len(window)
                if split:
                    for X_half, y_half in zip(X.split(2), y.split(2)):
                        scaler.scale(loss_fn(model(X_half), y_half) / (2 * divisor)).backward()
                elif twice:
                    loss = scaler.scale(loss_fn(model(X), y) / (2 * divisor))
                    loss.backward(retain_graph=True)
                    loss.backward()
                else:
                    scaler.scale(loss_fn(model(X), y) / divisor).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0 if max_norm_of_the_notebook else max_norm)
            if zero_grad_before_step:
                optimizer.zero_grad()
            scaler.step(optimizer)
            if both_steps:
                optimizer.step()
            scaler.update()
            if not never_zero_grad:
                optimizer.zero_grad()
    return run


@pytest.mark.parametrize("changes, words, not_said", [
    ({"split": True}, "one forward pass and one backward(), whole", "use the arguments"),
    ({"twice": True}, "20 backward() calls for 10 micro-batches", "use the arguments"),
    ({"both_steps": True}, "optimizer.step() runs besides scaler.step(optimizer)", "step through the scaler"),
    ({"max_norm_of_the_notebook": True}, "1 is the notebook's max_norm", "check the normalisation"),
    ({"never_zero_grad": True}, "leaks into the next", "check the normalisation"),
    ({"zero_grad_before_step": True}, "nothing moved", "check the normalisation"),
    ({"fixed_divisors": True}, "or by a number written into your loop", "not the numbers 10 and 4"),
])
def test_exercise_3_review_mistakes_are_named(changes, words, not_said, capsys):
    assert not ex06.check_scaled_epoch(scaled_variant(**changes))
    out = flat(capsys.readouterr().out)
    assert words in out and not_said not in out and "expected:" not in out and RIGHT not in out


def test_exercise_3_a_count_of_10_written_in_is_named(capsys):
    def hard_coded_count(model, loss_fn, optimizer, scaler, micro_batches, k, max_norm):
        scaled_epoch(model, loss_fn, optimizer, scaler, [micro_batches[i] for i in range(10)], k, max_norm)

    assert not ex06.check_scaled_epoch(hard_coded_count)
    out = flat(capsys.readouterr().out)
    assert "reads past the end of micro_batches" in out and "read the error" not in out


def test_the_exercise_cells_as_handed_out_spend_no_try(capsys):
    """Run All on the lesson as handed out: every check answers its `...`, and no try is counted."""
    notebook = json.loads((Path(__file__).parents[1] / "notebooks" /
                           "06-accumulation-in-real-loops.ipynb").read_text())
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"
             and "ex06.check_" in "".join(c["source"])]
    assert len(cells) == 3
    for source in cells:
        exec(source, {"ex06": ex06})
    out = flat(capsys.readouterr().out)
    assert out.count(NOT_YET) == 3 and RIGHT not in out and "answer:" not in out
    assert [tries(check) for check in (ex06.check_weight_ratio, ex06.check_token_loss,
                                       ex06.check_scaled_epoch)] == [0, 0, 0]


@pytest.mark.parametrize("changes", [{"clip_first": True}, {"no_unscale": True}, {"no_clip": True},
                                     {"unscale_per_micro_batch": True}, {"optimizer_step": True}])
def test_exercise_3_hints_ask_where_a_call_goes_without_writing_it(changes, capsys):
    assert not ex06.check_scaled_epoch(variant(**changes))
    out = flat(capsys.readouterr().out)
    assert "?" in out
    for code in ("call scaler.unscale_(optimizer)", "step through the scaler", "right before clipping",
                 "after unscale_"):
        assert code not in out


def test_exercise_1_the_second_hint_asks_without_the_formula(capsys):
    for _ in range(2):
        ex06.check_weight_ratio(3)
    out = flat(capsys.readouterr().out)
    assert "what share does one sample of the 10 get" in out  # the second rung was shown
    assert "1 / (4 n)" not in out and "expected:" not in out
