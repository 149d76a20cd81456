"""Notebook 08's claims, recomputed from torch and the helpers (independent of stored outputs)."""

import linecache
import runpy
import sys
import warnings
from pathlib import Path

import pytest
import test_guard_cases as cases
import test_guard_cli as cli
import test_guard_cost as cost
import test_guard_loops as loops
import test_guard_review_loops as review
import torch

from utils.data import make_regression
from utils.device import get_device
from utils.guard import DiscardedGradientWarning, StaleGradientWarning, ZeroGradGuard, ZeroGradWarning, notebook
from utils.guard.cli import main as guard_command_line

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

device = get_device()
data = make_regression(num_samples=64, num_features=3, seed=6, device=device, dtype=torch.float64)
X, y = data.X, data.y
train_batch_size, gradient_accumulation_steps, lr = 8, 2, 0.1
batches = [(X[i : i + train_batch_size], y[i : i + train_batch_size]) for i in range(0, 64, train_batch_size)] * 4
loss_fn = torch.nn.MSELoss()


def make_model(optimizer_class=torch.optim.SGD, **options):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(device, torch.float64)
    return model, optimizer_class(model.parameters(), lr=lr, **options)


# The notebook's loops, as written there.
def zero_grad_first(model, optimizer, batches):
    for X, y in batches:
        optimizer.zero_grad()
        loss_fn(model(X), y).backward()
        optimizer.step()


def accumulate(model, optimizer, batches):
    for i, (X, y) in enumerate(batches):
        (loss_fn(model(X), y) / gradient_accumulation_steps).backward()
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()


def forgot_zero_grad(model, optimizer, batches):
    for X, y in batches:
        loss_fn(model(X), y).backward()
        optimizer.step()


def zero_grad_after_backward(model, optimizer, batches):
    for X, y in batches:
        loss_fn(model(X), y).backward()
        optimizer.zero_grad()
        optimizer.step()


def zero_grad_in_window(model, optimizer, batches):
    for i, (X, y) in enumerate(batches):
        optimizer.zero_grad()
        (loss_fn(model(X), y) / gradient_accumulation_steps).backward()
        if (i + 1) % gradient_accumulation_steps == 0:
            optimizer.step()


def last_layer_only(model, optimizer, batches):
    for X, y in batches:
        model[2].zero_grad()
        loss_fn(model(X), y).backward()
        optimizer.step()


def clear(model, optimizer, i):
    if i % 3 == 0:
        optimizer.zero_grad(set_to_none=False)
    elif i % 3 == 1:
        model.zero_grad()
    else:
        for p in model.parameters():
            p.grad = None


