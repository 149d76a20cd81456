"""Training loops in the style of widely used public code: each correct one silent, each planted bug warned.

Each loop is written the way its model is (the PyTorch examples for MNIST, the word-level
language model and DCGAN; a popular WGAN-GP tutorial; nanoGPT's accumulation with a
GradScaler; accelerate's accumulation; fairseq's skip on overflow; HF Trainer's loop; ...),
shrunk to a few steps on seeded random data. `loop(bug)` runs it correct (bug=False) or with
one planted mistake (bug=True); the test runs both under guards on every optimizer.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.guard import DiscardedGradientWarning, StaleGradientWarning, ZeroGradGuard, ZeroGradWarning

STALE, DISCARDED = StaleGradientWarning, DiscardedGradientWarning
LOOPS: list[tuple] = []  # (loop, the class its planted bug gets, options for the guards)


def loop(kind: type, **options):
    def register(fn):
        LOOPS.append((fn, kind, options))
        return fn
    return register


class Guarded:
    """Guard every optimizer built inside a loop: the loop calls `g(optimizer)` on each."""

    def __init__(self, **options) -> None:
        self.options, self.guards = options, []

    def __call__(self, optimizer):
        self.guards.append(ZeroGradGuard(optimizer, max_warnings=None, **self.options))
        return optimizer


def run(fn, bug: bool, **options):
    guarded = Guarded(**options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn(guarded, bug)
        finally:
            for guard in guarded.guards:
                guard.remove()
    return guarded.guards, [w.category for w in caught if issubclass(w.category, ZeroGradWarning)]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- 1. the MNIST example: Adadelta, StepLR, zero_grad() first --------------------------------------------
class MnistNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, 1), nn.Conv2d(4, 8, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(8 * 4 * 4, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = torch.flatten(self.dropout1(F.max_pool2d(x, 2)), 1)
        return F.log_softmax(self.fc2(self.dropout2(F.relu(self.fc1(x)))), dim=1)


@loop(DISCARDED)
def mnist_example(g, bug):
    torch.manual_seed(1)
    model = MnistNet()
    optimizer = g(torch.optim.Adadelta(model.parameters(), lr=1.0))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    images, labels = torch.randn(32, 1, 12, 12, generator=gen(0)), torch.randint(0, 10, (32,), generator=gen(1))
    for epoch in range(2):
        model.train()
        for data, target in zip(images.split(8), labels.split(8)):
            if not bug:
                optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
            loss.backward()
            if bug:
                optimizer.zero_grad()  # planted: between backward() and step()
            optimizer.step()
        scheduler.step()


# -- 2. the word-level language model: tied weights, truncated BPTT, clipping ---------------------------------
class RNNModel(nn.Module):
    def __init__(self, ntoken: int = 20, ninp: int = 8, nhid: int = 8) -> None:
        super().__init__()
        self.encoder, self.rnn = nn.Embedding(ntoken, ninp), nn.LSTM(ninp, nhid)
        self.decoder = nn.Linear(nhid, ntoken)
        self.decoder.weight = self.encoder.weight  # tied weights (nhid == ninp)

    def forward(self, x, hidden):
        output, hidden = self.rnn(self.encoder(x), hidden)
        return F.log_softmax(self.decoder(output), dim=-1), hidden


def repackage_hidden(h):
    """Wraps hidden states in new Tensors, to detach them from their history."""
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)


@loop(STALE)
def word_language_model(g, bug):
    torch.manual_seed(2)
    model = RNNModel()
    optimizer = g(torch.optim.SGD(model.parameters(), lr=2.0))
    train_data, bptt = torch.randint(0, 20, (41, 4), generator=gen(2)), 8
    hidden = (torch.zeros(1, 4, 8), torch.zeros(1, 4, 8))
    for i in range(0, train_data.size(0) - 1, bptt):
        seq_len = min(bptt, len(train_data) - 1 - i)
        data, targets = train_data[i:i + seq_len], train_data[i + 1:i + 1 + seq_len].reshape(-1)
        hidden = repackage_hidden(hidden)
        if bug:
            model.decoder.zero_grad()  # planted: the tied weight and the decoder bias only; the LSTM piles up
        else:
            model.zero_grad()
        output, hidden = model(data, hidden)
        loss = F.nll_loss(output.view(-1, 20), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()


# -- 3. DCGAN: netD.zero_grad(), two backward()s, step; netG.zero_grad(), backward, step ---------------------
@loop(STALE)
def dcgan(g, bug):
    torch.manual_seed(3)
    netG = nn.Sequential(nn.ConvTranspose2d(4, 8, 4, 1, 0, bias=False), nn.BatchNorm2d(8), nn.ReLU(True),
                         nn.ConvTranspose2d(8, 1, 4, 2, 1, bias=False), nn.Tanh())
    netD = nn.Sequential(nn.Conv2d(1, 8, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
                         nn.Conv2d(8, 1, 4, 1, 0, bias=False), nn.Sigmoid())
    criterion = nn.BCELoss()
    optimizerD = g(torch.optim.Adam(netD.parameters(), lr=0.0002, betas=(0.5, 0.999)))
    optimizerG = g(torch.optim.Adam(netG.parameters(), lr=0.0002, betas=(0.5, 0.999)))
    real_label, fake_label = 1.0, 0.0
    for i in range(4):
        real = torch.randn(6, 1, 8, 8, generator=gen(10 + i)).tanh()
        netD.zero_grad()
        label = torch.full((6,), real_label)
        errD_real = criterion(netD(real).view(-1), label)
        errD_real.backward()
        noise = torch.randn(6, 4, 1, 1, generator=gen(20 + i))
        fake = netG(noise)
        label.fill_(fake_label)
        errD_fake = criterion(netD(fake.detach()).view(-1), label)
        errD_fake.backward()
        optimizerD.step()
        if not bug:
            netG.zero_grad()  # planted bug: forgotten
        label.fill_(real_label)
        errG = criterion(netD(fake).view(-1), label)
        errG.backward()
        optimizerG.step()


# -- 4. WGAN-GP: critic iterations with a gradient penalty; the generator's fake is not detached --------------
def gradient_penalty(critic, real, fake):
    epsilon = torch.rand(real.shape[0], 1, generator=gen(99)).expand_as(real)
    interpolated = (real * epsilon + fake * (1 - epsilon)).requires_grad_(True)
    mixed = critic(interpolated)
    gradient = torch.autograd.grad(inputs=interpolated, outputs=mixed, grad_outputs=torch.ones_like(mixed),
                                   create_graph=True, retain_graph=True)[0]
    return ((gradient.norm(2, dim=1) - 1) ** 2).mean()


@loop(STALE)
def wgan_gp(g, bug):
    torch.manual_seed(4)
    gen_net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    critic = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    opt_gen = g(torch.optim.Adam(gen_net.parameters(), lr=1e-4, betas=(0.0, 0.9)))
    opt_critic = g(torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.0, 0.9)))
    for batch_idx in range(3):
        real = torch.randn(8, 3, generator=gen(30 + batch_idx))
        if bug:
            critic.zero_grad()  # planted: once before the critic loop, so its steps pile up
        for _ in range(5):  # CRITIC_ITERATIONS
            fake = gen_net(torch.randn(8, 2, generator=gen(40 + batch_idx)))
            critic_real, critic_fake = critic(real).reshape(-1), critic(fake).reshape(-1)
            gp = gradient_penalty(critic, real, fake)
            loss_critic = -(torch.mean(critic_real) - torch.mean(critic_fake)) + 10 * gp
            if not bug:
                critic.zero_grad()
            loss_critic.backward(retain_graph=True)  # fills the generator's .grad too: cleared below
            opt_critic.step()
        gen_fake = critic(fake).reshape(-1)
        loss_gen = -torch.mean(gen_fake)
        gen_net.zero_grad()
        loss_gen.backward()
        opt_gen.step()


# -- 5. nanoGPT: micro-steps, GradScaler, unscale_, clipping, decay groups, tied embedding -------------------------
class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 16, n_embd: int = 8, block: int = 6) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(block, n_embd)
        self.ln, self.attn = nn.LayerNorm(n_embd), nn.MultiheadAttention(n_embd, 2, batch_first=True)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.register_buffer("mask", torch.triu(torch.ones(block, block, dtype=torch.bool), 1))

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        h = self.ln(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def configure_optimizers(model, weight_decay, learning_rate):
    params = [p for p in model.parameters() if p.requires_grad]
    decay, nodecay = [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": nodecay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.95))


@loop(DISCARDED)
def nanogpt(g, bug):
    torch.manual_seed(5)
    model = TinyGPT()
    optimizer = g(configure_optimizers(model, 0.1, 1e-3))
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    ctx = torch.autocast("cpu", dtype=torch.float16)
    gradient_accumulation_steps, data = 3, torch.randint(0, 16, (40, 7), generator=gen(5))
    batches = iter(data.split(4))
    X = next(batches)
    for iter_num in range(3):
        for micro_step in range(gradient_accumulation_steps):
            if bug:
                optimizer.zero_grad(set_to_none=True)  # planted: inside the micro-step loop
            with ctx:
                logits, loss = model(X[:, :-1], X[:, 1:])
                loss = loss / gradient_accumulation_steps
            X = next(batches)
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


# -- 6. accelerate-style accumulation: the wrapper skips step/zero_grad until the window (or the data) ends ------
class AccumulatingOptimizer:
    """What `accelerator.accumulate(model)` does to optimizer.step() and zero_grad()."""

    def __init__(self, optimizer, state) -> None:
        self.optimizer, self.state = optimizer, state

    def step(self):
        if self.state["sync_gradients"]:
            self.optimizer.step()

    def zero_grad(self, set_to_none=True):
        if self.state["sync_gradients"]:
            self.optimizer.zero_grad(set_to_none=set_to_none)


@loop(STALE, gradient_accumulation_steps=4)
def accelerate_accumulate(g, bug):
    """10 micro-batches per epoch, 4 per window: the last window of an epoch has 2."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Linear(8, 1))
    state = {"sync_gradients": True}
    optimizer = AccumulatingOptimizer(g(torch.optim.AdamW(model.parameters(), lr=1e-3)), state)
    scheduler_steps, steps = 0, 4
    for epoch in range(2):
        for step in range(10):
            end_of_dataloader = step == 9
            # accelerate syncs at a full window and at the end of the data; the bug: only at full windows
            state["sync_gradients"] = (step + 1) % steps == 0 or (end_of_dataloader and not bug)
            X, y = torch.randn(4, 3, generator=gen(60 + step)), torch.randn(4, 1, generator=gen(70 + step))
            loss = F.mse_loss(model(X), y) / steps  # accelerator.backward(loss) divides
            loss.backward()
            optimizer.step()
            scheduler_steps += state["sync_gradients"]
            optimizer.zero_grad()


