"""The cases of issue 14, one by one: false alarms that must stay silent, misses that must be warned.

1-5 are correct loops that an earlier guard got wrong (or crashed on); 6-9 are buggy loops it
missed. Each correct loop is silent and each buggy one is warned with the right class.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from utils.guard import DiscardedGradientWarning, StaleGradientWarning, ZeroGradGuard, ZeroGradWarning

STALE, DISCARDED = StaleGradientWarning, DiscardedGradientWarning


def watch(*optimizers, **options):
    """Run a block with every optimizer guarded: `with watch(a, b) as (guards, caught): ...`."""
    class Watch:
        def __enter__(self):
            self.catcher = warnings.catch_warnings(record=True)
            self.caught = self.catcher.__enter__()
            warnings.simplefilter("always")
            self.guards = [ZeroGradGuard(o, max_warnings=None, **options) for o in optimizers]
            return self.guards, self.caught

        def __exit__(self, *exc):
            for guard in self.guards:
                guard.remove()
            self.catcher.__exit__(*exc)
            self.caught[:] = [w for w in self.caught if issubclass(w.category, ZeroGradWarning)]

    return Watch()


def kinds(caught) -> list[type]:
    return [w.category for w in caught]


def mlp(seed: int = 0, widths=(4, 8, 1)) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def data(i: int, scale: float = 1.0, n: int = 16, features: int = 4):
    generator = torch.Generator().manual_seed(i)
    return torch.randn(n, features, generator=generator) * scale, torch.randn(n, 1, generator=generator)


# -- 1. a skipped step is a whole-step decision -------------------------------------------------------
def amp_loop(zero_after_step: bool, scale_first: float = 30.0, *, forget: bool = False):
    """The torch.amp recipe (float16 autocast, GradScaler, default init_scale); the first batches overflow.

    Returns the guard, the warnings, and for each batch which parameters' gradients were finite.
    """
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    finite = []
    with watch(optimizer) as (guards, caught):
        for i in range(8):
            if not zero_after_step and not forget:
                optimizer.zero_grad()
            X, y = data(i, scale_first if i < 3 else 1.0)
            with torch.autocast("cpu", dtype=torch.float16):
                loss = torch.nn.functional.mse_loss(model(X).float(), y)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            finite.append([bool(torch.isfinite(p.grad).all()) for p in model.parameters()])
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            if zero_after_step and not forget:
                optimizer.zero_grad(set_to_none=True)
    return guards[0], caught, finite


@pytest.mark.parametrize("zero_after_step", [False, True])
def test_1_grad_scaler_skipping_a_step_with_some_parameters_finite_is_silent(zero_after_step):
    guard, caught, finite = amp_loop(zero_after_step)
    assert kinds(caught) == []
    assert guard.steps < 8  # steps were skipped ...
    assert any(any(f) and not all(f) for f in finite)  # ... where some gradients were finite and others not


def test_1_a_step_skipped_by_hand_on_a_non_finite_norm_is_silent_and_a_lost_window_is_not():
    for skip_by_hand in (True, False):
        model = mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        with watch(optimizer) as (guards, caught):
            for i in range(5):
                optimizer.zero_grad()
                X, y = data(i)
                loss = torch.nn.functional.mse_loss(model(X), y)
                if i == 1:
                    loss = loss * float("inf") if skip_by_hand else loss  # the second batch overflows
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                if i == 1 and (not torch.isfinite(norm) or not skip_by_hand):
                    continue  # skipped: no step for this batch (finite: a real loss of work)
                optimizer.step()
        assert kinds(caught) == ([] if skip_by_hand else [DISCARDED])


def test_1_forgetting_zero_grad_under_a_grad_scaler_is_still_stale():
    _, caught, _ = amp_loop(zero_after_step=True, scale_first=1.0, forget=True)
    assert set(kinds(caught)) == {STALE}


# -- 2. an overwrite in place is new content ---------------------------------------------------------------
@pytest.mark.parametrize("how", ["copy_", "zero_ then add_", "assign"])
def test_2_gradients_overwritten_in_place_before_the_step_are_new(how):
    """Reptile-style meta-learning: the outer step's gradient is the move of an inner copy, written by hand."""
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # made once; from then on overwritten in place, never cleared
    with watch(optimizer) as (guards, caught):
        for i in range(4):
            inner = mlp(seed=i)
            inner.load_state_dict(model.state_dict())
            inner_optimizer = torch.optim.SGD(inner.parameters(), lr=0.1)
            for k in range(3):
                inner_optimizer.zero_grad()
                torch.nn.functional.mse_loss(inner(data(10 * i + k)[0]), data(10 * i + k)[1]).backward()
                inner_optimizer.step()
            for p, q in zip(model.parameters(), inner.parameters()):
                move = (p - q).detach()
                if how == "copy_":
                    p.grad.copy_(move)
                elif how == "zero_ then add_":
                    p.grad.zero_()
                    p.grad.add_(move)
                else:
                    p.grad = move
            optimizer.step()
    assert kinds(caught) == [] and guards[0].steps == 4


