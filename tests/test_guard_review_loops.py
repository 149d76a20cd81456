"""More loops written like widely used public training code, each correct one silent, each bug warned.

A reviewer's set, apart from tests/test_guard_loops.py: the PyTorch ImageNet example with
AMP, torchvision's reference recipe with an EMA, HF Trainer's accumulation, timm's
`NativeScaler`, CleanRL's PPO, CycleGAN's `set_requires_grad`, MAML with
`torch.autograd.grad(create_graph=True)`, learn2learn's clones, BatchNorm with an evaluation
mid-epoch, gradient checkpointing, `zero_grad(set_to_none=False)` with foreach Adam, a
GradScaler that skips on a partial overflow, EMA and Lookahead with `torch._foreach_lerp_`,
weight norm and parametrizations, `torch.compile`, zero_grad() in a callback and in a step
hook, the tutorial's optimizer step inside backward, SWA, LR schedulers, an optimizer made
again every epoch, DINO's frozen last layer, PCGrad, YOLOv5's groups added after creation,
unfreezing, `Embedding(max_norm=)` with accumulation, DDP's `no_sync()`.

Each loop runs correct (`bug=None`) and with each planted bug by name. The line a warning
must point at ends with the comment `# <- bug name`. Every loop runs twice: with explicit
guards (`g(optimizer)`, created where the loop creates its optimizer) and under
`utils.guard.auto` (every optimizer guarded when it is created, as the command line does).
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.guard import DiscardedGradientWarning, StaleGradientWarning, ZeroGradGuard, ZeroGradWarning, auto
from utils.guard.findings import Finding

STALE, DISCARDED = StaleGradientWarning, DiscardedGradientWarning
LOOPS: dict[str, tuple] = {}  # name -> (loop, {bug: class}, guard options, helpers holding marked lines)


def loop(bugs: dict[str, type], helpers: tuple = (), **options):
    def register(fn):
        LOOPS[fn.__name__] = (fn, bugs, options, helpers)
        return fn
    return register


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed))


# == 1. the PyTorch ImageNet example with AMP: zero_grad() between the loss and backward(), validation ==========
class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def validate(model, criterion, images, target):
    model.eval()
    with torch.no_grad():
        loss = criterion(model(images), target)
    model.train()
    return loss.item()


@loop({"forgot": STALE, "after_backward": DISCARDED})
def imagenet_amp(g, bug):
    torch.manual_seed(1)
    model = SmallResNet()
    criterion = nn.CrossEntropyLoss()
    optimizer = g(torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    scaler = torch.amp.GradScaler("cpu")
    for epoch in range(2):
        model.train()
        for i in range(3):
            images, target = randn(4, 3, 8, 8, seed=10 * epoch + i), torch.randint(0, 5, (4,), generator=gen(i))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                output = model(images)
                loss = criterion(output, target)
            if bug != "forgot":
                optimizer.zero_grad()
            scaler.scale(loss).backward()
            if bug == "after_backward":
                optimizer.zero_grad(set_to_none=False)  # <- after_backward  (None would stop GradScaler)
            scaler.step(optimizer)  # <- forgot
            scaler.update()
            if i == 1:
                validate(model, criterion, images, target)  # evaluation mid-epoch: eval(), no_grad, train()
        scheduler.step()


# == 2. torchvision's reference recipe: clipping under a GradScaler, an EMA of the weights (AveragedModel) ======
class ExponentialMovingAverage(torch.optim.swa_utils.AveragedModel):
    """torchvision's references/classification/utils.py."""

    def __init__(self, model, decay, device="cpu"):
        def ema_avg(avg_model_param, model_param, num_averaged):
            return decay * avg_model_param + (1 - decay) * model_param

        super().__init__(model, device, ema_avg, use_buffers=True)


@loop({"forgot": STALE, "clip_then_zero": DISCARDED})
def torchvision_reference(g, bug):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 4))
    parameters = [{"params": [p for p in model.parameters() if p.dim() > 1], "weight_decay": 1e-4},
                  {"params": [p for p in model.parameters() if p.dim() <= 1], "weight_decay": 0.0}]
    optimizer = g(torch.optim.SGD(parameters, lr=0.5, momentum=0.9))
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=2)
    main_lr = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    lr_scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, main_lr], milestones=[2])
    model_ema = ExponentialMovingAverage(model, decay=0.9)
    scaler = torch.amp.GradScaler("cpu")
    for epoch in range(3):
        for i in range(3):
            image, target = randn(4, 3, 6, 6, seed=20 + i), torch.randint(0, 4, (4,), generator=gen(i))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                output = model(image)
                loss = F.cross_entropy(output, target, label_smoothing=0.1)
            if bug != "forgot":
                optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if bug == "clip_then_zero":
                optimizer.zero_grad()  # <- clip_then_zero
            scaler.step(optimizer)  # <- forgot
            scaler.update()
            if i % 2 == 0:
                model_ema.update_parameters(model)
                if epoch < 1:
                    model_ema.n_averaged.fill_(0)  # warm-up: the EMA restarts
        lr_scheduler.step()


# == 3. HF Trainer: model.zero_grad() once, accumulation with a last partial window, step, model.zero_grad() =====
@loop({"zero_each": DISCARDED, "no_final_window": STALE}, gradient_accumulation_steps=3)
def hf_trainer(g, bug):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(32, 8), nn.GELU(), nn.Linear(8, 2))
    decay = [p for n, p in model.named_parameters() if "bias" not in n]
    no_decay = [p for n, p in model.named_parameters() if "bias" in n]
    optimizer = g(torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                     {"params": no_decay, "weight_decay": 0.0}], lr=5e-4))
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 2))
    gradient_accumulation_steps, steps_in_epoch = 3, 7
    model.zero_grad()
    for epoch in range(2):
        for step in range(steps_in_epoch):
            inputs = torch.randint(0, 20, (4, 4), generator=gen(30 + step))
            labels = torch.randint(0, 2, (4,), generator=gen(40 + step))
            loss = F.cross_entropy(model(inputs), labels) / gradient_accumulation_steps
            loss.backward()
            if bug == "zero_each":
                model.zero_grad()  # <- zero_each
            last_window_ends = (step + 1) == steps_in_epoch and bug != "no_final_window"
            if (step + 1) % gradient_accumulation_steps == 0 or last_window_ends:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()  # <- no_final_window
                lr_scheduler.step()
                model.zero_grad()


# == 4. timm: NativeScaler (scale, backward, unscale_, clip, step, update), accumulation, ModelEmaV3 ===========
class NativeScaler:
    state_dict_key = "amp_scaler"

    def __init__(self, device="cpu"):
        self._scaler = torch.amp.GradScaler(device)

    def __call__(self, loss, optimizer, clip_grad=None, parameters=None, create_graph=False, need_update=True):
        self._scaler.scale(loss).backward(create_graph=create_graph)
        if need_update:
            if clip_grad is not None:
                self._scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
            self._scaler.step(optimizer)  # <- forgot
            self._scaler.update()