# -- 7. fairseq-style dynamic loss scaling: an overflow skips the step and zeroes -------------------------------
@loop(DISCARDED)
def fairseq_skip_on_overflow(g, bug):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = g(torch.optim.Adam(model.parameters(), lr=1e-3))
    params, loss_scale = list(model.parameters()), 2.0**120
    for update in range(6):
        if not bug:
            optimizer.zero_grad()  # train_step() starts by zeroing
        sample = torch.randn(8, 4, generator=gen(update)) * (1e3 if update == 0 else 1.0)
        loss = F.mse_loss(model(sample), torch.zeros(8, 1))
        (loss * loss_scale).backward()  # scaled: the first updates overflow
        if bug:
            optimizer.zero_grad()  # planted: the zeroing moved after backward()
        try:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(1.0 / loss_scale)  # unscale
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 0.1)
            if not torch.isfinite(grad_norm):
                raise OverflowError(f"gradient overflow, loss scale {loss_scale}")
            optimizer.step()
        except OverflowError:
            loss_scale /= 2.0**64  # ignoring the gradient: the next train_step zeroes it
            optimizer.zero_grad()


# -- 8. lazy modules: the optimizer is built before the first forward ----------------------------------------------
@loop(STALE)
def lazy_modules(g, bug):
    torch.manual_seed(8)
    model = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    optimizer = g(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    for i in range(4):
        if not bug:
            optimizer.zero_grad()
        images, labels = torch.randn(4, 1, 6, 6, generator=gen(80 + i)), torch.randint(0, 3, (4,), generator=gen(i))
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()


# -- 9. parameter groups: a backbone at a lower learning rate, cleared by hand by a "fast" zero_grad ---------------
@loop(STALE)
def parameter_groups(g, bug):
    torch.manual_seed(9)
    backbone, head = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 2)
    optimizer = g(torch.optim.SGD([{"params": backbone.parameters(), "lr": 1e-3},
                                   {"params": head.parameters()}], lr=1e-2, momentum=0.9))
    for i in range(4):
        groups = optimizer.param_groups[1:] if bug else optimizer.param_groups  # planted: the head's only
        for group in groups:
            for p in group["params"]:
                p.grad = None
        X, y = torch.randn(8, 4, generator=gen(90 + i)), torch.randint(0, 2, (8,), generator=gen(i))
        F.cross_entropy(head(backbone(X)), y).backward()
        optimizer.step()