def clip_then_step(model, optimizer, batches):
    for i, (X, y) in enumerate(batches):
        loss_fn(model(X), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        clear(model, optimizer, i)


@torch.no_grad()
def full_loss(model):
    return loss_fn(model(X), y).item()


def run(train, optimizer_class=torch.optim.SGD, **options):
    model, optimizer = make_model(optimizer_class, **options)
    curve = [full_loss(model)]
    optimizer.register_step_post_hook(lambda *_: curve.append(full_loss(model)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ZeroGradGuard(optimizer, model=model) as guard:
            train(model, optimizer, batches)
    return curve, guard, caught


ZOO = {  # name: (loop, the warning class or None, steps flagged, steps)
    "zero_grad first": (zero_grad_first, None, 0, 32),
    "accumulate": (accumulate, None, 0, 16),
    "forgot zero_grad": (forgot_zero_grad, StaleGradientWarning, 31, 32),
    "zero_grad after backward": (zero_grad_after_backward, DiscardedGradientWarning, 32, 32),
    "zero_grad in window": (zero_grad_in_window, DiscardedGradientWarning, 16, 16),
    "last layer only": (last_layer_only, StaleGradientWarning, 31, 32),
}


@pytest.fixture(scope="module")
def zoo():
    return {name: run(loop) for name, (loop, *_) in ZOO.items()}


@pytest.mark.parametrize("name", ZOO)
def test_the_zoo_verdicts(zoo, name):
    _, kind, flagged, steps = ZOO[name]
    curve, guard, caught = zoo[name]
    assert {f.kind for f in guard.findings} == ({kind} if kind else set())
    assert len({f.step for f in guard.findings}) == flagged
    assert guard.steps == steps and len(curve) == steps + 1
    assert len(caught) == min(3, len(guard.findings))  # the first three are shown


def test_forgot_zero_grad_is_fine_on_its_first_step_only(zoo):
    assert [f.step for f in zoo["forgot zero_grad"][1].findings] == list(range(2, 33))


def test_the_loss_curves(zoo):
    final = {name: curve[-1] for name, (curve, _, _) in zoo.items()}
    start = zoo["zero_grad first"][0][0]
    assert all(curve[0] == start for curve, _, _ in zoo.values())  # the same fresh model
    assert round(start, 2) == 5.28
    assert final["forgot zero_grad"] > 20 * start  # blows up
    assert zoo["zero_grad after backward"][0] == [start] * 33  # never moves: step() skips None
    assert final["zero_grad first"] < start / 50 and final["accumulate"] < start / 50
    assert final["zero_grad in window"] > 1.5 * final["accumulate"]  # the same 16 steps, learned worse
    assert final["last layer only"] > 3 * final["zero_grad first"]
    # "Only the silent loops learn well": the two silent loops end lowest
    assert sorted(final, key=final.get)[:2] == ["zero_grad first", "accumulate"]


def test_reading_the_warnings(zoo):
    _, guard, caught = zoo["forgot zero_grad"]
    assert (len(caught), len(guard.findings)) == (3, 31)
    assert str(caught[0].message).startswith(
        "step 2: optimizer.step() is about to use .grad that still holds gradients that step 1 "
        "already used, in 4 of 4 parameters (0.weight, 0.bias, 2.weight, 2.bias). Probably forgotten: "
        "optimizer.zero_grad().")
    window = str(zoo["zero_grad in window"][2][0].message)
    assert window.startswith("step 1: gradients computed since the guard started were cleared")
    assert "inside a gradient-accumulation window" in window
    partial = str(zoo["last layer only"][2][0].message)
    assert "in 2 of 4 parameters (0.weight, 0.bias)" in partial
    assert "only some gradients were cleared" in partial


def test_the_two_hooks_see_grad_before_and_after_each_accumulation():
    w = torch.zeros(2, device=device, requires_grad=True)
    seen = []
    w.register_hook(lambda grad: seen.append(None if w.grad is None else w.grad.tolist()))
    w.register_post_accumulate_grad_hook(lambda w: seen.append(w.grad.tolist()))
    for _ in range(2):
        (w * torch.tensor([1.0, 2.0], device=device)).sum().backward()
    assert seen == [None, [1.0, 2.0], [1.0, 2.0], [2.0, 4.0]]
    grad = w.grad
    versions = [grad._version]
    grad.mul_(0.5)
    versions.append(grad._version)
    grad[0] = 0.0  # masking part of the gradient
    versions.append(grad._version)
    assert w.grad is grad and versions == [1, 2, 3]
    assert [v - versions[0] for v in versions] == [0, 1, 2]  # what the cell prints, on any re-run


SETTINGS = [(torch.optim.SGD, {"momentum": 0.9}), (torch.optim.Adam, {"foreach": True}),
            (torch.optim.AdamW, {"fused": True})]


@pytest.mark.parametrize("optimizer_class, options", SETTINGS)
def test_silent_on_more_correct_styles(optimizer_class, options):
    for train, steps in ((clip_then_step, 32), (accumulate, 16), (zero_grad_first, 32)):
        _, guard, caught = run(train, optimizer_class, **options)
        assert caught == [] and guard.findings == [] and guard.steps == steps


def test_bit_identical_and_no_hooks_left():
    model_a, optimizer_a = make_model(torch.optim.AdamW, fused=True)
    model_b, optimizer_b = make_model(torch.optim.AdamW, fused=True)
    with ZeroGradGuard(optimizer_a, model=model_a):
        clip_then_step(model_a, optimizer_a, batches)
    clip_then_step(model_b, optimizer_b, batches)
    assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(model_a.parameters(), make_model()[0].parameters()))
    hooks = sum(len(p._backward_hooks or {}) + len(p._post_accumulate_grad_hooks or {})
                for p in model_a.parameters())
    assert hooks == 0
    assert optimizer_a._optimizer_step_pre_hooks == {} and optimizer_a._optimizer_step_post_hooks == {}


def test_warnings_as_errors_stop_at_the_first_bad_step():
    model, optimizer = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroGradWarning)
        with pytest.raises(StaleGradientWarning, match=r"^step 2: optimizer\.step\(\) is about to use"):
            with ZeroGradGuard(optimizer, model=model) as guard:
                forgot_zero_grad(model, optimizer, batches)
    assert guard.steps == 1  # step 2 never ran


def adversarial(model, optimizer, batches, intended):
    for X, y in batches:
        X = X.clone().requires_grad_()
        loss_fn(model(X), y).backward()
        X_adv = (X + 0.05 * X.grad.sign()).detach()
        if intended:
            optimizer.zero_grad()  # zero_grad: intended
        else:
            optimizer.zero_grad()
        loss_fn(model(X_adv), y).backward()
        optimizer.step()


def test_an_adversarial_example_is_discarded_work_until_its_clear_is_marked_intended():
    _, guard, caught = run(lambda m, o, b: adversarial(m, o, b, intended=False))
    assert len(guard.findings) == 32 and {f.kind for f in guard.findings} == {DiscardedGradientWarning}
    first = guard.findings[0]
    assert linecache.getline(first.filename, first.lineno).strip() == "optimizer.zero_grad()"
    assert str(caught[0].message).endswith("end that line with `# zero_grad: intended`.")
    _, guard, caught = run(lambda m, o, b: adversarial(m, o, b, intended=True))
    assert guard.findings == [] and guard.steps == 32


def test_silent_on_grad_scaler_skips_gans_and_sam():
    """Section 4's list, recomputed with the loops of tests/test_guard_cases.py."""
    for zero_after_step in (False, True):
        guard, caught, finite = cases.amp_loop(zero_after_step)
        assert caught == [] and guard.steps < 8 and any(any(f) and not all(f) for f in finite)
    assert cases.gan(zero_after_step=False)[1] == []
    model = cases.mlp()
    optimizer = cases.SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with cases.watch(optimizer.base_optimizer) as (guards, caught):
        for i in range(3):
            X_, y_ = cases.data(i)
            loss_fn(model(X_), y_).backward()
            optimizer.first_step(zero_grad=True)
            loss_fn(model(X_), y_).backward()
            optimizer.second_step(zero_grad=True)
    assert caught == [] and guards[0].steps == 3
    # "51 loops written like widely used public code ... each silent as written and warned with each
    # bug planted": the two files' tests check that; here, that there are 51 and each has a bug
    assert len(loops.LOOPS) + len(review.LOOPS) == 51
    assert all(any(kind is not None for kind in bugs.values()) for _, bugs, _, _ in review.LOOPS.values())
    for name in ("imagenet_amp", "timm_native_scaler", "hf_trainer", "ppo", "cyclegan", "maml_functional",
                 "lightning_automatic", "dino", "yolov5"):
        assert name in review.LOOPS


def test_a_skipped_steps_gradients_left_for_the_next_backward_are_reported():
    """Section 4: "leaving them for the next backward() is not, and is reported"."""
    findings, _, steps = review.run_explicit(review.amp_first_steps_overflow, "forgot")
    assert findings and {f.kind for f in findings} == {StaleGradientWarning} and steps == 0
    assert review.run_explicit(review.amp_first_steps_overflow, None)[0] == []


def test_the_extension_guards_an_optimizer_made_after_it_and_sums_up(capsys):
    """Section 5: %load_ext utils.guard, the last-layer-only loop on 4 micro-batches, %unload_ext."""
    notebook.load_ipython_extension(None)
    model, optimizer = make_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        last_layer_only(model, optimizer, batches[:4])
    notebook.unload_ipython_extension(None)
    out = capsys.readouterr().out
    assert [w.category for w in caught] == [StaleGradientWarning] * 3
    assert [str(w.message).split(":")[0] for w in caught] == ["step 2", "step 3", "step 4"]
    assert "1 optimizer guarded (SGD), 4 steps checked: 3 findings." in out
    assert optimizer._optimizer_step_pre_hooks == {}  # every hook gone


def test_the_command_line_on_the_script_beside_the_notebook(monkeypatch, capsys):
    """Section 5: exit status 3, the head's optimizer (Adam, the second) at line 29, model.zero_grad()."""
    monkeypatch.chdir(NOTEBOOKS)
    status = guard_command_line(["--max-warnings", "1", "08-example-train.py"])
    out, err = capsys.readouterr()
    assert status == 3
    lines = (NOTEBOOKS / "08-example-train.py").read_text().splitlines()
    assert lines[28].strip() == "model.zero_grad()" and "for optimizer in optimizers:" in lines[26]
    assert err.startswith("utils.guard: 08-example-train.py:29: DiscardedGradientWarning: step 1:")
    assert "(1.weight, 1.bias)" in err and "ran after another optimizer's step, before this one's" in err
    assert err.count("DiscardedGradientWarning: step") == 1  # --max-warnings 1
    assert "2 optimizers guarded (SGD, Adam), 24 steps checked: 12 findings." in err
    assert "the first at 08-example-train.py:29, step 1 of optimizer 2 (Adam)" in err
    assert out.splitlines() == [line for line in out.splitlines() if line.startswith("epoch ")]


def test_in_the_script_the_head_never_learns_and_the_body_does(monkeypatch, capsys):
    monkeypatch.chdir(NOTEBOOKS)
    monkeypatch.setattr(sys, "argv", ["08-example-train.py"])
    scope = runpy.run_path("08-example-train.py", run_name="__main__")
    torch.manual_seed(0)  # the script's seed, then its draws in order: X, the body, the head
    torch.randn(64, 3, dtype=torch.float64)
    fresh_body = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh()).double()
    fresh_head = torch.nn.Linear(16, 1).double()
    assert all(torch.equal(a, b) for a, b in zip(scope["head"].parameters(), fresh_head.parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(scope["body"].parameters(), fresh_body.parameters()))
    assert capsys.readouterr().out.splitlines() == ["epoch 1: loss 7.444", "epoch 2: loss 6.273",
                                                    "epoch 3: loss 5.374"]


def test_reads_from_the_device_on_the_notebooks_loops():
    """Section 3: at most one read per step, none at all in a loop that clears with zero_grad() and skips no step."""
    for loop, none in ((zero_grad_first, True), (accumulate, True), (clip_then_step, False),
                       (forgot_zero_grad, False), (zero_grad_after_backward, False)):
        with cost.counting_reads() as reads:
            _, guard, _ = run(loop)
        assert len(reads) <= guard.steps + 1
        if none:
            assert reads == []
    with cost.counting_reads() as reads:  # zero_grad() every step, and a GradScaler that skips some
        guard, caught, _ = cases.amp_loop(zero_after_step=False)
    assert caught == [] and 0 < len(reads) <= guard.steps + 1  # hence "and skips no step"


def test_the_guard_cannot_see_data_zeroing_between_backward_and_step():
    """The notebook's first limit: `.data` has a version counter of its own."""
    def data_zero(model, optimizer, batches):
        for X, y in batches:
            loss_fn(model(X), y).backward()
            for p in model.parameters():
                p.grad.data.zero_()
            optimizer.step()

    _, guard, _ = run(data_zero)
    assert guard.findings == []
    _, guard, _ = run(zero_grad_after_backward)  # the same bug through zero_grad() is seen
    assert guard.findings


def test_zeroing_by_hand_in_place_after_backward_looks_like_masking_and_is_not_reported():
    def hand_zero(model, optimizer, batches):
        for X, y in batches:
            loss_fn(model(X), y).backward()
            for p in model.parameters():
                p.grad.zero_()
            optimizer.step()

    assert run(hand_zero)[1].findings == []
    assert {f.kind for f in run(zero_grad_after_backward)[1].findings} == {DiscardedGradientWarning}


def test_clipping_between_two_steps_with_no_backward_passes():
    def step_twice_with_clipping(model, optimizer, batches):
        for X, y in batches:
            optimizer.zero_grad()
            loss_fn(model(X), y).backward()
            optimizer.step()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

    def step_twice(model, optimizer, batches):
        for X, y in batches:
            optimizer.zero_grad()
            loss_fn(model(X), y).backward()
            optimizer.step()
            optimizer.step()

    assert run(step_twice_with_clipping)[1].findings == []
    assert {f.kind for f in run(step_twice)[1].findings} == {StaleGradientWarning}


def test_assigned_tensors_count_as_new_and_unseen_ones_are_not_seen():
    def clamp_by_assignment(model, optimizer, batches):  # zero_grad forgotten, .grad assigned anew
        for X, y in batches:
            loss_fn(model(X), y).backward()
            for p in model.parameters():
                p.grad = p.grad.clamp(-1, 1)
            optimizer.step()

    def assign_and_clear_by_hand(model, optimizer, batches):
        params = list(model.parameters())
        for X, y in batches:
            for p, g in zip(params, torch.autograd.grad(loss_fn(model(X), y), params)):
                p.grad = g
            for p in params:
                p.grad = None
            optimizer.step()

    assert run(clamp_by_assignment)[1].findings == []
    assert run(assign_and_clear_by_hand)[1].findings == []


def test_closure_steps_are_judged_after_they_ran():
    """A closure's forgotten zero_grad() is stale, raised (as an error) only after the step ran."""
    def lbfgs(zero: bool, steps: int = 3, keep: dict | None = None):
        model, _ = make_model()
        if keep is not None:
            keep["model"] = model
        optimizer = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)

        def closure():
            if zero:
                optimizer.zero_grad()
            loss = loss_fn(model(X), y)
            loss.backward()
            return loss

        with ZeroGradGuard(optimizer) as guard:
            for _ in range(steps):
                optimizer.step(closure)
        return model, guard

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert lbfgs(zero=True)[1].findings == []
        assert {f.kind for f in lbfgs(zero=False)[1].findings} == {StaleGradientWarning}
        one_step, _ = lbfgs(zero=False, steps=1)
    kept: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroGradWarning)
        with pytest.raises(StaleGradientWarning, match=r"^step 1: optimizer\.step\(\) \(with a closure\) used "
                           r"\.grad that held gradients from an earlier evaluation of the closure") as error:
            lbfgs(zero=False, keep=kept)
    assert "Fix: start the closure with optimizer.zero_grad()." in str(error.value)
    # raised after step 1 had run: the weights are those of one step, not the fresh ones
    fresh, _ = make_model()
    assert all(torch.equal(a, b) for a, b in zip(kept["model"].parameters(), one_step.parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(kept["model"].parameters(), fresh.parameters()))
    findings, _, steps = review.run_explicit(review.lightning_automatic, "forgot")  # "as PyTorch Lightning does"
    assert {f.kind for f in findings} == {StaleGradientWarning} and steps == 4
    assert review.run_explicit(review.lightning_automatic, None)[0] == []


def test_cleared_then_written_by_hand_is_read_pcgrad_and_some_none_is_frozen_dino():
    assert review.run_explicit(review.pcgrad, None)[0] == []  # clears between tasks' backward() calls
    assert {f.kind for f in review.run_explicit(review.pcgrad, "zero_after_pc_backward")[0]} == {
        DiscardedGradientWarning}  # a clear after the gradient was written still loses it
    assert review.run_explicit(review.dino, None)[0] == []  # the last layer's .grad = None, first epoch
    assert {f.kind for f in review.run_explicit(review.dino, "all_cancelled")[0]} == {DiscardedGradientWarning}

    def some_none_refilled(model, optimizer, batches):  # the first layer cleared by hand, then refilled
        for X, y in batches[:4]:
            optimizer.zero_grad()
            loss_fn(model(X), y).backward()
            for p in model[0].parameters():
                p.grad = None
            loss_fn(model(X), y).backward()
            optimizer.step()

    def some_none(model, optimizer, batches):
        for X, y in batches[:4]:
            optimizer.zero_grad()
            loss_fn(model(X), y).backward()
            for p in model[0].parameters():
                p.grad = None
            optimizer.step()

    assert run(some_none)[1].findings == []
    assert {f.kind for f in run(some_none_refilled)[1].findings} == {DiscardedGradientWarning}


def test_requires_grad_switched_by_hand_around_backward_is_never_watched():
    def phases(by_module: bool):
        model, optimizer = make_model()
        model.requires_grad_(False)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            with ZeroGradGuard(optimizer, model=model) as guard:
                for X_, y_ in batches[:4]:  # zero_grad() forgotten
                    if by_module:
                        model.requires_grad_(True)
                    else:
                        for p in model.parameters():
                            p.requires_grad = True
                    loss_fn(model(X_), y_).backward()
                    if by_module:
                        model.requires_grad_(False)
                    else:
                        for p in model.parameters():
                            p.requires_grad = False
                    optimizer.step()
        return guard

    assert phases(by_module=False).findings == []
    assert {f.kind for f in phases(by_module=True).findings} == {StaleGradientWarning}


class SubsetSAM(cases.SAM):
    """A two-step method that perturbs only the first layer's weights."""

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        for p in self.param_groups[0]["params"][:2]:
            e_w = 0.05 * p.grad
            p.add_(e_w)
            self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for p in self.param_groups[0]["params"][:2]:
            p.sub_(self.state[p]["e_w"])
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()


def test_a_two_step_method_moving_only_some_weights_needs_the_mark():
    def sam(mark: bool):
        model = cases.mlp()
        optimizer = SubsetSAM(model.parameters(), torch.optim.SGD, lr=0.1)
        with cases.watch(optimizer.base_optimizer) as (guards, caught):
            for i in range(3):
                X_, y_ = cases.data(i)
                loss_fn(model(X_), y_).backward()
                if mark:
                    optimizer.first_step(zero_grad=True)  # zero_grad: intended
                else:
                    optimizer.first_step(zero_grad=True)
                loss_fn(model(X_), y_).backward()
                optimizer.second_step(zero_grad=True)
        return cases.kinds(caught)

    assert set(sam(mark=False)) == {DiscardedGradientWarning}
    assert sam(mark=True) == []


def test_processes_a_script_starts_are_counted_and_torchrun_guards_each_worker(tmp_path):
    cli.test_processes_the_script_starts_are_named_as_unguarded(tmp_path)
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("no torchrun beside this Python")
    cli.write(tmp_path, "ddp.py", """\
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            model(torch.ones(1, 2)).sum().backward()
            optimizer.step()  # zero_grad() forgotten
        dist.barrier()
        dist.destroy_process_group()
        """)
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun), "--nproc_per_node=2", "-m", "utils.guard", "ddp.py"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0  # each worker exits with 3
    assert done.stderr.count("ddp.py:9: StaleGradientWarning: step 2:") == 2  # one per worker
    assert done.stderr.count("1 optimizer guarded (SGD), 3 steps checked: 2 findings.") == 2