class ModelEmaV3(nn.Module):
    def __init__(self, model, decay=0.9):
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        ema = [e for e in self.module.state_dict().values() if e.is_floating_point()]
        new = [m for m in model.state_dict().values() if m.is_floating_point()]
        torch._foreach_lerp_(ema, new, weight=1.0 - self.decay)


@loop({"zero_every_batch": DISCARDED, "forgot": STALE}, helpers=(NativeScaler,))
def timm_native_scaler(g, bug, create_graph=False):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 3))
    optimizer = g(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, foreach=True))
    loss_scaler, model_ema = NativeScaler(), ModelEmaV3(model)
    accum_steps, num_updates, last_batch_idx = 2, 0, 4
    for epoch in range(2):
        optimizer.zero_grad()
        for batch_idx in range(last_batch_idx + 1):
            need_update = batch_idx == last_batch_idx or (batch_idx + 1) % accum_steps == 0
            if bug == "zero_every_batch":
                optimizer.zero_grad()  # <- zero_every_batch
            x, target = randn(8, 6, seed=50 + batch_idx), torch.randint(0, 3, (8,), generator=gen(batch_idx))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), target, label_smoothing=0.1) / accum_steps
            loss_scaler(loss, optimizer, clip_grad=5.0, parameters=model.parameters(),
                        create_graph=create_graph, need_update=need_update)
            if not need_update:
                continue
            num_updates += 1
            if bug != "forgot":
                optimizer.zero_grad()
            model_ema.update(model)


@loop({"forgot": STALE}, helpers=(NativeScaler,))
def timm_second_order(g, bug):
    """timm with a second-order optimizer: backward(create_graph=True) replaces .grad on each accumulation."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")
        timm_native_scaler(g, "forgot" if bug else None, create_graph=True)


# == 5. CleanRL's PPO: several epochs over shuffled minibatches, zero_grad() right before backward() ============
class Agent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.critic = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.actor = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))

    def get_action_and_value(self, x, action=None):
        probs = torch.distributions.Categorical(logits=self.actor(x))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


@loop({"zero_once_per_update": STALE, "zero_after_backward": DISCARDED})
def ppo(g, bug):
    torch.manual_seed(5)
    agent = Agent()
    learning_rate, num_iterations, update_epochs, batch_size, minibatch_size = 2.5e-4, 2, 3, 16, 4
    optimizer = g(torch.optim.Adam(agent.parameters(), lr=learning_rate, eps=1e-5))
    for iteration in range(1, num_iterations + 1):
        frac = 1.0 - (iteration - 1.0) / num_iterations
        optimizer.param_groups[0]["lr"] = frac * learning_rate
        obs = randn(batch_size, 4, seed=60 + iteration)
        with torch.no_grad():  # the rollout
            actions, logprobs, _, values = agent.get_action_and_value(obs)
        advantages, returns = randn(batch_size, seed=70 + iteration), randn(batch_size, seed=80 + iteration)
        b_inds = torch.arange(batch_size)
        if bug == "zero_once_per_update":
            optimizer.zero_grad()
        for epoch in range(update_epochs):
            b_inds = b_inds[torch.randperm(batch_size, generator=gen(epoch))]
            for start in range(0, batch_size, minibatch_size):
                mb_inds = b_inds[start:start + minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(obs[mb_inds], actions[mb_inds])
                ratio = (newlogprob - logprobs[mb_inds]).exp()
                mb_adv = advantages[mb_inds]
                pg_loss = torch.max(-mb_adv * ratio, -mb_adv * torch.clamp(ratio, 0.8, 1.2)).mean()
                v_loss = 0.5 * ((newvalue.view(-1) - returns[mb_inds]) ** 2).mean()
                loss = pg_loss - 0.01 * entropy.mean() + v_loss * 0.5
                if bug != "zero_once_per_update":
                    optimizer.zero_grad()
                loss.backward()
                if bug == "zero_after_backward":
                    optimizer.zero_grad()  # <- zero_after_backward
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                optimizer.step()  # <- zero_once_per_update


# == 6. CycleGAN: two generators in one optimizer, two critics in another, set_requires_grad toggling ==========
def set_requires_grad(nets, requires_grad=False):
    for net in nets:
        for param in net.parameters():
            param.requires_grad = requires_grad


@loop({"forgot_D": STALE, "no_toggle_zero_D_after_step": STALE, "zero_G_after_backward": DISCARDED})
def cyclegan(g, bug):
    torch.manual_seed(6)
    def net(i, o):
        return nn.Sequential(nn.Linear(i, 8), nn.ReLU(), nn.Linear(8, o))
    netG_A, netG_B, netD_A, netD_B = net(3, 3), net(3, 3), net(3, 1), net(3, 1)
    optimizer_G = g(torch.optim.Adam(itertools.chain(netG_A.parameters(), netG_B.parameters()),
                                     lr=2e-4, betas=(0.5, 0.999)))
    optimizer_D = g(torch.optim.Adam(itertools.chain(netD_A.parameters(), netD_B.parameters()),
                                     lr=2e-4, betas=(0.5, 0.999)))
    gan = nn.MSELoss()
    toggle = bug != "no_toggle_zero_D_after_step"
    if not toggle:
        optimizer_D.zero_grad()
    for i in range(4):
        real_A, real_B = randn(4, 3, seed=90 + i), randn(4, 3, seed=95 + i)
        fake_B, fake_A = netG_A(real_A), netG_B(real_B)
        rec_A, rec_B = netG_B(fake_B), netG_A(fake_A)
        if toggle:
            set_requires_grad([netD_A, netD_B], False)  # Ds require no gradients when optimizing Gs
        optimizer_G.zero_grad()
        pred_A, pred_B = netD_A(fake_B), netD_B(fake_A)
        loss_G = (gan(pred_A, torch.ones_like(pred_A)) + gan(pred_B, torch.ones_like(pred_B))
                  + 10 * (F.l1_loss(rec_A, real_A) + F.l1_loss(rec_B, real_B)))
        loss_G.backward()
        if bug == "zero_G_after_backward":
            optimizer_G.zero_grad()  # <- zero_G_after_backward
        optimizer_G.step()
        if toggle:
            set_requires_grad([netD_A, netD_B], True)
        if bug not in ("forgot_D", "no_toggle_zero_D_after_step"):
            optimizer_D.zero_grad()
        for netD, real, fake in ((netD_A, real_B, fake_B), (netD_B, real_A, fake_A)):
            pred_real, pred_fake = netD(real), netD(fake.detach())
            loss_D = (gan(pred_real, torch.ones_like(pred_real)) + gan(pred_fake, torch.zeros_like(pred_fake))) * 0.5
            loss_D.backward()
        optimizer_D.step()  # <- forgot_D <- no_toggle_zero_D_after_step
        if not toggle:
            optimizer_D.zero_grad()  # after its step: the next loss_G.backward() leaks into the Ds' .grad


# == 7. MAML with torch.autograd.grad(create_graph=True) and functional_call; learn2learn's clone ===============
@loop({"zero_per_task": DISCARDED, "forgot": STALE})
def maml_functional(g, bug):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))
    meta_optimizer = g(torch.optim.Adam(model.parameters(), lr=1e-3))
    inner_lr, tasks = 0.01, 3
    for iteration in range(3):
        if bug not in ("zero_per_task", "forgot"):
            meta_optimizer.zero_grad()
        for task in range(tasks):
            amplitude, phase = 1 + task, 0.3 * iteration
            x_s, x_q = randn(5, 1, seed=task), randn(5, 1, seed=task + 10)
            y_s, y_q = amplitude * torch.sin(x_s + phase), amplitude * torch.sin(x_q + phase)
            if bug == "zero_per_task":
                meta_optimizer.zero_grad()  # <- zero_per_task
            params = dict(model.named_parameters())
            for _ in range(2):
                inner_loss = F.mse_loss(torch.func.functional_call(model, params, (x_s,)), y_s)
                grads = torch.autograd.grad(inner_loss, list(params.values()), create_graph=True)
                params = {name: p - inner_lr * grad for (name, p), grad in zip(params.items(), grads)}
            query_loss = F.mse_loss(torch.func.functional_call(model, params, (x_q,)), y_q) / tasks
            query_loss.backward()
        meta_optimizer.step()  # <- forgot


def clone_module(module):
    """learn2learn's clone_module, shortened: a copy whose parameters are clones in the graph."""
    clone = copy.deepcopy(module)
    for mod, mod_clone in zip(module.modules(), clone.modules()):
        for key, param in mod._parameters.items():
            if param is not None:
                mod_clone._parameters[key] = param.clone()
    return clone


