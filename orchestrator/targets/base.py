"""The protocol every target implements, shaped after torchx's schedulers and submitit's executors.

Attempt level (what an executor asks of a target): `render` is the dry run, the exact request
(files and command) that `submit` would hand over, without any side effect; `recover` finds an
attempt that a dead executor submitted but did not record; `describe` reports what the target
sees of an attempt as a lifecycle Observation; `cancel` stops it; `log_source` reads its output.

Job level (what shared code asks, so that it never asks which target this is): `driver` says who
moves a job forward (a resident supervisor, the cluster's judge jobs, or an in-cluster
controller), `preflight` checks a request before anything is recorded, `options` is what a later
process needs to rebuild this target (`from_options`), `on_gpu` whether the memory planner applies,
and `prefetch` lets a target that can ask about many attempts at once do so. A target driven by a
controller also implements `ControlledTarget`: it hands the job over to the cluster and reads the
record the controller keeps there, and a function's outcome from the attempt's output.

Every member is declared here and called directly, never reached with getattr, and mypy checks every
registered target class against these protocols (`_conforms` in targets/__init__.py). What differs
between drivers is decided by the driver's class in jobs.py, not by asking what a target implements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from orchestrator.compile import CompiledJob
from orchestrator.lifecycle.moves import Observation
from orchestrator.spec.failure import Failure
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.states import AttemptState, JobState

__all__ = ["AttemptRef", "ClusterAttempt", "ClusterRecord", "ControlledTarget", "Driver", "DryRun", "LogSource",
           "Observation", "Target"]


class Driver(StrEnum):
    """Who moves a job forward between attempts."""

    SUPERVISOR = "supervisor"  # one detached process per job on this machine (`run` until it ends)
    JUDGE = "judge"  # short-lived steps: the cluster runs one after each attempt; any CLI read does the same
    CONTROLLER = "controller"  # a controller in the cluster; the CLI hands the job over and reads its record


@dataclass(frozen=True)
class DryRun:
    """The exact request: file name -> content, plus the command that starts it."""

    target: str
    compiled: CompiledJob
    files: dict[str, str]
    command: list[str]
    warnings: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return "\n".join(f"--- {name}\n{text}" for name, text in self.files.items())


@dataclass(frozen=True)
class AttemptRef:
    """Where one attempt lives; the same for every target."""

    job_id: str
    number: int
    run_dir: str
    checkpoint_dir: str
    workdir: str
    log_path: str
    resume_from: str | None = None  # the newest complete checkpoint (supervise/checkpoints.py): SHARDCTL_RESUME_FROM


class LogSource(Protocol):
    """An attempt's output, read incrementally (for `logs -f` and `submit --wait`)."""

    poll_s: float  # a follower reads at most this often (0: whenever it looks; a cluster's reads cost requests)

    def lines(self) -> list[str]:
        """Complete new lines since the last call."""

    def rest(self) -> list[str]:
        """Everything new, including a last line without its newline (the attempt has ended)."""


class Target(Protocol):
    name: str
    driver: Driver

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Target:
        """The target rebuilt from what `options` recorded with a job, or from the environment's defaults (given {})
        (what get_target(name, options) returns)."""

    @property
    def on_gpu(self) -> bool:
        """Whether the attempts run on GPUs: the memory planner applies."""

    def options(self) -> dict[str, Any]:
        """What to record with a job so that another process rebuilds this target (get_target(name, options))."""

    def preflight(self, job: TrainingJob, workdir: str) -> list[str]:
        """Would the target accept attempt 1? Warnings to show; raises Refused (or a located CompileError), or
        Unavailable when it cannot be asked, before anything is recorded."""

    def prefetch(self, external_ids: list[str]) -> None:
        """Learn about these attempts at once, before `describe` is asked about each (Slurm: one sacct for all);
        a target that asks about each attempt by itself does nothing."""

    def render(self, job: TrainingJob, ref: AttemptRef) -> DryRun:
        """Pure: the request that submit would make for this attempt."""

    def submit(self, dryrun: DryRun, ref: AttemptRef) -> str:
        """Start the attempt; returns the target's id for it (a pid, a Slurm job id, a Job name). Raises Refused
        when the target refused it (nothing runs: the attempt ends refused), any other TargetError when there was
        no answer (it may have been submitted: `recover` looks it up), SubmitDeferred or Conflict when it cannot
        be taken now (the controller retries)."""

    def recover(self, ref: AttemptRef) -> str | None:
        """The id of an attempt that was submitted but not recorded (the submitter died), or None."""

    def describe(self, external_id: str, ref: AttemptRef) -> Observation:
        """The target's own view of an attempt; an ended one carries what the classifier needs."""

    def cancel(self, external_id: str, ref: AttemptRef) -> None:
        """Stop the attempt and everything it started."""

    def stop_hung(self, external_id: str, ref: AttemptRef) -> None:
        """Stop an attempt its executor found hung, keeping where each rank waited when the target can: local
        dumps every rank's Python stacks into the log and RUN_DIR/stacks.txt, then stops the tree as `cancel`
        does, and its `describe` then reports `Outcome.hung` (where each rank waited). A target that cannot
        capture stacks (Slurm, Kubernetes, for now) stops it as `cancel` does. Asked again (a supervisor that
        restarted after recording the hang), it must do no harm."""

    def log_source(self, ref: AttemptRef, external_id: str | None) -> LogSource:
        """The attempt's output (every process's stdout and stderr)."""


