"""The protocol every target implements, shaped after torchx's schedulers and submitit's executors.

Attempt level (what an executor asks of a target): `render` is the dry run, the exact request
(files and command) that `submit` would hand over, without any side effect; `recover` finds an
attempt that a dead executor submitted but did not record; `describe` reports what the target
sees of an attempt as a lifecycle Observation; `cancel` stops it; `log_source` reads its output.

Job level (what shared code asks, so that it never asks which target this is): `driver` says who
moves a job forward (a resident supervisor, the cluster's judge jobs, or an in-cluster
controller), `preflight` checks a request before anything is recorded, `options` is what a later
process needs to rebuild this target, and `on_gpu` whether the memory planner applies. A target
driven by a controller also implements `ControlledTarget`: it hands the job over to the cluster
and reads the record the controller keeps there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from orchestrator.compile import CompiledJob
from orchestrator.errors import SubmitError, TargetError
from orchestrator.lifecycle.moves import Observation
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.states import AttemptState, JobState

__all__ = ["AttemptRef", "AttemptSnapshot", "ControlledTarget", "Driver", "DryRun", "JobSnapshot", "LogSource",
           "Observation", "SubmitDeferred", "SubmitError", "Target", "TargetError"]


class SubmitDeferred(TargetError):
    """The target cannot take the attempt now but may later (an exceeded object quota): the attempt stays
    recorded as starting, the executor says why and submits it again later."""


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


class LogSource(Protocol):
    """An attempt's output, read incrementally (for `logs -f` and `submit --wait`)."""

    def lines(self) -> list[str]:
        """Complete new lines since the last call."""

    def rest(self) -> list[str]:
        """Everything new, including a last line without its newline (the attempt has ended)."""


class Target(Protocol):
    name: str
    driver: Driver
    on_gpu: bool

    def options(self) -> dict[str, Any]:
        """What to record with a job so that another process rebuilds this target (get_target(name, options))."""

    def preflight(self, job: TrainingJob, workdir: str) -> list[str]:
        """Would the target accept attempt 1? Warnings to show; raises TargetError before anything is recorded."""

    def render(self, job: TrainingJob, ref: AttemptRef) -> DryRun:
        """Pure: the request that submit would make for this attempt."""

    def submit(self, dryrun: DryRun, ref: AttemptRef) -> str:
        """Start the attempt; returns the target's id for it (a pid, a Slurm job id, a Job name)."""

    def recover(self, ref: AttemptRef) -> str | None:
        """The id of an attempt that was submitted but not recorded (the submitter died), or None."""

    def describe(self, external_id: str, ref: AttemptRef) -> Observation:
        """The target's own view of an attempt; an ended one carries what the classifier needs."""

    def cancel(self, external_id: str, ref: AttemptRef) -> None:
        """Stop the attempt and everything it started."""

    def log_source(self, ref: AttemptRef, external_id: str | None) -> LogSource:
        """The attempt's output (every process's stdout and stderr)."""


@dataclass(frozen=True)
class AttemptSnapshot:
    """One attempt as a controller recorded it in the cluster."""

    number: int
    state: AttemptState
    spec: dict[str, Any]
    rung: str | None
    reason: str
    external_id: str | None
    started_at: float | None = None
    ended_at: float | None = None
    failure: tuple[str, str, str] | None = None  # (kind, reason, evidence)


@dataclass(frozen=True)
class JobSnapshot:
    """The record a controller keeps in the cluster; None from `fetch` when the job is gone."""

    state: JobState
    reason: str | None
    attempts: Sequence[AttemptSnapshot]
    conditions: Sequence[str] = ()  # what the job is waiting on, in the controller's words


@runtime_checkable
class ControlledTarget(Protocol):
    """A target whose jobs an in-cluster controller drives: the CLI hands them over and reads them back."""

    def hand_over(self, job: TrainingJob, files: Mapping[str, bytes] | None = None) -> dict[str, Any]:
        """Create the job in the cluster (with `files`: a pickled call, carried with it); returns what to record to
        find it again. Raises TargetError."""

    def fetch(self, options: dict[str, Any], name: str) -> JobSnapshot | None:
        """The controller's record of the job, or None when it is gone from the cluster."""

    def withdraw(self, options: dict[str, Any], name: str) -> None:
        """Delete the job from the cluster (its attempts go with it)."""