def update_module(module, updates):
    for mod in module.modules():
        for key, param in list(mod._parameters.items()):
            if param is not None and id(param) in updates:
                mod._parameters[key] = param - updates[id(param)]


@loop({"forgot": STALE})
def learn2learn_maml(g, bug):
    """learn2learn's MAML example: clone, adapt, evaluate, backward per task; .grad.data scaled, step."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = g(torch.optim.Adam(model.parameters(), 3e-3))
    meta_batch_size = 3
    for iteration in range(3):
        if bug != "forgot":
            opt.zero_grad()
        for task in range(meta_batch_size):
            learner = clone_module(model)
            x, y = randn(6, 2, seed=100 + task), torch.randint(0, 2, (6,), generator=gen(task))
            for _ in range(2):  # learner.adapt(loss), first order
                params = [p for p in learner.parameters()]
                grads = torch.autograd.grad(F.cross_entropy(learner(x), y), params)
                update_module(learner, {id(p): 0.5 * g_ for p, g_ in zip(params, grads)})
            F.cross_entropy(learner(x), y).backward()
        for p in model.parameters():
            p.grad.data.mul_(1.0 / meta_batch_size)
        opt.step()  # <- forgot


# == 8. BatchNorm, evaluation mid-epoch, and the classic `continue` that skips the zero_grad() at the end ======
@loop({"continue_skips_zero": STALE})
def batchnorm_eval_mid_epoch(g, bug):
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
    optimizer = g(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True))
    val_x, val_y = randn(16, 4, seed=110), randn(16, 1, seed=111)
    for i in range(6):
        x, y = randn(8, 4, seed=120 + i), randn(8, 1, seed=130 + i)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()  # <- continue_skips_zero
        if i % 3 == 1:
            model.eval()
            val_loss = F.mse_loss(model(val_x), val_y)  # no torch.no_grad(): a graph, never backward()
            model.train()
            if bug == "continue_skips_zero":
                continue
        optimizer.zero_grad()


# == 9. gradient checkpointing, reentrant and not ============================================================
@loop({"forgot": STALE, "zero_in_window": DISCARDED})
def gradient_checkpointing(g, bug):
    from torch.utils.checkpoint import checkpoint, checkpoint_sequential

    torch.manual_seed(10)
    stem = nn.Linear(4, 16)
    blocks = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.GELU()) for _ in range(4)])
    head = nn.Linear(16, 1)
    model = nn.ModuleList([stem, blocks, head])
    optimizer = g(torch.optim.Adam(model.parameters(), lr=1e-3))
    for i in range(6):
        x, y = randn(8, 4, seed=140 + i), randn(8, 1, seed=150 + i)
        h = stem(x)
        if i % 2:
            h = checkpoint_sequential(blocks, 2, h, use_reentrant=False)
        else:
            h = checkpoint(blocks, h, use_reentrant=True)
        if bug == "zero_in_window" and i % 2:
            optimizer.zero_grad()  # <- zero_in_window
        (F.mse_loss(head(h), y) / 2).backward()
        if i % 2:
            optimizer.step()  # <- forgot
            if bug != "forgot":
                optimizer.zero_grad()


# == 10. zero_grad(set_to_none=False) with foreach Adam, accumulation ==========================================
@loop({"forgot": STALE, "zero_in_window": DISCARDED})
def zeros_not_none_foreach(g, bug):
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = g(torch.optim.Adam(model.parameters(), lr=1e-2, foreach=True))
    optimizer.zero_grad(set_to_none=False)  # no-op on empty .grad
    for i in range(8):
        x, y = randn(8, 4, seed=160 + i), randn(8, 1, seed=170 + i)
        if bug == "zero_in_window" and i % 2:
            optimizer.zero_grad(set_to_none=False)  # <- zero_in_window
        (F.mse_loss(model(x), y) / 2).backward()
        if i % 2:
            optimizer.step()  # <- forgot
            if bug != "forgot":
                optimizer.zero_grad(set_to_none=False)


# == 11. GradScaler with unscale_ and clip_grad_norm_ returning inf for part of the model: the step is skipped ===
class TwoBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 1), nn.Linear(4, 1)

    def forward(self, xa, xb):
        with torch.autocast("cpu", dtype=torch.float16):
            out_b = self.b(xb)  # float16: its gradient overflows past 65504
        return self.a(xa) + out_b.float()  # float32: a's gradient stays finite


@loop({"zero_after_backward": DISCARDED, "forgot": STALE})
def scaler_skip_on_partial_inf(g, bug):
    torch.manual_seed(12)
    model = TwoBranches()
    optimizer = g(torch.optim.SGD(model.parameters(), lr=0.01))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    norms, scales = [], []
    for i in range(6):
        xa, xb, y = randn(8, 4, seed=180 + i), randn(8, 4, seed=190 + i), randn(8, 1, seed=200 + i)
        if i in (2, 4):
            y = y * 1e5  # a large error: the scaled gradient overflows in branch b only
        if bug != "forgot":
            optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(xa, xb), y)
        scaler.scale(loss).backward()
        if bug == "zero_after_backward" and i in (1, 3, 5):
            optimizer.zero_grad(set_to_none=False)  # <- zero_after_backward
        scaler.unscale_(optimizer)
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        scaler.step(optimizer)  # <- forgot
        scaler.update()
        scales.append(scaler.get_scale())
    if bug is None:
        assert not math.isfinite(norms[2]) and not math.isfinite(norms[4]), norms  # the premise: skipped steps
        assert all(math.isfinite(norms[i]) for i in (0, 1, 3, 5)), norms
        assert scales == [2.0**12, 2.0**12, 2.0**11, 2.0**11, 2.0**10, 2.0**10], scales


@loop({"forgot": STALE, "zeroed_in_place_too": None})
def amp_first_steps_overflow(g, bug):
    """The torch.amp recipe with a high init_scale: the first steps overflow and are skipped, as usual.

    Forgetting zero_grad() keeps the non-finite values in .grad: every later step is skipped and
    no optimizer.step() ever runs; the guard sees the GradScaler skip and warns at its line.
    Clearing in place by hand (an optimizer's own zero_grad() written that way) is a clear.
    """
    torch.manual_seed(31)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = g(torch.optim.SGD(model.parameters(), lr=0.01))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)
    scales = []
    for i in range(10):
        if bug is None:
            optimizer.zero_grad()
        elif bug == "zeroed_in_place_too":
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.detach_()
                    p.grad.zero_()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(model(randn(8, 4, seed=520 + i)), randn(8, 1, seed=530 + i))
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # <- forgot
        scaler.update()
        scales.append(scaler.get_scale())
    if bug != "forgot":
        assert scales[0] < 2.0**20 and scales[-1] == scales[-2], scales  # skipped at first, then stepping


# == 12. an EMA of the weights with torch._foreach_lerp_, and Lookahead moving the weights after the step ======
class Lookahead:
    """Lookahead (Zhang et al. 2019) around any optimizer: every k steps, the slow weights pull the fast ones."""

    def __init__(self, optimizer, k=2, alpha=0.5):
        self.optimizer, self.k, self.alpha, self.counter = optimizer, k, alpha, 0
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.slow = [p.detach().clone() for p in self.params]

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)  # <- zero_before_step

    @torch.no_grad()
    def step(self):
        self.optimizer.step()  # <- forgot
        self.counter += 1
        if self.counter % self.k == 0:
            torch._foreach_lerp_(self.slow, self.params, self.alpha)
            torch._foreach_copy_(self.params, self.slow)


@loop({"forgot": STALE, "zero_before_step": DISCARDED}, helpers=(Lookahead,))
def ema_and_lookahead(g, bug):
    torch.manual_seed(13)
    model = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 1))
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = Lookahead(g(torch.optim.RAdam(model.parameters(), lr=1e-2)))
    for i in range(6):
        x, y = randn(8, 4, seed=210 + i), randn(8, 1, seed=220 + i)
        F.mse_loss(model(x), y).backward()
        if bug == "zero_before_step":
            optimizer.zero_grad()
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 0.1)
        if bug != "forgot":
            optimizer.zero_grad()


# == 13. weight norm and parametrizations ======================================================================
class Symmetric(nn.Module):
    def forward(self, X):
        return X.triu() + X.triu(1).transpose(-1, -2)


@loop({"forgot": STALE, "zero_after_backward": DISCARDED})
def parametrizations(g, bug):
    from torch.nn.utils import parametrize

    torch.manual_seed(14)
    layer1 = nn.utils.parametrizations.weight_norm(nn.Linear(4, 6))
    layer2 = nn.Linear(6, 6)
    parametrize.register_parametrization(layer2, "weight", Symmetric())
    layer3 = nn.utils.parametrizations.spectral_norm(nn.Linear(6, 1))
    model = nn.Sequential(layer1, nn.Tanh(), layer2, nn.Tanh(), layer3)
    optimizer = g(torch.optim.Adam(model.parameters(), lr=1e-2))
    for i in range(4):
        if bug != "forgot":
            optimizer.zero_grad()
        x, y = randn(8, 4, seed=230 + i), randn(8, 1, seed=240 + i)
        with parametrize.cached():
            F.mse_loss(model(x), y).backward()
        if bug == "zero_after_backward":
            optimizer.zero_grad()  # <- zero_after_backward
        optimizer.step()  # <- forgot


# == 14. torch.compile of a whole training step's forward and of optimizer.step (the tutorial's pattern) ========
@loop({"forgot": STALE, "zero_after_backward": DISCARDED})
def compiled_step(g, bug):
    torch._dynamo.reset()
    torch.manual_seed(15)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = g(torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01)))
    compiled = torch.compile(model, backend="aot_eager")

    @torch.compile(fullgraph=False, backend="eager")
    def opt_step():
        optimizer.step()  # <- forgot

    for i in range(4):
        if bug != "forgot":
            optimizer.zero_grad()
        x, y = randn(8, 4, seed=250 + i), randn(8, 1, seed=260 + i)
        F.mse_loss(compiled(x), y).backward()
        if bug == "zero_after_backward":
            optimizer.zero_grad()  # <- zero_after_backward
        opt_step()


# == 15. zero_grad() from a callback class, and from an optimizer step hook registered before any guard ========
class Callback:
    def on_train_batch_start(self, trainer): ...
    def on_before_optimizer_step(self, trainer): ...
    def on_train_batch_end(self, trainer): ...


class ZeroGradCallback(Callback):
    def __init__(self, where="end"):
        self.where = where

    def on_train_batch_start(self, trainer):
        if self.where == "start":
            trainer.optimizer.zero_grad()

    def on_before_optimizer_step(self, trainer):
        if self.where == "before_step":
            trainer.optimizer.zero_grad()  # <- callback_before_step

    def on_train_batch_end(self, trainer):
        if self.where == "end":
            trainer.optimizer.zero_grad()


class MiniTrainer:
    def __init__(self, model, optimizer, callbacks):
        self.model, self.optimizer, self.callbacks = model, optimizer, callbacks

    def call(self, hook):
        for callback in self.callbacks:
            getattr(callback, hook)(self)

    def fit(self, batches):
        for x, y in batches:
            self.call("on_train_batch_start")
            F.mse_loss(self.model(x), y).backward()
            self.call("on_before_optimizer_step")
            self.optimizer.step()  # <- no_callback
            self.call("on_train_batch_end")


@loop({"callback_before_step": DISCARDED, "no_callback": STALE}, helpers=(MiniTrainer, ZeroGradCallback))
def zero_grad_in_callbacks(g, bug):
    torch.manual_seed(16)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = g(torch.optim.SGD(model.parameters(), lr=0.05))
    batches = [(randn(8, 4, seed=270 + i), randn(8, 1, seed=280 + i)) for i in range(4)]
    where = {"callback_before_step": "before_step", "no_callback": "nowhere"}.get(bug)
    callbacks = [ZeroGradCallback(where)] if where else [ZeroGradCallback("start"), ZeroGradCallback("end")]
    MiniTrainer(model, optimizer, callbacks).fit(batches)


@loop({"forgot": STALE})
def zero_grad_in_a_step_hook(g, bug):
    """A 'never forget' trick: a step post-hook clears, registered before any guard exists."""
    torch.manual_seed(17)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    if bug != "forgot":
        optimizer.register_step_post_hook(lambda opt, args, kwargs: opt.zero_grad())
    g(optimizer)
    for i in range(4):
        F.mse_loss(model(randn(8, 4, seed=290 + i)), randn(8, 1, seed=300 + i)).backward()
        optimizer.step()  # <- forgot


@loop({"forgot": STALE, "zero_next_iteration": None})
def optimizer_step_in_backward(g, bug):
    """The PyTorch tutorial 'fuse the optimizer step into the backward pass': one optimizer per parameter.

    Its hooks are registered before the guards: the guard's own post-accumulate hook must still
    see the gradient before the hook that steps (`zero_next_iteration` clears at the next
    iteration instead, correct too).
    """
    torch.manual_seed(18)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer_dict = {p: torch.optim.Adam([p], foreach=False) for p in model.parameters()}

    def optimizer_hook(parameter) -> None:
        optimizer_dict[parameter].step()  # <- forgot
        if bug is None:
            optimizer_dict[parameter].zero_grad()

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(optimizer_hook)
    for optimizer in optimizer_dict.values():
        g(optimizer)
    for i in range(3):
        if bug == "zero_next_iteration":
            for optimizer in optimizer_dict.values():
                optimizer.zero_grad()
        F.mse_loss(model(randn(8, 4, seed=310 + i)), randn(8, 1, seed=320 + i)).backward()


# == 16. SWA: AveragedModel, SWALR after a cosine schedule, update_bn at the end ==============================
@loop({"forgot": STALE})
def swa(g, bug):
    from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

    torch.manual_seed(19)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = g(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    swa_model = AveragedModel(model)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    swa_start, swa_scheduler = 2, SWALR(optimizer, swa_lr=0.05, anneal_epochs=1)
    loader = [(randn(8, 4, seed=330 + i), randn(8, 1, seed=340 + i)) for i in range(3)]
    for epoch in range(4):
        for input, target in loader:
            if bug != "forgot":
                optimizer.zero_grad()
            F.mse_loss(model(input), target).backward()
            optimizer.step()  # <- forgot
        if epoch > swa_start:
            swa_model.update_parameters(model)
            swa_scheduler.step()
        else:
            scheduler.step()
    update_bn([x for x, _ in loader], swa_model)


# == 17. LR schedulers stepping per batch: OneCycleLR, warm restarts, ReduceLROnPlateau ========================
@loop({"forgot": STALE})
def lr_schedulers(g, bug):
    torch.manual_seed(20)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = g(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=12)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
    for epoch in range(3):
        for i in range(4):
            if bug != "forgot":
                optimizer.zero_grad(set_to_none=True)
            loss = F.mse_loss(model(randn(8, 4, seed=350 + i)), randn(8, 1, seed=360 + i))
            loss.backward()
            optimizer.step()  # <- forgot
            one_cycle.step()
        plateau.step(loss.item())


# == 18. an optimizer (and its scheduler) made again every epoch ===============================================
@loop({"forgot_in_epoch_2": STALE, "zero_after_backward": DISCARDED})
def new_optimizer_every_epoch(g, bug):
    torch.manual_seed(21)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    for epoch in range(3):
        optimizer = g(torch.optim.Adam(model.parameters(), lr=1e-2 / (epoch + 1)))
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
        for i in range(3):
            F.mse_loss(model(randn(8, 4, seed=370 + i)), randn(8, 1, seed=380 + i)).backward()
            if bug == "zero_after_backward" and epoch == 1:
                optimizer.zero_grad()  # <- zero_after_backward
            optimizer.step()  # <- forgot_in_epoch_2
            scheduler.step()
            if not (bug == "forgot_in_epoch_2" and epoch == 2):
                optimizer.zero_grad()


# == 19. DINO: the student's last layer frozen in the first epoch by setting its .grad to None ==================
class DINOHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 4))
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(4, 10, bias=False))

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def clip_gradients(model, clip):
    norms = []
    for name, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def cancel_gradients_last_layer(epoch, model, freeze_last_layer):
    if epoch >= freeze_last_layer:
        return
    for n, p in model.named_parameters():
        if "last_layer" in n:
            p.grad = None


@loop({"forgot": STALE, "all_cancelled": DISCARDED})
def dino(g, bug):
    torch.manual_seed(22)
    student = DINOHead()
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad = False
    optimizer = g(torch.optim.AdamW(student.parameters(), lr=1e-3))
    for epoch in range(2):
        for it in range(3):
            images = randn(8, 6, seed=390 + it)
            with torch.no_grad():
                teacher_out = F.softmax(teacher(images) / 0.04, dim=-1)
            loss = torch.sum(-teacher_out * F.log_softmax(student(images) / 0.1, dim=-1), dim=-1).mean()
            if bug != "forgot":
                optimizer.zero_grad()
            loss.backward()
            clip_gradients(student, 3.0)
            if bug == "all_cancelled":
                for p in student.parameters():
                    p.grad = None
            cancel_gradients_last_layer(epoch, student, 1)
            optimizer.step()  # <- forgot <- all_cancelled
            with torch.no_grad():
                m = 0.99
                for param_q, param_k in zip(student.parameters(), teacher.parameters()):
                    param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)


# == 20. PCGrad: per-task gradients read between clears, then written to .grad by hand ========================
class PCGrad:
    """WeiChengTseng/Pytorch-PCGrad, shortened (its widely copied wrapper)."""

    def __init__(self, optimizer):
        self._optim = optimizer

    def zero_grad(self):
        return self._optim.zero_grad(set_to_none=True)  # <- zero_after_pc_backward

    def step(self):
        return self._optim.step()

    def pc_backward(self, objectives):
        grads = []
        for obj in objectives:
            self._optim.zero_grad(set_to_none=True)
            obj.backward(retain_graph=True)
            grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                          for group in self._optim.param_groups for p in group["params"]])
        projected = [list(g) for g in grads]
        for g_i in projected:
            for g_j in grads:
                dot = sum((a * b).sum() for a, b in zip(g_i, g_j))
                if dot < 0:
                    norm = sum((b * b).sum() for b in g_j)
                    for k in range(len(g_i)):
                        g_i[k] = g_i[k] - dot * g_j[k] / norm
        merged = [torch.stack(parts).mean(0) for parts in zip(*projected)]
        params = [p for group in self._optim.param_groups for p in group["params"]]
        for p, grad in zip(params, merged):
            p.grad = grad


@loop({"zero_after_pc_backward": DISCARDED}, helpers=(PCGrad,))
def pcgrad(g, bug):
    torch.manual_seed(23)
    trunk, heads = nn.Linear(4, 8), nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])
    optimizer = PCGrad(g(torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=1e-2)))
    for i in range(4):
        x = randn(8, 4, seed=400 + i)
        h = torch.tanh(trunk(x))
        losses = [F.mse_loss(head(h), randn(8, 1, seed=410 + 10 * k + i)) for k, head in enumerate(heads)]
        optimizer.zero_grad()
        optimizer.pc_backward(losses)
        if bug == "zero_after_pc_backward":
            optimizer.zero_grad()  # <- zero_after_pc_backward
        optimizer.step()


# == 21. YOLOv5: three parameter groups added after creation, accumulation that grows in warm-up, ModelEMA ======
@loop({"zero_every_batch": DISCARDED, "forgot": STALE})
def yolov5(g, bug):
    torch.manual_seed(24)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    g_bn, g_w, g_b = [], [], []
    for v in model.modules():
        if hasattr(v, "bias") and isinstance(v.bias, nn.Parameter):
            g_b.append(v.bias)
        if isinstance(v, nn.BatchNorm2d):
            g_bn.append(v.weight)
        elif hasattr(v, "weight") and isinstance(v.weight, nn.Parameter):
            g_w.append(v.weight)
    optimizer = torch.optim.SGD(g_b, lr=0.01, momentum=0.937, nesterov=True)
    g(optimizer)  # created here: the command line guards it right after SGD.__init__
    optimizer.add_param_group({"params": g_w, "weight_decay": 5e-4})
    optimizer.add_param_group({"params": g_bn, "weight_decay": 0.0})
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    scaler = torch.amp.GradScaler("cpu")
    nbs, batch_size, last_opt_step, nw = 8, 2, -1, 4
    for ni in range(10):
        accumulate = max(1, round(float(torch.tensor([1.0, nbs / batch_size])[int(ni >= nw)])))  # grows after warm-up
        imgs, targets = randn(batch_size, 3, 6, 6, seed=420 + ni), torch.randint(0, 3, (batch_size,), generator=gen(ni))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(imgs), targets) * batch_size
        if bug == "zero_every_batch" and ni > nw:
            optimizer.zero_grad()  # <- zero_every_batch
        scaler.scale(loss).backward()
        if ni - last_opt_step >= accumulate:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            scaler.step(optimizer)  # <- forgot
            scaler.update()
            if bug != "forgot":
                optimizer.zero_grad()
            with torch.no_grad():
                msd = model.state_dict()
                for k, v in ema.state_dict().items():
                    if v.dtype.is_floating_point:
                        v *= 0.9
                        v += 0.1 * msd[k].detach()
            last_opt_step = ni


# == 22. fine-tuning: the head trains first, the body is unfrozen later; and the reverse (ULMFiT from the top) ==
@loop({"forgot": STALE})
def unfreeze_later(g, bug):
    torch.manual_seed(25)
    body, head = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 2)
    model = nn.Sequential(body, head)
    for stage, trainable in enumerate([[head], [head, body]]):
        model.requires_grad_(False)
        for m in trainable:
            m.requires_grad_(True)
        if stage == 0:
            optimizer = g(torch.optim.Adam(model.parameters(), lr=1e-3))
        for i in range(3):
            F.cross_entropy(model(randn(8, 4, seed=430 + i)), torch.randint(0, 2, (8,), generator=gen(i))).backward()
            optimizer.step()  # <- forgot
            if bug != "forgot":
                optimizer.zero_grad()


@loop({"forgot": STALE})
def unfreeze_from_the_top(g, bug):
    """The body trains first with the head frozen, then the head joins: it is nearest the loss."""
    torch.manual_seed(26)
    body, head = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 2)
    model = nn.Sequential(body, head)
    head.requires_grad_(False)
    optimizer = g(torch.optim.SGD(model.parameters(), lr=1e-2))
    for stage in range(2):
        if stage == 1:
            head.requires_grad_(True)
        for i in range(3):
            F.cross_entropy(model(randn(8, 4, seed=440 + i)), torch.randint(0, 2, (8,), generator=gen(i))).backward()
            optimizer.step()  # <- forgot
            if bug != "forgot":
                model.zero_grad()


# == 23. StyleGAN2-ADA's phases: modules frozen between phases, the optimizer made while they are frozen ======
@loop({"forgot": STALE, "zero_after_backward": DISCARDED})
def stylegan_phases(g, bug):
    torch.manual_seed(27)
    G = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 4))
    D = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    for module in (G, D):
        module.requires_grad_(False)
    opt_G = g(torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99)))
    opt_D = g(torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99)))
    phases = [("Gmain", G, opt_G), ("Dmain", D, opt_D)]
    for i in range(3):
        real, z = randn(4, 4, seed=450 + i), randn(4, 4, seed=460 + i)
        for name, module, opt in phases:
            if bug != "forgot":
                opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            if name == "Gmain":
                F.softplus(-D(G(z))).mean().backward()
            else:
                (F.softplus(D(G(z).detach())).mean() + F.softplus(-D(real)).mean()).backward()
            module.requires_grad_(False)
            if bug == "zero_after_backward":
                opt.zero_grad(set_to_none=False)  # <- zero_after_backward
            params = [param for param in module.parameters() if param.grad is not None]
            for param in params:
                torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
            opt.step()  # <- forgot


# == 24. Embedding(max_norm=...) renormalises its weight in forward; accumulation over micro-batches ===========
@loop({"zero_in_window": DISCARDED, "forgot": STALE})
def embedding_max_norm(g, bug):
    torch.manual_seed(28)
    model = nn.Sequential(nn.Embedding(30, 8, max_norm=1.0), nn.Flatten(), nn.Linear(24, 1))
    optimizer = g(torch.optim.SGD(model.parameters(), lr=0.5))
    for i in range(8):
        tokens, y = torch.randint(0, 30, (4, 3), generator=gen(470 + i)), randn(4, 1, seed=480 + i)
        if bug == "zero_in_window" and i % 2:
            optimizer.zero_grad()  # <- zero_in_window
        (F.mse_loss(model(tokens), y) / 2).backward()
        if i % 2:
            optimizer.step()  # <- forgot
            if bug != "forgot":
                optimizer.zero_grad()


# == 25. two optimizers that share a tied weight (an encoder's and a decoder's) ==============================
@loop({"forgot": STALE})
def seq2seq_two_optimizers(g, bug):
    """The PyTorch seq2seq tutorial's encoder_optimizer and decoder_optimizer, each zeroed and stepped."""
    torch.manual_seed(29)
    encoder = nn.GRU(6, 6, batch_first=True)
    decoder = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 12))
    embedding = nn.Embedding(12, 6)
    encoder_optimizer = g(torch.optim.SGD([*encoder.parameters(), *embedding.parameters()], lr=0.05))
    decoder_optimizer = g(torch.optim.SGD(decoder.parameters(), lr=0.05))
    for i in range(4):
        src, tgt = torch.randint(0, 12, (4, 5), generator=gen(490 + i)), torch.randint(0, 12, (4,), generator=gen(i))
        if bug != "forgot":
            encoder_optimizer.zero_grad()
        decoder_optimizer.zero_grad()
        _, hidden = encoder(embedding(src))
        loss = F.cross_entropy(decoder(hidden[-1]), tgt)
        loss.backward()
        encoder_optimizer.step()  # <- forgot
        decoder_optimizer.step()