def test_a_module_runs_as_python_dash_m_runs_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli.test_a_module_runs_as_python_dash_m_runs_it_relative_imports_included(tmp_path, capsys)


def test_a_step_skipped_by_hand_on_finite_gradients_needs_the_mark():
    def skip_every_other(model, optimizer, batches, intended):
        for i, (X, y) in enumerate(batches):
            loss_fn(model(X), y).backward()
            if i % 2:
                if intended:
                    optimizer.zero_grad()  # zero_grad: intended
                else:
                    optimizer.zero_grad()
                continue
            optimizer.step()
            optimizer.zero_grad()

    assert {f.kind for f in run(lambda m, o, b: skip_every_other(m, o, b, False))[1].findings} == {
        DiscardedGradientWarning}
    assert run(lambda m, o, b: skip_every_other(m, o, b, True))[1].findings == []


def test_a_window_too_long_is_seen_only_with_gradient_accumulation_steps():
    def leftover(model, optimizer, batches):  # 3 micro-batches per epoch, windows of 2
        for epoch in range(4):
            for i, (X, y) in enumerate(batches[:3]):
                (loss_fn(model(X), y) / 2).backward()
                if (i + 1) % 2 == 0:
                    optimizer.step()
                    optimizer.zero_grad()

    assert run(leftover)[1].findings == []
    model, optimizer = make_model()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        with ZeroGradGuard(optimizer, gradient_accumulation_steps=2) as guard:
            leftover(model, optimizer, batches)
    assert {f.kind for f in guard.findings} == {StaleGradientWarning} and len(guard.findings) == 3


def test_two_rates_on_one_backward_and_sam_through_data_need_the_mark():
    assert {w.category for w in cases.multi_rate(mark=False)} == {StaleGradientWarning}
    assert cases.multi_rate(mark=True) == []
    cases.test_known_limit_weights_moved_through_data_need_the_comment()


def test_inspected_then_cleared_gradients_count_as_discarded_but_autograd_grad_does_not():
    def inspect_with_backward(model, optimizer, batches):
        for X, y in batches:
            loss_fn(model(X), y).backward()  # only to look at the gradient norm
            optimizer.zero_grad()
            loss_fn(model(X), y).backward()
            optimizer.step()
            optimizer.zero_grad()

    def inspect_with_autograd_grad(model, optimizer, batches):
        for X, y in batches:
            torch.autograd.grad(loss_fn(model(X), y), list(model.parameters()))
            loss_fn(model(X), y).backward()
            optimizer.step()
            optimizer.zero_grad()

    assert {f.kind for f in run(inspect_with_backward)[1].findings} == {DiscardedGradientWarning}
    assert run(inspect_with_autograd_grad)[1].findings == []