def test_2_rescaling_in_place_after_backward_keeps_old_gradients_old():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(optimizer) as (guards, caught):
        for i in range(3):
            torch.nn.functional.mse_loss(model(data(i)[0]), data(i)[1]).backward()  # zero_grad forgotten
            for p in model.parameters():
                p.grad.mul_(0.5)
            optimizer.step()
    assert kinds(caught) == [STALE, STALE]


# -- 3. masking that leaves a gradient zero is not zeroing -------------------------------------------------
def test_3_masking_rows_of_an_embedding_to_zero_is_not_a_clear():
    """Train only some rows of an embedding: the others' gradient is zeroed after backward()."""
    torch.manual_seed(0)
    embedding, head = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD([*embedding.parameters(), *head.parameters()], lr=0.1)
    frozen = torch.arange(10) < 5  # rows 0-4 stay as they are
    with watch(optimizer) as (guards, caught):
        for i in range(6):
            optimizer.zero_grad(set_to_none=False)
            tokens = torch.tensor([i % 5, (i + 1) % 5]) if i % 2 else torch.tensor([i, 9 - i])
            head(embedding(tokens)).sum().backward()
            embedding.weight.grad[frozen] = 0  # on odd steps the whole gradient ends up zero
            optimizer.step()
    assert kinds(caught) == []
    assert guards[0].steps == 6


def test_3_zero_grad_between_backward_and_step_is_still_discarded():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(optimizer) as (guards, caught):
        for i in range(3):
            torch.nn.functional.mse_loss(model(data(i)[0]), data(i)[1]).backward()
            optimizer.zero_grad(set_to_none=False)
            optimizer.step()
    assert kinds(caught) == [DISCARDED] * 3


# -- 4. lazy modules ---------------------------------------------------------------------------------------
def lazy_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.LazyLinear(8), torch.nn.ReLU(), torch.nn.LazyLinear(1))


@pytest.mark.parametrize("forget, expected", [(False, []), (True, [STALE] * 3)])
def test_4_lazy_modules_before_their_first_forward_are_watched_once_materialised(forget, expected):
    model = lazy_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)  # the parameters are not initialised yet
    with watch(optimizer) as (guards, caught):
        for i in range(4):
            if not forget:
                optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(data(i)[0]), data(i)[1]).backward()
            optimizer.step()
    assert kinds(caught) == expected
    assert [r.name for r in guards[0]._records.values()] == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_4_lazy_modules_accumulating_before_their_first_step():
    model = lazy_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(optimizer) as (guards, caught):
        for i in range(6):
            (torch.nn.functional.mse_loss(model(data(i)[0]), data(i)[1]) / 3).backward()
            if (i + 1) % 3 == 0:
                optimizer.step()
                optimizer.zero_grad()
    assert kinds(caught) == [] and guards[0].steps == 2


# -- 5. gradients computed only to be read ---------------------------------------------------------------------
class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimization, in the form of the widely used two-step implementation."""

    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        grads = [p.grad.norm(p=2) for group in self.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.norm(torch.stack(grads), p=2)
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * scale.to(p)
                p.add_(e_w)  # climb to the local maximum "w + e(w)"
                self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(self.state[p]["e_w"])  # back to "w"
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure=None):
        closure = torch.enable_grad()(closure)
        self.first_step(zero_grad=True)
        closure()
        self.second_step()


@pytest.mark.parametrize("zero_first_pass, expected", [(True, []), (False, [STALE] * 4)])
def test_5_sharpness_aware_minimisation_two_steps(zero_first_pass, expected):
    model = mlp()
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    with watch(optimizer.base_optimizer, optimizer) as (guards, caught):
        for i in range(4):
            X, y = data(i)
            torch.nn.functional.mse_loss(model(X), y).backward()
            optimizer.first_step(zero_grad=zero_first_pass)
            torch.nn.functional.mse_loss(model(X), y).backward()
            optimizer.second_step(zero_grad=True)
    assert kinds(caught) == expected
    assert guards[0].steps == 4


def test_5_sharpness_aware_minimisation_with_a_closure():
    model = mlp()
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with watch(optimizer.base_optimizer, optimizer) as (guards, caught):
        for i in range(4):
            X, y = data(i)

            def closure():
                loss = torch.nn.functional.mse_loss(model(X), y)
                loss.backward()
                return loss

            torch.nn.functional.mse_loss(model(X), y).backward()
            optimizer.step(closure)
            optimizer.zero_grad()
    assert kinds(caught) == []


def fgsm_training(mark_intended: bool):
    """Adversarial training: backward() once for the input's gradient, then train on the perturbed input."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(optimizer) as (guards, caught):
        for i in range(3):
            X, y = data(i)
            X.requires_grad_(True)
            torch.nn.functional.mse_loss(model(X), y).backward()  # fills the weights' .grad too
            X_adv = (X + 0.1 * X.grad.sign()).detach()
            if mark_intended:
                optimizer.zero_grad()  # zero_grad: intended
            else:
                optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(X_adv), y).backward()
            optimizer.step()
    return guards[0], caught