# -- 10. torch.compile ------------------------------------------------------------------------------------------
_compiled: dict[str, nn.Module] = {}


@loop(STALE)
def torch_compile(g, bug):
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 1))
    if "model" not in _compiled:  # compile once for both runs (the planted bug changes the loop, not the model)
        _compiled["model"] = torch.compile(model, backend=COMPILE_BACKEND)
    compiled = _compiled["model"]
    compiled._orig_mod.load_state_dict(model.state_dict())
    for p in compiled.parameters():
        p.grad = None
    optimizer = g(torch.optim.AdamW(compiled.parameters(), lr=1e-3))
    for i in range(4):
        if not bug:
            optimizer.zero_grad(set_to_none=True)
        X, y = torch.randn(8, 4, generator=gen(100 + i)), torch.randn(8, 1, generator=gen(110 + i))
        F.mse_loss(compiled(X), y).backward()
        optimizer.step()


# -- 11. HF Trainer-style: accumulation, clipping, a warm-up schedule, model.zero_grad() after the step -----------
@loop(DISCARDED)
def trainer_style(g, bug):
    torch.manual_seed(11)
    model = nn.Sequential(nn.Embedding(12, 8), nn.Flatten(), nn.Linear(24, 2))
    optimizer = g(torch.optim.AdamW(model.parameters(), lr=5e-5))
    warmup, total = 2, 6
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup)))
    gradient_accumulation_steps = 2
    model.zero_grad()
    for step in range(12):
        inputs, labels = torch.randint(0, 12, (4, 3), generator=gen(step)), torch.randint(0, 2, (4,), generator=gen(step))
        loss = F.cross_entropy(model(inputs), labels) / gradient_accumulation_steps
        loss.backward()
        if bug:
            model.zero_grad()  # planted: after every micro-batch
        if (step + 1) % gradient_accumulation_steps == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            model.zero_grad()


