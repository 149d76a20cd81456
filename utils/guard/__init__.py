"""utils.guard: find a forgotten or misplaced `zero_grad()` in a training loop (notebook 08).

Three ways to use it:

    with ZeroGradGuard(optimizer):         # in your code: the loop, unchanged
        train(model, optimizer, data)

    python -m utils.guard train.py [args...]    # a script, unchanged: every optimizer it creates
    python -m utils.guard -m package.train      # a module, as python -m runs it
    torchrun --nproc_per_node=2 -m utils.guard train.py   # each worker of a distributed run

    %load_ext utils.guard                  # a notebook: every optimizer created afterwards
    %unload_ext utils.guard                # removes every hook

A `StaleGradientWarning` says a step is about to use contributions that are not its own:
gradients an earlier step already used (zero_grad forgotten, or done for some parameters
only), gradients piled up before a parameter joined the optimizer, gradients another
optimizer's loss left behind (a GAN), or, with `gradient_accumulation_steps=k`, more than k
backward() calls. A `DiscardedGradientWarning` says gradients were cleared before any step
used them (zero_grad between backward() and step(), inside an accumulation window, or of
an optimizer that had not stepped yet). Each names the step, the parameters, your line,
the probable mistake and the fix. To mark a clear as intended (gradients computed only to
be read), end its line with `# zero_grad: intended`.

What it does not see (by design or by necessity), with the way out:
- zeroing by hand in place (`p.grad.zero_()`) between backward() and step() looks like
  masking part of a gradient, which is correct, so it is not reported; `zero_grad()` is;
- `p.grad.data.zero_()` changes `.data`, whose version counter is its own: unseen between
  backward() and step() (before backward() it is fine);
- an in-place change after a step with no backward() since counts as new gradients set by
  hand (`p.grad.copy_(g)`), so stepping twice with clipping between is not reported;
- a tensor you assign to `.grad` counts as new gradients, even one made from old ones, and
  one cleared by hand before the next backward() or step() is never seen;
- a step that takes a closure (L-BFGS; PyTorch Lightning passes one to every step) is judged
  after it ran, on what the closure left in `.grad`, so a warning made an error stops the
  program after that step, not before; clears inside the closure are its own (L-BFGS
  evaluates it several times) and never reported;
- a step skipped by hand is recognised only when some gradient was not finite and the
  clear came from `zero_grad()`; any other intended clear needs `# zero_grad: intended`;
- gradients computed only to be read and then cleared (an adversarial example made with
  backward()) look like lost work: mark the clear, or use `torch.autograd.grad`;
- a window holding more backward() calls than it should is seen only with
  `gradient_accumulation_steps=` given;
- two optimizers that step at different rates on one shared backward() on purpose look
  like a GAN's leaked gradient (stale): end the slower one's `step()` line with the comment;
- a two-step method that moves the weights through `.data` (`p.data.add_(e)`), or moves
  only some of them, is not seen as one (a module that changes its own weight in its
  forward, `Embedding(max_norm=...)`, must not look like one): end its first step's line
  with the comment;
- `p.grad = None` by hand for some parameters, still None at the next step while that step
  uses the others' new gradients, is taken as freezing them for the step (DINO's
  `cancel_gradients_last_layer`), so it is not reported; for all of them, or refilled, it is;
- gradients cleared and then replaced by a tensor you assign (`p.grad = g`, not a view)
  count as read to make it (PCGrad's per-task gradients), so that clear is not reported;
- optimizers created before `%load_ext utils.guard` (or before the command line's script
  ran) are not guarded, nor those of processes a script starts itself
  (`torch.multiprocessing.spawn`): the command line says how many it started; guard them with
  `torchrun -m utils.guard train.py`, or ZeroGradGuard inside the worker function;
- a parameter that requires grad only around its backward(), switched by hand
  (`p.requires_grad = True`, backward(), `p.requires_grad = False`, then the step) is never
  watched: the guard hooks a parameter when it sees it require grad (at a zero_grad(), a
  step, or a module's `requires_grad_()`, which StyleGAN2-ADA's phases use); switch it with
  `module.requires_grad_()` instead.

Gradients cleared after the weights were changed by hand (the first pass of
sharpness-aware minimisation) count as used; steps skipped by a GradScaler are judged as
whole steps, and a skipped step's gradients left in `.grad` for the next backward() are
stale (every later step would be skipped too); gradients another optimizer's loss left in
`.grad` (a GAN) may be cleared; a parameter given to two optimizers that both step on one
backward() is stale at the second step (another optimizer's step used its gradient).
The parts: checker.py (the guard and its hooks), clears.py (zero_grad(), add_param_group(),
requires_grad_() and GradScaler.step() seen as they happen), verdicts.py and messages.py (what is reported), reads.py (one read per step),
sites.py (your line, the intended-clear comment), auto.py, cli.py and notebook.py (every
optimizer of a script or a notebook).
"""

from utils.guard.checker import ZeroGradGuard
from utils.guard.findings import DiscardedGradientWarning, Finding, StaleGradientWarning, ZeroGradWarning
from utils.guard.notebook import load_ipython_extension, unload_ipython_extension

__all__ = ["DiscardedGradientWarning", "Finding", "StaleGradientWarning", "ZeroGradGuard", "ZeroGradWarning",
           "load_ipython_extension", "unload_ipython_extension"]
