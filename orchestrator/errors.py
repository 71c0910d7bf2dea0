"""One family for every error shardctl raises to its callers: a few clear lines and an exit code, never a traceback.

Every error class the package raises to its callers is defined here (the modules that raise them import
them from here), grouped by what the caller should do about it:

    ShardctlError                 the base: `lines()` to print, `exit_code` for the CLI (2 unless said)
      BadInput                    fix the input (the spec, an override, a file, a path) first: nothing was done
        SpecError, OverrideError, InvalidSpec, CompileError, RenderError, ConvertError, ImportRefused,
        ModelConfigError, SnapshotError, NodeLocalPath, PolicyError, UnknownTarget, FunctionPickleError
      StoreError                  the job store has no such job, or cannot be read or written
        StoreFull                 its filesystem has no space left (or the quota is spent): wait, nothing is lost
      TargetError                 a target (local, Slurm, Kubernetes) did not do what was asked
        Refused (SubmitError)     for good: the request is wrong or not allowed; do not retry it as it is
          SlurmRefused            sbatch refused the request (nothing was submitted)
        Unavailable               no answer now, retry later: a timeout, a 5xx, an unreachable API server
          SlurmUnavailable        a read-only Slurm command (sacct, squeue, sinfo; scancel) failed
          SlurmTimeout            a Slurm command hung: it may have acted (an sbatch may have submitted)
          SubmitDeferred          the target cannot take the attempt now but may later (an exceeded quota)
        Conflict                  someone else changed or holds it: a 409, a name taken by another object
      JobOutcome                  the job ended without what was asked, or waiting for it ran out (exit 1)
        JobFailed, FunctionFailed, WaitTimeout, ResultTooBig (exit 2: the fix is in the code)

Who relies on the split: a supervisor that submits an attempt ends it refused on a Refused, but on any other
TargetError (no answer: it may have been submitted) leaves it starting and looks it up at the next step; the
Kubernetes controller ends an attempt refused on a Refused and retries it with backoff on a SubmitDeferred or a
Conflict; deleting a TrainingJob takes a Conflict (its uid precondition failed) as "a newer one of that name,
not ours". Input errors are located the same way everywhere (`FILE:LINE: field: message`, see `located`), so
an editor or CI can jump to the line; errors from a target say what is wrong in its own words and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

EXIT_FAILED = 1  # the job, or an operation on it, failed
EXIT_BAD_INPUT = 2  # the input or the environment must be fixed first; nothing was done


class ShardctlError(Exception):
    """Base of every error shown to the user as lines rather than a traceback."""

    exit_code = EXIT_BAD_INPUT

    def lines(self) -> list[str]:
        return str(self).splitlines() or [type(self).__name__]


# --- bad input: fix it first, nothing was done (exit 2) ---------------------------------------------------------


class BadInput(ShardctlError):
    """The input (a spec, an override, a config file, a path, a function's call) must be fixed first; nothing was
    done. Never retried: the same input fails the same way."""


class Located(Protocol):
    """One located input problem (spec.loader.Problem, compile.rules.Finding); its str is the line printed."""

    @property
    def field(self) -> str: ...

    @property
    def message(self) -> str: ...


@dataclass
class SpecError(BadInput):
    """The spec file breaks the schema (raised by spec.loader: load_spec, parse_spec_text): one located problem
    (spec.loader.Problem) a line."""

    problems: Sequence[Located] = field(default_factory=list)
    # The spec with every invalid field taken out (a spec.loader.LoadedSpec whose reads of an invalid field raise
    # InvalidFieldRead), when that much is valid: the caller can then run the cross-field rules and report their
    # errors in the same round.
    partial: Any = None

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class OverrideError(BadInput):
    """An override (`--set key=value`, `overrides=`) that cannot be read or applied, or that makes the spec invalid
    (raised by api/overrides.py and api/sweep.py): one line each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self._lines = lines

    def lines(self) -> list[str]:
        return list(self._lines)


class InvalidSpec(BadInput):
    """The spec, with its overrides, breaks the schema or a cross-field rule (raised by the Python API, api/job.py,
    from a SpecError, a CompileError or what the target could not render): one line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self._lines = lines

    def lines(self) -> list[str]:
        return list(self._lines)


@dataclass
class CompileError(BadInput):
    """A rule of compile/rules.py, or a target's render (a Slurm option that drops env_from, a script not in
    spec.workdir), refuses the spec: one compile.rules.Finding a line, naming the field."""

    findings: Sequence[Located] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(f) for f in self.findings)


class RenderError(BadInput, ValueError):
    """The spec cannot become valid Kubernetes objects, a name too long, say (raised by
    targets/kubernetes/render.py)."""


class ConvertError(BadInput, ValueError):
    """The input is not an accelerate FSDP/DeepSpeed config we can read (raised by compile/convert.py)."""


class ImportRefused(BadInput):
    """The config cannot become a TrainingJob that runs the same setup; the message says why (raised by
    compile/importer.py)."""


class ModelConfigError(BadInput, ValueError):
    """config.json cannot be used: unreadable, too big, not JSON, absurd values, or nowhere to be found (raised by
    plan/model_config.py)."""


class SnapshotError(BadInput):
    """The code cannot be snapshotted (raised by intake/snapshot.py); `field` is the spec field to name
    (spec.workdir, the script)."""

    def __init__(self, message: str, field: str = "spec.workdir") -> None:
        super().__init__(message)
        self.field = field


class NodeLocalPath(BadInput):
    """A directory the job's other nodes must read is on this machine only (raised by intake/nodelocal.py)."""