# -- 12. several losses, each with its own backward() (multi-task, deep supervision) ----------------------------
@loop(DISCARDED)
def several_losses(g, bug):
    torch.manual_seed(12)
    trunk, heads = nn.Linear(4, 8), nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 3)])
    optimizer = g(torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=0.01))
    for i in range(4):
        optimizer.zero_grad()
        X = torch.randn(8, 4, generator=gen(120 + i))
        F.mse_loss(heads[0](torch.tanh(trunk(X))), torch.randn(8, 1, generator=gen(i))).backward()
        if bug:
            optimizer.zero_grad()  # planted: between the two tasks' backward() calls
        F.cross_entropy(heads[1](torch.tanh(trunk(X))), torch.randint(0, 3, (8,), generator=gen(i))).backward()
        optimizer.step()


# -- 13. DDPG-style actor-critic: the actor's loss runs through the critic --------------------------------------
@loop(STALE)
def actor_critic(g, bug):
    torch.manual_seed(13)
    actor, critic = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)), nn.Linear(4, 1)
    actor_optimizer = g(torch.optim.Adam(actor.parameters(), lr=1e-3))
    critic_optimizer = g(torch.optim.Adam(critic.parameters(), lr=1e-3))
    for i in range(4):
        state, action = torch.randn(8, 3, generator=gen(130 + i)), torch.randn(8, 1, generator=gen(140 + i))
        target_q = torch.randn(8, 1, generator=gen(150 + i))
        if not bug:
            critic_optimizer.zero_grad()
        critic_loss = F.mse_loss(critic(torch.cat([state, action], 1)), target_q)
        critic_loss.backward()
        critic_optimizer.step()
        if bug:
            critic_optimizer.zero_grad()  # planted: after the step, so the actor's backward below leaks in
        actor_loss = -critic(torch.cat([state, actor(state)], 1)).mean()
        actor_optimizer.zero_grad()
        actor_loss.backward()  # also fills the critic's .grad
        actor_optimizer.step()


# -- 14. Reptile-style meta-learning: the outer gradient is written by hand ------------------------------------------
@loop(DISCARDED)
def reptile(g, bug):
    torch.manual_seed(14)
    model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
    meta_optimizer = g(torch.optim.Adam(model.parameters(), lr=0.1))
    for iteration in range(3):
        weights_before = [p.detach().clone() for p in model.parameters()]
        inner_optimizer = torch.optim.SGD(model.parameters(), lr=0.02)  # unguarded: the inner loop is its own
        x = torch.linspace(-5, 5, 10).unsqueeze(1)
        y = torch.sin(x + iteration)
        for _ in range(3):
            inner_optimizer.zero_grad()
            F.mse_loss(model(x), y).backward()
            inner_optimizer.step()
        with torch.no_grad():
            for p, before in zip(model.parameters(), weights_before):
                p.grad = before - p  # the outer "gradient": minus the inner loop's move
                p.copy_(before)
        if bug:
            meta_optimizer.zero_grad()  # planted: clears the gradient just written
        meta_optimizer.step()


