"""One small interface for every target, shaped after torchx's schedulers.

`render` is the dry run: it returns the exact request (files and command) that `submit`
would hand to the target, without any side effect. The supervisor drives any target through
render / submit / describe / cancel, and `recover` lets a new supervisor find an attempt that
a dead one submitted but did not get to record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from orchestrator.compile import CompiledJob
from orchestrator.spec.models import TrainingJob
from orchestrator.supervise.classify import Outcome


class SubmitError(RuntimeError):
    """The target refused the request (a bad partition, an impossible GPU count); its own words."""


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


@dataclass(frozen=True)
class AttemptState:
    state: Literal["pending", "running", "ended"]
    outcome: Outcome | None = None  # set when ended
    peak_memory_bytes: int | None = None
    detail: str = ""


class Target(Protocol):
    name: str

    def render(self, job: TrainingJob, ref: AttemptRef) -> DryRun:
        """Pure: the request that submit would make for this attempt."""

    def submit(self, dryrun: DryRun, ref: AttemptRef) -> str:
        """Start the attempt; returns the target's id for it (a pid, a Slurm job id, a Job name)."""

    def recover(self, ref: AttemptRef) -> str | None:
        """The id of an attempt that was submitted but not recorded (the submitter died), or None."""

    def describe(self, external_id: str, ref: AttemptRef) -> AttemptState:
        """The target's own view of an attempt; `ended` carries what the classifier needs."""

    def cancel(self, external_id: str, ref: AttemptRef) -> None:
        """Stop the attempt and everything it started."""