@dataclass(frozen=True)
class ClusterAttempt:
    """One attempt as a controller recorded it in the cluster."""

    number: int
    state: AttemptState
    spec: dict[str, Any]
    rung: str | None
    reason: str
    external_id: str | None
    started_at: float | None = None
    ended_at: float | None = None
    failure: Failure | None = None  # how it ended, unless it succeeded (or is open)


@dataclass(frozen=True)
class ClusterRecord:
    """The record a controller keeps in the cluster; None from `fetch` when the job is gone."""

    state: JobState
    reason: str | None
    attempts: Sequence[ClusterAttempt]
    conditions: Sequence[str] = ()  # what the job is waiting on, in the controller's words


class ControlledTarget(Target, Protocol):
    """A target whose jobs an in-cluster controller drives (driver CONTROLLER): the CLI hands them over and reads
    them back. Only the controller driver (jobs.ByController) asks for these members."""

    def hand_over(self, job: TrainingJob, files: Mapping[str, bytes] | None = None) -> dict[str, Any]:
        """Create the job in the cluster (with `files`: a pickled call, carried with it); returns what to record to
        find it again. Raises Refused (nothing was created), Unavailable (the cluster did not answer) or Conflict
        (a TrainingJob of that name exists)."""

    def fetch(self, options: dict[str, Any], name: str) -> ClusterRecord | None:
        """The controller's record of the job, or None when it is gone from the cluster."""

    def withdraw(self, options: dict[str, Any], name: str) -> None:
        """Delete the job from the cluster (its attempts go with it)."""

    def read_outcome(self, options: dict[str, Any], external_id: str | None) -> tuple[str, Any] | None:
        """A submitted function's outcome, ("success", value) or ("error", traceback text), from what the attempt
        `external_id` printed (its attempts have no run directory here); None when it printed none."""


def ranks_waited(where: object, stacks: str) -> str | None:
    """Where each rank of a hung run waited (rank -> `file:line function`, as its stacks were taken: untrusted
    JSON from the run's directory), for the attempt's reason; `stacks` names where the whole stacks are."""
    if not isinstance(where, dict):
        return None
    ranks = sorted(((int(r), str(w)[:300]) for r, w in where.items() if str(r).isdigit() and len(str(r)) < 9),
                   key=lambda rw: rw[0])
    said = "; ".join(f"rank {r} in {w}" for r, w in ranks[:64]) or "no rank found to dump"
    return f"where each rank waited: {said} (stacks: {stacks})"


def notify_env_names(job: TrainingJob) -> list[str]:
    """The variables spec.notify reads its webhook URLs and signing secrets from (credentials of the supervisor,
    which a training script's environment dump or crash report would otherwise carry into the log)."""
    asked = {s.env for s in job.spec.entrypoint.env_from if s.env is not None}
    names = [ref.env for hook in job.spec.notify for ref in (hook.url, hook.signing_secret)
             if ref is not None and ref.env is not None]
    return [n for n in dict.fromkeys(names) if n not in asked]

