"""The fallback policy: a pure function (job, attempts so far, failure) -> next job, or stop with a reason.

The rungs themselves (what each one changes) are in compile/rungs.py; this module decides which one
applies after a failure: a timeout or a preemption resumes the same config, an OOM walks the
ladder (skipping rungs that change nothing, were tried, break a rule, or that the planner predicts
will not fit or, after a CUDA OOM, to need more GPU memory than the config that ran out), anything
else stops. No target is imported here: one policy serves all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.compile import rules
from orchestrator.compile.rungs import (
    ALLOC_CONF,
    EXPANDABLE,
    NOT_ABOUT_THE_ESTIMATE,
    RUNG_FUNCTIONS,
    config_key,
    config_line,
    expandable_segments,
    ladder,
    with_expandable_segments,
)
from orchestrator.lifecycle.classify import TAIL_BYTES, Outcome, fragmented_gib
from orchestrator.spec import regex
from orchestrator.spec.failure import Failure
from orchestrator.spec.models import Rule, TrainingJob, TrainingJobSpec
from orchestrator.spec.states import FailureKind

# Transient faults: the same config again, from the last checkpoint, counted by resilience.max_restarts (why each)
RESTART = {
    FailureKind.TIMEOUT: "the time limit ended it",
    FailureKind.PREEMPTED: "the cluster took its resources",
    FailureKind.HANG: "a hang is not the config's doing",
    FailureKind.NODE_FAULT: "the hardware failed, not the config",
    FailureKind.NETWORK: "the ranks lost each other, not the config's doing",
}
RETRY_SAME = tuple(RESTART)  # resume the same config
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
    rule = spec.resilience.rules[failure.rule] if failure.rule is not None and \
        failure.rule < len(spec.resilience.rules) else None
    if rule is not None:
        why = f"resilience.rules[{failure.rule}] ({rule.when.text()} -> {rule.then})"
        if rule.then == "fail":
            return Stop(f"{failure.kind}: {failure.reason}; {why}: not retried")
        if rule.then == "retry":
            return _restart(spec, tried, current, failure, why)
        if rule.then == "exclude_node":
            return _restart(spec, tried, current, failure, why, avoid=True)
        ladder_kind = failure.kind if failure.is_oom else FailureKind.CUDA_OOM  # "fallback": treat it as memory
        return _down_the_ladder(original, tried, current, failure, ladder_kind, fits, needs, why)
    if failure.kind is FailureKind.DISK_FULL:
        return Stop(f"{failure.reason}; a retry would fail the same way: free some space, then submit again (it "
                    "resumes from the last complete checkpoint)")
    if failure.kind in RESTART:
        return _restart(spec, tried, current, failure, RESTART[failure.kind],
                        avoid=failure.kind is FailureKind.NODE_FAULT)
    if not failure.is_oom:
        why = "user errors are never retried" if failure.kind is FailureKind.USER_ERROR else \
            "not an out-of-memory failure"
        return Stop(f"{failure.kind}: {failure.reason}; {why}")
    return _down_the_ladder(original, tried, current, failure, failure.kind, fits, needs, None)


# The worker's own exit code, which `accelerate launch` hides behind its 1: torchrun's failure block ("exitcode :
# 75 (pid: N)" under "Root Cause (first observed failure)") or the simple launcher's CalledProcessError.
_ROOT_EXIT = re.compile(r"Root Cause \(first observed failure\):[\s\S]{0,2000}?exitcode\s*:\s*(-?[0-9]{1,3}) ")
_CALLED_EXIT = re.compile(r"CalledProcessError: Command .{0,4000}? returned non-zero exit status ([0-9]{1,3})\.")


def exit_codes(outcome: Outcome) -> set[int]:
    """The exit codes a rule's `exit_code` is matched against: the launcher's and its worker's."""
    tail = outcome.log_tail[-TAIL_BYTES:]
    found = {int(m[1]) for pattern in (_ROOT_EXIT, _CALLED_EXIT) for m in pattern.finditer(tail)}
    return found | ({outcome.exit_code} if outcome.exit_code is not None else set())


def matching_rule(rules: Sequence[Rule], failure: Failure, outcome: Outcome) -> int | None:
    """The first of the spec's resilience rules that matches this failure (its index), or None. A cancel and a
    refusal are never matched: what follows them is not the user's policy to change."""
    if failure.kind in (FailureKind.CANCELLED, FailureKind.REFUSED):
        return None
    codes: set[int] | None = None
    for index, rule in enumerate(rules):
        when = rule.when
        if when.kind is not None and failure.kind.value == when.kind:
            return index
        if when.exit_code is not None:
            codes = exit_codes(outcome) if codes is None else codes
            if when.exit_code in codes:
                return index
        if when.log is not None and regex.search(when.log, outcome.log_tail[-TAIL_BYTES:]):
            return index
    return None


