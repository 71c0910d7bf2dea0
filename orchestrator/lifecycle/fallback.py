"""The fallback policy: a pure function (job, attempts so far, failure) -> next job, or stop with a reason.

The rungs themselves (what each one changes) are in compile/rungs.py; this module decides which one
applies after a failure: a timeout or a preemption resumes the same config, an OOM walks the
ladder (skipping rungs that change nothing, were tried, break a rule, or that the planner predicts
will not fit or, after a CUDA OOM, to need more GPU memory than the config that ran out), anything
else stops. No target is imported here: one policy serves all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.compile import rules
from orchestrator.compile.rungs import NOT_ABOUT_THE_ESTIMATE, RUNG_FUNCTIONS, config_key, config_line, ladder
from orchestrator.spec.failure import Failure
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.states import FailureKind

RETRY_SAME = (FailureKind.TIMEOUT, FailureKind.PREEMPTED)  # resume the same config
RETRY_RUNG = "retry"  # what a same-config attempt is counted as (metrics)


@dataclass(frozen=True)
class Next:
    job: TrainingJob
    rung: str | None  # None when the same config is retried
    reason: str


@dataclass(frozen=True)
class Stop:
    reason: str


def next_step(original: TrainingJob, tried: Sequence[TrainingJob], failure: Failure,
              fits: Callable[[TrainingJob], bool] | None = None,
              needs: Callable[[TrainingJob], int] | None = None) -> Next | Stop:
    """Decide what follows a failed attempt. `tried` holds every attempt's job so far, the last one last.
    `fits` (the memory planner's prediction, when it applies) skips rungs predicted not to fit; `needs` (its
    estimate per GPU) skips, after a CUDA OOM, rungs predicted to need more GPU memory than the config that ran
    out: DeepSpeed's buckets are fixed sizes, so sharding a small model more, or on one GPU, costs more than it
    saves. Rungs whose point is not the estimate (rungs.NOT_ABOUT_THE_ESTIMATE) are judged by `fits` alone."""
    current = tried[-1] if tried else original
    spec = original.spec
    if failure.kind is FailureKind.CANCELLED:
        return Stop("cancelled by the user")
    if failure.kind is FailureKind.REFUSED:
        return Stop(f"{failure.reason}; the same request would be refused again")
    if failure.kind is FailureKind.DISK_FULL:
        return Stop(f"{failure.reason}; a retry would fail the same way: free some space, then submit again (it "
                    "resumes from the last complete checkpoint)")
    if len(tried) >= spec.fallback.max_attempts:
        return Stop(f"stopped after {len(tried)} attempts (fallback.max_attempts): last failure was {failure.kind}: "
                    f"{failure.reason}")
    if failure.kind in RETRY_SAME:
        return Next(current, None, f"{failure.reason}: resume the same config from the last checkpoint")
    if not failure.is_oom:
        why = "user errors are never retried" if failure.kind is FailureKind.USER_ERROR else \
            "not an out-of-memory failure"
        return Stop(f"{failure.kind}: {failure.reason}; {why}")
    if not spec.fallback.enabled:
        return Stop(f"{failure.kind}: {failure.reason}; fallback is disabled (spec.fallback.enabled: false)")
    seen = {config_key(j) for j in tried}
    ceiling = needs(current) if needs is not None and failure.kind is FailureKind.CUDA_OOM else None
    skipped: list[str] = []
    costlier: list[str] = []
    for rung in ladder(original):
        proposal = RUNG_FUNCTIONS[rung](current, failure.kind)
        if proposal is None:
            continue
        candidate, why = proposal
        if config_key(candidate) in seen or rules.errors(rules.check(candidate)):
            continue
        if fits is not None and not fits(candidate):
            skipped.append(rung)
            continue
        if ceiling is not None and needs is not None and rung not in NOT_ABOUT_THE_ESTIMATE \
                and needs(candidate) > ceiling:
            costlier.append(rung)
            continue
        notes = ([f"skipped, predicted not to fit: {', '.join(skipped)}"] if skipped else []) + \
            ([f"skipped, predicted to need more GPU memory: {', '.join(costlier)}"] if costlier else [])
        note = f" ({'; '.join(notes)})" if notes else ""
        return Next(candidate, rung,
                    f"{failure.kind} ({failure.reason}) on {config_line(current)} -> {rung}: {why}{note}")
    if costlier:
        also = f"; predicted not to fit: {', '.join(skipped)}" if skipped else ""
        return Stop(f"{failure.kind} on {config_line(current)}: every remaining rung is predicted to need more GPU "
                    f"memory than it ({', '.join(costlier)}){also}")
    if skipped:
        return Stop(f"{failure.kind} on {config_line(current)}: every remaining rung is predicted not to fit "
                    f"({', '.join(skipped)})")
    return Stop(f"{failure.kind} on {config_line(current)} and no rung of the ladder can go further")
