"""Targets (local, slurm, kubernetes) behind one small interface: render / submit / recover / describe / cancel."""

from __future__ import annotations

from typing import Any


def get_target(name: str, options: dict[str, Any] | None = None):
    """The target by name; imported on demand so the CLI stays light."""
    options = options or {}
    if name == "local":
        from orchestrator.targets.local import LocalTarget

        return LocalTarget(cpu=options.get("cpu"), memory_mode=options.get("memory_mode"), port=options.get("port"))
    if name == "slurm":
        from orchestrator.targets.slurm import SlurmTarget

        return SlurmTarget(cpu=bool(options.get("cpu")), state_dir=options.get("state_dir"))
    raise ValueError(f"target {name!r} cannot run jobs yet (local and slurm are available)")