def restarts(tried: Sequence[TrainingJob]) -> int:
    """Attempts that ran the config of the attempt before them: restarts, not rungs."""
    return sum(config_key(a) == config_key(b) for a, b in zip(tried, tried[1:], strict=False))


def _restart(spec: TrainingJobSpec, tried: Sequence[TrainingJob], current: TrainingJob, failure: Failure,
             why: str, avoid: bool = False) -> Next | Stop:
    """The same config again; with `avoid`, away from the node the failure points at (when it points at one)."""
    done = restarts(tried)
    if done >= spec.resilience.max_restarts:
        return Stop(f"{failure.kind}: {failure.reason}; {why}, but {done} restart(s) of the same config were spent "
                    f"(resilience.max_restarts: {spec.resilience.max_restarts})")
    job, where = current, ""
    if avoid and failure.node:
        job = avoiding(current, failure.node)
        where = f", away from node {failure.node}"
    elif avoid:
        where = " (it points at no one node: none is avoided)"
    return Next(job, None, f"{failure.kind} ({failure.reason}): {why}; restart {done + 1} of "
                           f"{spec.resilience.max_restarts}{where}: resume the same config from the last checkpoint")


def avoiding(job: TrainingJob, *nodes: str) -> TrainingJob:
    """The job with `nodes` added to resources.avoid_nodes (the same config otherwise: a restart, not a rung)."""
    return avoiding_only(job, [*job.spec.resources.avoid_nodes, *nodes])


def avoiding_only(job: TrainingJob, nodes: Sequence[str]) -> TrainingJob:
    """The job with resources.avoid_nodes set to `nodes` (in order, once each)."""
    resources = job.spec.resources.model_copy(update={"avoid_nodes": list(dict.fromkeys(nodes))})
    return job.model_copy(update={"spec": job.spec.model_copy(update={"resources": resources})})


def _down_the_ladder(original: TrainingJob, tried: Sequence[TrainingJob], current: TrainingJob, failure: Failure,
                     kind: FailureKind, fits: Callable[[TrainingJob], bool] | None,
                     needs: Callable[[TrainingJob], int] | None, rule: str | None) -> Next | Stop:
    spec = original.spec
    configs = len(tried) - restarts(tried)
    if configs >= spec.fallback.max_attempts:
        besides = f", besides {len(tried) - configs} restart(s)" if len(tried) > configs else ""
        return Stop(f"stopped after {configs} attempts (fallback.max_attempts{besides}): last failure was "
                    f"{failure.kind}: {failure.reason}")
    if not spec.fallback.enabled:
        return Stop(f"{failure.kind}: {failure.reason}; fallback is disabled (spec.fallback.enabled: false)")
    if kind is FailureKind.CUDA_OOM and not expandable_segments(current) \
            and (stranded := fragmented_gib(f"{failure.reason}\n{failure.evidence}")) is not None:
        by = f" ({rule})" if rule else ""
        return Next(with_expandable_segments(current), "expandable_segments",
                    f"{failure.kind} ({failure.reason}) on {config_line(current)}{by} -> expandable_segments: "
                    f"{stranded:g} GiB were reserved but unallocated (fragmentation); {EXPANDABLE} in "
                    f"{ALLOC_CONF} lets the allocator use it, at no cost to speed")
    seen = {config_key(j) for j in tried}
    ceiling = needs(current) if needs is not None and kind is FailureKind.CUDA_OOM else None
    skipped: list[str] = []
    costlier: list[str] = []
    for rung in ladder(original):
        proposal = RUNG_FUNCTIONS[rung](current, kind)
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
        by = f" ({rule})" if rule else ""
        return Next(candidate, rung,
                    f"{failure.kind} ({failure.reason}) on {config_line(current)}{by} -> {rung}: {why}{note}")
    if costlier:
        also = f"; predicted not to fit: {', '.join(skipped)}" if skipped else ""
        return Stop(f"{failure.kind} on {config_line(current)}: every remaining rung is predicted to need more GPU "
                    f"memory than it ({', '.join(costlier)}){also}")
    if skipped:
        return Stop(f"{failure.kind} on {config_line(current)}: every remaining rung is predicted not to fit "
                    f"({', '.join(skipped)})")
    return Stop(f"{failure.kind} on {config_line(current)} and no rung of the ladder can go further")
