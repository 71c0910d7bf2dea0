"""Targets behind one protocol (targets/base.py). A new target is one module and one line here."""

from __future__ import annotations

import importlib
from typing import Any

from orchestrator.errors import ShardctlError

# name -> "module:class"; imported on demand so the CLI stays light
REGISTRY = {
    "local": "orchestrator.targets.local:LocalTarget",
    "slurm": "orchestrator.targets.slurm:SlurmTarget",
    "kubernetes": "orchestrator.targets.kubernetes:KubernetesTarget",
}
NAMES = tuple(REGISTRY)


class UnknownTarget(ShardctlError):
    pass


def get_target(name: str, options: dict[str, Any] | None = None):
    """The target by name, rebuilt from the options recorded with a job (or defaults from the environment)."""
    if name not in REGISTRY:
        raise UnknownTarget(f"unknown target {name!r} (one of: {', '.join(NAMES)})")
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls).from_options(options or {})
