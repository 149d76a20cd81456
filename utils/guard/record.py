"""What the guard knows about one parameter's `.grad`, and a clear that lost something (notebook 08)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from utils.guard.reads import Summary
from utils.guard.sites import Stack

UNCONFIRMED = "unconfirmed"  # `old` after a step: what the step used is still there; checked when needed


class Record:
    """One parameter's `.grad` as last seen, and where its contributions come from."""

    __slots__ = ("param", "name", "index", "ref", "version", "pversion", "old", "checks", "origin",
                 "accs", "hand", "since", "mixed", "content", "refill", "skipped")

    def __init__(self, param: torch.Tensor, name: str, index: int) -> None:
        self.param, self.name, self.index = param, name, index  # index: the optimizer's order
        self.ref: weakref.ref | None = None  # the .grad tensor as last seen (weakly: ids get reused)
        self.version = 0  # its _version when last seen
        self.pversion = param._version  # the parameter's _version after the last accumulation or step
        self.old: bool | str = False  # holds contributions a step already used? (or UNCONFIRMED)
        self.checks: list[Summary] = []  # `old` holds only if each of these is not all zeros
        self.origin = "step"  # where old contributions came from: "step", "other", "start" or "joined"
        self.accs = 0  # backward() accumulations since the last step or clear
        self.hand = False  # holds a tensor assigned by hand (p.grad = g) since then
        self.since = 0  # how many other optimizers' steps had run at the first of those contributions
        self.mixed: str | None = None  # also holds contributions from before a "foreign" step, a "moved"
        # weight, or a step a GradScaler "skipped"
        self.content: Summary | None = None  # summary after a change by hand (None: unknown)
        self.refill: Lost | None = None  # cleared after another optimizer's step: fine if refilled
        self.skipped: int | None = None  # .grad's _version when a GradScaler skipped the step (not cleared since)

    def see(self, grad: torch.Tensor) -> None:
        """Remember this tensor and its version as the current state of `.grad`."""
        if self.ref is None or self.ref() is not grad:
            self.ref = weakref.ref(grad)
        self.version = grad._version

    @property
    def unconsumed(self) -> bool:
        """Does `.grad` hold contributions that no step has used yet?"""
        return self.accs > 0 or self.hand

    def reset(self) -> None:
        """Nothing old, nothing new: after a step used the contributions, or a clear."""
        self.old, self.checks, self.origin = False, [], "step"
        self.accs, self.hand, self.mixed, self.content, self.skipped = 0, False, None, None, None


@dataclass
class Lost:
    """Contributions cleared before a step used them, judged when the next step (or the end) comes."""

    record: Record
    clear: int  # one number per clearing call: a zero_grad() that skipped a step is judged whole
    size: Summary | None  # what was cleared (None: unknown, taken as finite and not all zeros)
    frames: Stack  # where the clear was called, or where the guard noticed it
    foreign: bool = False  # cleared after another optimizer's step, and not refilled before this one's
    by_hand: bool = False  # `p.grad = None` by hand, noticed afterwards (not a zero_grad() call)