# == 26. DDP (one process, gloo) with no_sync() for the micro-batches of a window =============================
@loop({"zero_in_window": DISCARDED, "forgot": STALE})
def ddp_no_sync(g, bug):
    import contextlib

    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        store = dist.HashStore()
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(30)
        model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)),
                                                    gradient_as_bucket_view=True)
        optimizer = g(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
        gradient_accumulation_steps = 3
        for i in range(9):
            sync = (i + 1) % gradient_accumulation_steps == 0
            context = contextlib.nullcontext() if sync else model.no_sync()
            with context:
                if bug == "zero_in_window" and i % 3 == 1:
                    optimizer.zero_grad()  # <- zero_in_window
                loss = F.mse_loss(model(randn(4, 4, seed=500 + i)), randn(4, 1, seed=510 + i))
                (loss / gradient_accumulation_steps).backward()
            if sync:
                optimizer.step()  # <- forgot
                if bug != "forgot":
                    optimizer.zero_grad()
    finally:
        if started:
            dist.destroy_process_group()


# == 27. PyTorch Lightning: every step takes a closure (automatic optimisation), or a do-nothing one (manual) ===
def do_nothing_closure() -> None:
    return None


class LightningOptimizer:
    """What Lightning puts around an optimizer: step() always passes the torch optimizer a closure."""

    def __init__(self, optimizer):
        self._optimizer = optimizer

    def zero_grad(self, set_to_none=True):
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        return self._optimizer.step(closure=closure if closure is not None else do_nothing_closure)  # <- forgot <- forgot_d


class Closure:
    """Lightning's closure: training_step, then zero_grad (first micro-batch of a window), then backward."""

    def __init__(self, step_fn, backward_fn, zero_grad_fn):
        self.step_fn, self.backward_fn, self.zero_grad_fn = step_fn, backward_fn, zero_grad_fn

    def __call__(self):
        loss = self.step_fn()
        if self.zero_grad_fn is not None:
            self.zero_grad_fn()
        self.backward_fn(loss)
        return loss


@loop({"forgot": STALE}, helpers=(LightningOptimizer,))
def lightning_automatic(g, bug):
    torch.manual_seed(32)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = LightningOptimizer(g(torch.optim.AdamW(model.parameters(), lr=1e-3)))
    accumulate_grad_batches = 2
    for batch_idx in range(8):
        x, y = randn(8, 4, seed=540 + batch_idx), randn(8, 1, seed=550 + batch_idx)
        first_of_window = batch_idx % accumulate_grad_batches == 0 and bug != "forgot"
        closure = Closure(lambda: F.mse_loss(model(x), y) / accumulate_grad_batches,
                          lambda loss: loss.backward(),
                          optimizer.zero_grad if first_of_window else None)
        if (batch_idx + 1) % accumulate_grad_batches:
            closure()  # a micro-batch that does not step: the closure runs outside step()
        else:
            optimizer.step(closure=closure)  # <- forgot


@loop({"forgot_d": STALE}, helpers=(LightningOptimizer,))
def lightning_manual_gan(g, bug):
    """A GAN with `automatic_optimization = False`: toggle_optimizer, manual_backward, step, zero_grad."""
    torch.manual_seed(33)
    generator, discriminator = nn.Linear(2, 3), nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizers = [g(torch.optim.Adam(generator.parameters(), lr=2e-4)),
                  g(torch.optim.Adam(discriminator.parameters(), lr=2e-4))]
    opt_g, opt_d = (LightningOptimizer(o) for o in optimizers)

    def toggle_optimizer(optimizer):
        state = {}
        for opt in optimizers:
            for group in opt.param_groups:
                for param in group["params"]:
                    state[param] = param.requires_grad
                    param.requires_grad = False
        for group in optimizer._optimizer.param_groups:
            for param in group["params"]:
                param.requires_grad = state[param]
        return state

    def untoggle_optimizer(state):
        for param, requires_grad in state.items():
            param.requires_grad = requires_grad

    for i in range(4):
        real, z = randn(8, 3, seed=560 + i), randn(8, 2, seed=570 + i)
        state = toggle_optimizer(opt_g)
        g_loss = F.softplus(-discriminator(generator(z))).mean()
        g_loss.backward()  # self.manual_backward(g_loss)
        opt_g.step()
        opt_g.zero_grad()
        untoggle_optimizer(state)
        state = toggle_optimizer(opt_d)
        d_loss = F.softplus(-discriminator(real)).mean() + F.softplus(discriminator(generator(z).detach())).mean()
        d_loss.backward()
        opt_d.step()
        if bug != "forgot_d":
            opt_d.zero_grad()
        untoggle_optimizer(state)


# -------------------------------------------------------------------------------------------------------------
class Guarded:
    """Guard each optimizer the loop builds: the loop calls `g(optimizer)` on each."""

    def __init__(self, **options) -> None:
        self.options, self.guards = options, []

    def __call__(self, optimizer):
        self.guards.append(ZeroGradGuard(optimizer, max_warnings=None, **self.options))
        return optimizer


def run_explicit(fn, bug, **options) -> tuple[list[Finding], list, int]:
    guarded = Guarded(**options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn(guarded, bug)
        finally:
            for guard in guarded.guards:
                guard.remove()
    ours = [w for w in caught if issubclass(w.category, ZeroGradWarning)]
    return [f for guard in guarded.guards for f in guard.findings], ours, sum(g.steps for g in guarded.guards)


def run_automatic(fn, bug, **options) -> tuple[list[Finding], int]:
    found: list[Finding] = []
    auto.install(report=found.append, max_warnings=None, **options)
    try:
        fn(lambda optimizer: optimizer, bug)
    finally:
        made = auto.uninstall()
    return [f for guard in made for f in guard.findings], sum(g.steps for g in made)


def marked_lines(objects, bug: str) -> set[int]:
    """Lines of a loop (or its helpers) that end with `# <- bug`: where a warning about that bug must point."""
    lines = set()
    for obj in objects:
        source, first = inspect.getsourcelines(obj)
        lines |= {first + i for i, line in enumerate(source) if re.search(rf"# (<- \w+ )*<- {bug}\b", line)}
    return lines


def describe(findings: list[Finding]) -> list[str]:
    return [f"{f.kind.__name__} at line {f.lineno}: {f.message}" for f in findings]


CASES = [(name, None) for name in LOOPS] + [(name, bug) for name, (_, bugs, _, _) in LOOPS.items() for bug in bugs]
SILENT_VARIANTS = {"zeroed_in_place_too"}  # bug names that are correct loops too: None in the loop's dict


@pytest.mark.parametrize("name, bug", CASES, ids=[f"{n}-{b or 'correct'}" for n, b in CASES])
@pytest.mark.parametrize("how", ["explicit", "automatic"])
def test_each_correct_loop_is_silent_and_each_planted_bug_is_warned_at_its_line(name, bug, how, capsys):
    fn, bugs, options, helpers = LOOPS[name]
    if how == "explicit":
        findings, caught, steps = run_explicit(fn, bug, **options)
        assert len(caught) == len(findings)  # each finding shown as a warning (max_warnings=None)
    else:
        findings, steps = run_automatic(fn, bug, **options)
    assert "utils.guard:" not in capsys.readouterr().err  # no error of the guard's own, no optimizer refused
    if bugs.get(bug) is None:  # a correct loop (or a correct variant): silent, and it stepped
        assert findings == [], describe(findings)
        assert steps > 0
        return
    assert findings, f"{name} with {bug!r}: no warning"
    assert {f.kind for f in findings} == {bugs[bug]}, describe(findings)
    lines = marked_lines([fn, *helpers], bug)
    assert lines and findings[0].lineno in lines, (sorted(lines), describe(findings))


# -- beside the loops ------------------------------------------------------------------------------------------
def test_a_parameter_in_two_optimizers_stepped_on_one_backward_is_stale_and_the_message_says_why():
    """A tied embedding given to an encoder's and a decoder's optimizer is updated twice per backward()."""
    torch.manual_seed(0)
    embedding, decoder = nn.Embedding(10, 4), nn.Linear(4, 10)
    encoder_optimizer = torch.optim.SGD(embedding.parameters(), lr=0.1)
    decoder_optimizer = torch.optim.SGD([*decoder.parameters(), embedding.weight], lr=0.1)
    guarded = Guarded()
    guarded(encoder_optimizer), guarded(decoder_optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(3):
            encoder_optimizer.zero_grad()
            decoder_optimizer.zero_grad()
            tokens = torch.tensor([1, 2, 3])
            F.cross_entropy(decoder(embedding(tokens)), tokens).backward()
            encoder_optimizer.step()
            decoder_optimizer.step()
    for guard in guarded.guards:
        guard.remove()
    encoder, decoder_guard = guarded.guards
    assert encoder.findings == []
    assert [(f.step, f.kind) for f in decoder_guard.findings] == [(1, STALE), (2, STALE), (3, STALE)]
    message = decoder_guard.findings[0].message
    assert "gradients that another optimizer's step already used, in 1 of 3 parameters" in message
    assert "in two optimizers, and both step on the same backward()" in message
    assert "step 0" not in message


def test_every_method_the_guard_wraps_is_put_back():
    methods = (torch.optim.Optimizer.zero_grad, torch.nn.Module.zero_grad, torch.optim.Optimizer.add_param_group,
               torch.amp.GradScaler.step, torch.nn.Module.requires_grad_)
    model = nn.Linear(2, 1)
    with pytest.raises(RuntimeError, match="no longer exists .nothing else held it.: keep it in a variable"):
        with ZeroGradGuard(torch.optim.SGD(model.parameters(), lr=0.1)):  # dropped at once: nothing to watch
            pass
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with ZeroGradGuard(optimizer):
        assert torch.amp.GradScaler.step is not methods[3] and torch.optim.Optimizer.add_param_group is not methods[2]
    assert (torch.optim.Optimizer.zero_grad, torch.nn.Module.zero_grad, torch.optim.Optimizer.add_param_group,
            torch.amp.GradScaler.step, torch.nn.Module.requires_grad_) == methods


def test_a_skipped_step_left_uncleared_is_named_and_points_at_scaler_step():
    findings, caught, steps = run_explicit(amp_first_steps_overflow, "forgot")
    assert steps == 0  # no optimizer.step() ever ran: the first gradient overflowed and stayed in .grad
    assert len(findings) == 1  # each attempt is "step 1": warned once, as any step
    first = findings[0]
    assert first.message.startswith("step 1: the GradScaler skipped optimizer.step() again, and .grad still "
                                    "holds gradients of an earlier step that a GradScaler skipped")
    assert "Probably forgotten: optimizer.zero_grad() after a skipped step" in first.message
    assert first.lineno in marked_lines([amp_first_steps_overflow], "forgot")


def test_gradients_cleared_with_no_step_at_all_say_so_and_an_update_by_hand_uses_them():
    def run(update_by_hand: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            with ZeroGradGuard(optimizer, model=model) as guard:
                for i in range(3):
                    model(randn(4, 2, seed=i)).sum().backward()
                    with torch.no_grad():
                        for p in model.parameters():
                            if update_by_hand:
                                p -= 0.1 * p.grad  # plain SGD by hand: the gradient is used
                            p.grad = None
        return guard

    assert run(update_by_hand=True).findings == []
    guard = run(update_by_hand=False)
    assert [f.kind for f in guard.findings] == [DISCARDED]
    assert guard.findings[0].message.startswith("with no step at all: gradients computed since the guard "
                                                "started were cleared before an optimizer.step() could use them")


def test_nested_guards_on_one_optimizer_each_report_and_the_outer_outlives_the_inner():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ZeroGradGuard(optimizer) as outer:
            with ZeroGradGuard(optimizer) as inner:
                for _ in range(2):  # zero_grad() forgotten
                    model(torch.ones(2, 3)).sum().backward()
                    optimizer.step()
            model(torch.ones(2, 3)).sum().backward()
            optimizer.step()
    assert [f.step for f in inner.findings] == [2] and [f.step for f in outer.findings] == [2, 3]
    assert len(caught) == 3  # each guard warns for itself
    assert torch.optim.Optimizer.zero_grad.__name__ == "zero_grad" and not optimizer._optimizer_step_pre_hooks
