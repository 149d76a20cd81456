"""Verdicts at a step (notebook 08): read what needs reading, once, then warn about stale or lost gradients.

`judge` is called by a ZeroGradGuard just before `optimizer.step()` (and when the guard is
removed) when something may be wrong: parameters whose `.grad` may still hold old
contributions, contributions cleared before a step used them, or (with
`gradient_accumulation_steps`) a window too long. It reads the summaries those need in one
transfer, drops what turns out fine (old contributions since zeroed; a clear that lost only
zeros; a clear of a step skipped because a gradient was not finite, judged for the whole
clear; a clear marked `# zero_grad: intended`), and warns about the rest.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from utils.guard import messages
from utils.guard.findings import DiscardedGradientWarning, Finding, StaleGradientWarning, make_finding, warn
from utils.guard.reads import finite, nonzero, read
from utils.guard.record import Lost, Record
from utils.guard.sites import Stack, intended, stack


def judge(guard: Any, *, step: int, after_last: bool, candidates: list[Record], used: bool = False) -> None:
    """Warn about step `step` of `guard` (or about what came after its last step, `after_last`)."""
    records = list(guard._records.values())
    lost, guard._lost = guard._lost, []
    pending = [s for r in candidates if r.old is True for s in r.checks]
    pending += [entry.size for entry in lost if entry.size is not None]
    values = iter(read(pending))  # the one read of this step, when there is anything to read
    for r in candidates:
        if r.old is True:  # old contributions are still there unless something zeroed them
            checked = [next(values) for _ in r.checks]
            r.old, r.checks = all(nonzero(v) for v in checked), []
    sizes = {id(entry): next(values) for entry in lost if entry.size is not None}
    if not after_last:  # `p.grad = None` by hand for some parameters only, kept None: frozen for this step
        fresh = any(r.unconsumed for r in records)
        lost = [e for e in lost if not (e.by_hand and fresh and e.record.param.grad is None)]
    _judge_lost(guard, lost, sizes, len(records), step, after_last)
    if after_last:
        return
    groups: dict[str, list[Record]] = {}
    for r in candidates:
        if r.old is True:
            groups.setdefault("old", []).append(r)
        if r.mixed is not None:
            groups.setdefault(r.mixed, []).append(r)
    if "moved" in groups and len(groups["moved"]) < sum(r.unconsumed for r in records):
        del groups["moved"]  # only some weights changed in place (Embedding(max_norm=...)): not a two-step method
    k = guard.gradient_accumulation_steps
    if k is not None and any(r.accs > k for r in records):
        groups["overfull"] = [r for r in records if r.accs > k]
    _warn_stale(guard, groups, len(records), step, used=used)


def judge_skipped(guard: Any, *, step: int, flagged: list[Record]) -> None:
    """Warn about an attempt at step `step` that a GradScaler skipped again, on gradients never cleared.

    Once per step number: every later attempt is skipped the same way, and none advances the count.
    """
    if any(f.step == step and f.kind is StaleGradientWarning for f in guard.findings):
        return
    _warn_stale(guard, {"skipped": flagged}, len(guard._records), step, skipped_again=True)


def _warn_stale(guard: Any, groups: dict[str, list[Record]], total: int, step: int,
                skipped_again: bool = False, used: bool = False) -> None:
    frames = stack() if groups else ()
    if groups and not intended(frames):
        flagged = sorted({r.index: r for g in groups.values() for r in g}.values(), key=lambda r: r.index)
        message = messages.stale(groups, total, step, guard.gradient_accumulation_steps,
                                 skipped_again=skipped_again, used=used)
        emit(guard, make_finding(step, StaleGradientWarning, [r.name for r in flagged], message, frames), frames)


def _judge_lost(guard: Any, lost: list[Lost], sizes: dict[int, float], total: int, step: int,
                after_last: bool) -> None:
    skipped = {entry.clear for entry in lost if not finite(sizes.get(id(entry), 0.0))}
    kept = [entry for entry in lost if entry.clear not in skipped  # a skipped step is judged whole
            and nonzero(sizes.get(id(entry), 1.0)) and not intended(entry.frames)]
    if not kept:
        return
    first: dict[int, Lost] = {}
    for entry in kept:
        first.setdefault(entry.record.index, entry)
    entries = [first[i] for i in sorted(first)]
    places = {"foreign" if e.foreign else "end" if after_last else
              "window" if e.record.unconsumed else "step" for e in entries}
    frames = entries[0].frames or stack()
    message = messages.discarded([e.record for e in entries], places, total, step, after_last)
    emit(guard, make_finding(step, DiscardedGradientWarning, [e.record.name for e in entries], message, frames),
         frames)


def emit(guard: Any, finding: Finding, frames: Stack) -> None:
    """Keep a finding; show it (a warning, or the guard's `report`) unless over `max_warnings`."""
    if guard._muted():
        return  # an explicit guard watches this optimizer and reports for it
    guard.findings.append(finding)
    count = guard._warned[finding.kind] = guard._warned[finding.kind] + 1
    if guard.max_warnings is not None and count > guard.max_warnings:
        return
    if guard.max_warnings is not None and count == guard.max_warnings:
        where = "the summary at the end counts them" if guard._automatic else "guard.findings lists them all"
        finding = replace(finding, message=finding.message + f" (Further {finding.kind.__name__}s "
                          f"are not shown; {where}.)")
    if guard.report is not None:
        guard.report(finding)
    else:
        warn(finding, frames)
