"""One small interface for every target, shaped after torchx's schedulers.

`render` is the dry run: it returns the exact request (files and command) that
`submit` would hand to the target, without any side effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from orchestrator.compile import CompiledJob


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


class Target(Protocol):
    name: str

    def render(self, compiled: CompiledJob, run_dir: str) -> DryRun:
        """Pure: the request that submit would make for this attempt."""

    def submit(self, dryrun: DryRun, run_dir: str) -> str:
        """Start the attempt; returns the target's id for it (a pid, a Slurm job id, a Job name)."""

    def describe(self, external_id: str) -> dict:
        """The target's own view of an attempt (state, exit code, evidence)."""

    def logs(self, external_id: str, run_dir: str) -> str:
        """Path or text of the attempt's log."""

    def cancel(self, external_id: str) -> None:
        """Stop the attempt and everything it started."""