def test_5_gradients_only_read_need_the_one_line_mark_and_the_warning_says_so():
    guard, caught = fgsm_training(mark_intended=False)
    assert kinds(caught) == [DISCARDED] * 3
    message = str(caught[0].message)
    assert "end that line with `# zero_grad: intended`" in message
    with open(__file__) as source:  # the warning points at the zero_grad() line, where the mark goes
        assert source.readlines()[caught[0].lineno - 1].strip() == "optimizer.zero_grad()"
    assert fgsm_training(mark_intended=True)[1] == []


def test_5_the_mark_also_works_on_a_calling_line():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def gradient_norm_probe():
        torch.nn.functional.mse_loss(model(data(99)[0]), data(99)[1]).backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
        optimizer.zero_grad()
        return norm

    with watch(optimizer) as (guards, caught):
        for i in range(3):
            gradient_norm_probe()  # zero_grad: intended
            torch.nn.functional.mse_loss(model(data(i)[0]), data(i)[1]).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert caught == []


# -- 6. two optimizers whose losses touch each other's parameters ---------------------------------------------
def gan(zero_after_step: bool, steps: int = 4):
    torch.manual_seed(0)
    netG, netD = torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=0.01)
    optimizerD = torch.optim.Adam(netD.parameters(), lr=0.01)
    softplus = torch.nn.functional.softplus
    with watch(optimizerD, optimizerG) as (guards, caught):
        for i in range(steps):
            real, noise = torch.randn(8, 3), torch.randn(8, 2)
            if not zero_after_step:
                netD.zero_grad()
            softplus(-netD(real)).mean().backward()
            fake = netG(noise)
            softplus(netD(fake.detach())).mean().backward()
            optimizerD.step()
            if zero_after_step:
                optimizerD.zero_grad()
            else:
                netG.zero_grad()
            softplus(-netD(fake)).mean().backward()  # fills netD's .grad too
            optimizerG.step()
            if zero_after_step:
                optimizerG.zero_grad()
    return guards, caught


def test_6_a_gan_where_both_zero_after_their_step_leaks_the_generators_gradient():
    guards, caught = gan(zero_after_step=True)
    assert kinds(caught) == [STALE] * 3
    assert [f.step for f in guards[0].findings] == [2, 3, 4] and guards[1].findings == []
    message = str(caught[0].message)
    assert "gradients from a backward() made before another optimizer's step" in message
    assert "a GAN's generator loss fills the discriminator's .grad" in message
    assert gan(zero_after_step=False)[1] == []


# -- 7. parameters that join late ----------------------------------------------------------------------------
def fine_tune(clear_when_joining: bool):
    """Train the head first; then unfreeze the backbone with add_param_group (it had requires_grad all along)."""
    torch.manual_seed(0)
    backbone, head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01)
    with watch(optimizer) as (guards, caught):
        for epoch in range(2):
            if epoch == 1:
                optimizer.add_param_group({"params": backbone.parameters(), "lr": 0.001})
                if clear_when_joining:
                    optimizer.zero_grad()
            for i in range(3):
                X, y = data(i)
                torch.nn.functional.mse_loss(head(torch.tanh(backbone(X))), y).backward()
                optimizer.step()
                optimizer.zero_grad()  # clears only what the optimizer holds: not the backbone, before
    return guards[0], caught


def test_7_parameters_joining_with_piled_up_gradients_are_stale():
    guard, caught = fine_tune(clear_when_joining=False)
    assert kinds(caught) == [STALE]
    assert guard.findings[0].step == 4
    assert list(guard.findings[0].names) == ["param_groups[1]['params'][0]", "param_groups[1]['params'][1]"]
    assert "when it joined the optimizer (add_param_group)" in str(caught[0].message)
    assert fine_tune(clear_when_joining=True)[1] == []