# -- 15. sharpness-aware minimisation, two forward-backward passes per step -----------------------------------------
@loop(STALE)
def sam_two_steps(g, bug):
    from test_guard_cases import SAM

    torch.manual_seed(15)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    g(optimizer.base_optimizer)
    for i in range(4):
        inputs, targets = torch.randn(8, 4, generator=gen(160 + i)), torch.randint(0, 2, (8,), generator=gen(i))
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.first_step(zero_grad=not bug)  # planted: the first pass's gradient is kept
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.second_step(zero_grad=True)


# -- 16. a sparse embedding with SparseAdam beside a dense Adam ------------------------------------------------------
@loop(STALE)
def sparse_and_dense(g, bug):
    torch.manual_seed(16)
    embedding, head = nn.Embedding(50, 8, sparse=True), nn.Linear(8, 1)
    sparse_optimizer = g(torch.optim.SparseAdam(list(embedding.parameters()), lr=0.01))
    dense_optimizer = g(torch.optim.Adam(head.parameters(), lr=0.01))
    for i in range(4):
        if not bug:
            sparse_optimizer.zero_grad()  # planted bug: forgotten for the sparse part
        dense_optimizer.zero_grad()
        tokens = torch.randint(0, 50, (8, 3), generator=gen(170 + i))
        F.mse_loss(head(embedding(tokens).mean(1)), torch.randn(8, 1, generator=gen(i))).backward()
        sparse_optimizer.step()
        dense_optimizer.step()


# -- 17. L-BFGS with a closure, then Adam fine-tuning of the last layer ---------------------------------------------
@loop(STALE)
def lbfgs_then_adam(g, bug):
    torch.manual_seed(17)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    X, y = torch.randn(32, 2, generator=gen(17)), torch.randn(32, 1, generator=gen(18))
    lbfgs = g(torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4))

    def closure():
        lbfgs.zero_grad()
        loss = F.mse_loss(model(X), y)
        loss.backward()
        return loss

    for _ in range(2):
        lbfgs.step(closure)
    adam = g(torch.optim.Adam(model[2].parameters(), lr=1e-3))
    if not bug:
        adam.zero_grad()  # planted bug: L-BFGS's last gradient is still in the head's .grad
    for i in range(3):
        F.mse_loss(model(X), y).backward()
        adam.step()
        adam.zero_grad()


# -------------------------------------------------------------------------------------------------------------------
def _compile_backend() -> str:
    """inductor where a C++ compiler makes it run, else aot_eager (still AOTAutograd's compiled backward)."""
    try:
        probe = torch.compile(nn.Linear(2, 1), backend="inductor")
        probe(torch.ones(1, 2)).sum().backward()
        return "inductor"
    except Exception:
        return "aot_eager"


COMPILE_BACKEND = "aot_eager"


def test_there_are_at_least_fifteen_loops():
    assert len(LOOPS) >= 15


@pytest.mark.parametrize("fn, kind, options", LOOPS, ids=[fn.__name__ for fn, _, _ in LOOPS])
def test_each_correct_loop_is_silent_and_its_planted_bug_warned_with_the_right_class(fn, kind, options):
    guards, caught = run(fn, bug=False, **options)
    assert caught == [], [f.message for g in guards for f in g.findings]
    assert all(g.steps > 0 for g in guards)
    guards, caught = run(fn, bug=True, **options)
    assert caught and set(caught) == {kind}, [f.message for g in guards for f in g.findings]


def test_torch_compile_with_inductor_where_it_runs():
    """The same loop on a model compiled by inductor (C++ code generation), when this machine can."""
    global COMPILE_BACKEND
    if _compile_backend() != "inductor":
        pytest.skip("inductor does not run here (no C++ compiler); aot_eager is tested above")
    COMPILE_BACKEND, saved = "inductor", dict(_compiled)
    _compiled.clear()
    try:
        assert run(torch_compile, bug=False)[1] == []
        assert set(run(torch_compile, bug=True)[1]) == {STALE}
    finally:
        COMPILE_BACKEND = "aot_eager"
        _compiled.clear()
        _compiled.update(saved)