class PolicyError(BadInput):
    """The controller's policy file cannot be read or is not a policy (raised by controller/policy.py)."""


class UnknownTarget(BadInput):
    """No target of that name (raised by targets.get_target)."""


class FunctionPickleError(BadInput):
    """The function or its arguments cannot be pickled, or the pickle is over the size cap (raised by entry and
    targets/kubernetes/function.py)."""


# --- the job store ------------------------------------------------------------------------------------------------


class StoreError(ShardctlError):
    """The job store has no such job, or cannot be read or written (raised by store/jobstore.py); also the loser
    of a race to record the same attempt (Store.add_attempt), which does nothing more."""


class StoreFull(StoreError):
    """The job store's filesystem has no space left (ENOSPC, or EDQUOT: the quota is spent). Nothing written so far
    is lost and a write that failed left nothing half-done, so a supervisor waits for space instead of dying (a
    new one could do no more) and the CLI starts none meanwhile."""


# --- a target: refused for good, unavailable for now, or in conflict -------------------------------------------


class TargetError(ShardctlError):
    """A target did not do what was asked; the message is the target's own words plus a fix. Catch it for "the
    target did not do it"; which of Refused, Unavailable and Conflict it is says what to do next. Raised as
    itself only where none of them fits (a half-done submit the user must clean up, said in the message)."""


class Refused(TargetError):
    """For good: the target refused the request as it is (a bad partition, an impossible GPU count, an invalid
    object, RBAC, no kubeconfig, a missing CRD, a variable env_from needs). Nothing runs; do not retry as is.
    Raised by every target's `submit` and `preflight` and by KubernetesTarget.call on a 4xx."""


SubmitError = Refused  # the name before the family said what to do (`shardctl.SubmitError`, tests)


class Unavailable(TargetError):
    """No answer now, retry later: a timeout, a 5xx, an unreachable API server, slurmctld busy, a read-only
    command that failed. Nothing was refused; a submit that raises it may or may not have acted (look it up).
    Raised by KubernetesTarget.call (5xx, 429, unreachable), PodLogs, k8s_function and the Slurm commands."""


class Conflict(TargetError):
    """Someone else changed or holds it: a 409 from the API server (a stale write, a name that exists, a failed
    uid precondition), an object of our name that is not ours. Read again, or wait until it is gone. Raised by
    KubernetesTarget.call (409), the controller side of KubernetesTarget.submit (NameTaken) and
    k8s_function.rank0_log (a Job of that name that is not the TrainingJob's)."""


class SlurmRefused(Refused):
    """sbatch (or `sbatch --test-only`) refused the request, or is not there; the message is Slurm's own. Nothing
    was submitted (raised by targets/slurm/target.py, via slurm.accounting.run_once)."""


class SlurmUnavailable(Unavailable):
    """A read-only (or repeatable: scancel) Slurm command failed after its retries: sacct, squeue, sinfo; the
    message is Slurm's own. Nothing was refused: ask again later (raised by slurm_accounting.run_slurm)."""


class SlurmTimeout(Unavailable):
    """A Slurm command did not answer in time: it may or may not have acted (an sbatch may have submitted),
    so this is never taken as a refusal; what happened is looked up afterwards (raised by
    slurm.accounting.run_once and run_slurm)."""


class SubmitDeferred(Unavailable):
    """The target cannot take the attempt now but may later (an exceeded object quota): the attempt stays
    recorded as starting, the executor says why and submits it again later (raised by the controller side of
    KubernetesTarget.submit)."""


# --- the job's outcome (exit 1) ----------------------------------------------------------------------------------


class JobOutcome(ShardctlError):
    """The job ended without what was asked, or waiting for it ran out: nothing is wrong with the request."""

    exit_code = EXIT_FAILED


class JobFailed(JobOutcome):
    """`result()` of a job that ended without a result (failed, cancelled, or its function left none)."""


class FunctionFailed(JobOutcome):
    """The submitted function raised: the message is the failing rank's traceback."""


class WaitTimeout(JobOutcome):
    """`wait(timeout=...)` ran out before the job ended (the job goes on)."""


class ResultTooBig(JobOutcome):
    """The function's return value was over what a pod's log carries: it was not kept (save it to a volume and
    return its path: the fix is in the code, hence exit 2)."""

    exit_code = EXIT_BAD_INPUT


def located(source: str | None, line: int | None, field: str | None, message: str) -> str:
    """`FILE:LINE: field: message`, leaving out what is unknown: the one format of a located error."""
    where = f"{source}:{line}" if source and line else (source or "")
    parts = [p for p in (where, field) if p]
    return ": ".join([*parts, message])
