"""Targets behind one protocol (targets/base.py). A new target is one module, plus its line in REGISTRY and its
parameter of _conforms here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UnknownTarget

if TYPE_CHECKING:
    from orchestrator.targets.base import ControlledTarget, Target

# name -> "module:class"; imported on demand so the CLI stays light
REGISTRY = {
    "local": "orchestrator.targets.local.target:LocalTarget",
    "slurm": "orchestrator.targets.slurm.target:SlurmTarget",
    "kubernetes": "orchestrator.targets.kubernetes.target:KubernetesTarget",
}
NAMES = tuple(REGISTRY)

if TYPE_CHECKING:  # never run: mypy checks every registered class against its protocol, and says what differs
    from orchestrator.targets.kubernetes.target import KubernetesTarget
    from orchestrator.targets.local.target import LocalTarget
    from orchestrator.targets.slurm.target import SlurmTarget

    def _conforms(local: LocalTarget, slurm: SlurmTarget, kubernetes: KubernetesTarget) -> None:
        """One parameter per REGISTRY name (tests/test_layering.py checks that)."""
        target: Target = local
        target = slurm
        target = kubernetes
        controlled: ControlledTarget = kubernetes  # every target whose driver is CONTROLLER
        del target, controlled


def get_target(name: str, options: dict[str, Any] | None = None) -> Target:
    """The target by name, rebuilt from the options recorded with a job (or defaults from the environment)."""
    if name not in REGISTRY:
        raise UnknownTarget(f"unknown target {name!r} (one of: {', '.join(NAMES)})")
    module, _, cls = REGISTRY[name].partition(":")
    target_class: type[Target] = getattr(importlib.import_module(module), cls)
    return target_class.from_options(options or {})