# -- 8. zero_grad() inside a loop over several optimizers' steps ------------------------------------------------
def several_optimizers(bug: bool):
    torch.manual_seed(0)
    body, head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)
    model = torch.nn.Sequential(body, torch.nn.Tanh(), head)
    optimizers = [torch.optim.SGD(body.parameters(), lr=0.01), torch.optim.Adam(head.parameters(), lr=0.01)]
    with watch(*optimizers) as (guards, caught):
        for i in range(3):
            torch.nn.functional.mse_loss(model(data(i)[0]), data(i)[1]).backward()
            for optimizer in optimizers:
                optimizer.step()
                if bug:
                    model.zero_grad()  # also clears the head, whose optimizer has not stepped yet
                else:
                    optimizer.zero_grad()
    return guards, caught


def test_8_a_models_zero_grad_inside_the_loop_over_optimizers_is_discarded():
    guards, caught = several_optimizers(bug=True)
    assert kinds(caught) == [DISCARDED] * 3
    assert guards[0].findings == [] and len(guards[1].findings) == 3
    assert "ran after another optimizer's step, before this one's" in str(caught[0].message)
    assert several_optimizers(bug=False)[1] == []


# -- 9. the epoch-boundary leak -------------------------------------------------------------------------------
def epochs(step_on_the_partial_window: bool, **options):
    """7 micro-batches per epoch, gradient_accumulation_steps = 3: one is left over at each epoch's end."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    k = 3
    with watch(optimizer, **options) as (guards, caught):
        for epoch in range(3):
            for i in range(7):
                (torch.nn.functional.mse_loss(model(data(i)[0]), data(i)[1]) / k).backward()
                if (i + 1) % k == 0 or (step_on_the_partial_window and i == 6):
                    optimizer.step()
                    optimizer.zero_grad()
    return guards[0], caught


def test_9_leftover_micro_batches_carried_into_the_next_epoch():
    guard, caught = epochs(step_on_the_partial_window=False, gradient_accumulation_steps=3)
    assert kinds(caught) == [STALE, STALE]
    assert [f.step for f in guard.findings] == [3, 5]
    assert "gradients from 4 backward() calls, more than gradient_accumulation_steps=3" in str(caught[0].message)
    assert epochs(step_on_the_partial_window=True, gradient_accumulation_steps=3)[1] == []  # a partial window
    assert epochs(step_on_the_partial_window=False)[1] == []  # without the option: not counted (a limit)


def test_9_bad_gradient_accumulation_steps():
    optimizer = torch.optim.SGD(mlp().parameters(), lr=0.1)
    for bad in (0, -2, 1.5, True, "4"):
        with pytest.raises(ValueError, match="expected gradient_accumulation_steps as an int >= 1 or None"):
            ZeroGradGuard(optimizer, gradient_accumulation_steps=bad)


# -- known limits, with their way out -----------------------------------------------------------------------
def multi_rate(mark: bool):
    """Two optimizers on one shared backward(), the body stepping every second batch (on purpose)."""
    torch.manual_seed(0)
    body, head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)
    body_optimizer = torch.optim.SGD(body.parameters(), lr=0.01)
    head_optimizer = torch.optim.SGD(head.parameters(), lr=0.01)
    with watch(body_optimizer, head_optimizer) as (guards, caught):
        for i in range(4):
            torch.nn.functional.mse_loss(head(torch.tanh(body(data(i)[0]))), data(i)[1]).backward()
            head_optimizer.step()
            head_optimizer.zero_grad()
            if i % 2 == 1:
                if mark:
                    body_optimizer.step()  # zero_grad: intended
                else:
                    body_optimizer.step()
                body_optimizer.zero_grad()
    return caught


def test_known_limit_a_window_that_spans_another_optimizers_steps_on_purpose():
    """The guard cannot tell this from a GAN's leaked gradient; the comment on the step says it is meant."""
    assert kinds(multi_rate(mark=False)) == [STALE, STALE]
    assert multi_rate(mark=True) == []


class DataSAM(SAM):
    """A variant that climbs through `.data`, whose version counter is its own."""

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["e_w"] = 0.05 * p.grad
                    p.data.add_(self.state[p]["e_w"])
        if zero_grad:
            self.zero_grad()


def test_known_limit_weights_moved_through_data_need_the_comment():
    for mark in (False, True):
        model = mlp()
        optimizer = DataSAM(model.parameters(), torch.optim.SGD, lr=0.1)
        with watch(optimizer.base_optimizer) as (guards, caught):
            for i in range(3):
                X, y = data(i)
                torch.nn.functional.mse_loss(model(X), y).backward()
                if mark:
                    optimizer.first_step(zero_grad=True)  # zero_grad: intended
                else:
                    optimizer.first_step(zero_grad=True)
                torch.nn.functional.mse_loss(model(X), y).backward()
                optimizer.second_step(zero_grad=True)
        assert kinds(caught) == ([] if mark else [DISCARDED] * 3)
