"""Compiling is pure: a TrainingJob in, the exact artifacts out, no I/O.

Never imports targets, supervise, store or cli.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from orchestrator.compile import rules
from orchestrator.compile.configs import (
    ACCELERATE_CONFIG_NAME,
    DS_CONFIG_NAME,
    accelerate_config,
    deepspeed_json,
)
from orchestrator.compile.launch import LaunchCommand, launch_command, script_environment
from orchestrator.compile.rules import Finding
from orchestrator.errors import CompileError
from orchestrator.spec.models import TrainingJob


@dataclass(frozen=True)
class CompiledJob:
    job: TrainingJob
    attempt: int
    accelerate_config: dict[str, Any]
    ds_config: dict[str, Any] | None
    launch: LaunchCommand
    env: dict[str, str]
    findings: tuple[Finding, ...]

    def files(self) -> dict[str, str]:
        """File name -> exact text, as every target writes them."""
        out = {ACCELERATE_CONFIG_NAME: dump_yaml(self.accelerate_config)}
        if self.ds_config is not None:
            out[DS_CONFIG_NAME] = json.dumps(self.ds_config, indent=2) + "\n"
        return out


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def compile_job(job: TrainingJob, *, config_dir: str, checkpoint_dir: str, attempt: int = 1) -> CompiledJob:
    """Raises CompileError when a rule says the spec cannot run; warnings ride along in `findings`."""
    findings = rules.check(job)
    if rules.errors(findings):
        raise CompileError(rules.errors(findings))
    spec = job.spec
    return CompiledJob(
        job=job,
        attempt=attempt,
        accelerate_config=accelerate_config(spec, config_dir),
        ds_config=deepspeed_json(spec),
        launch=launch_command(job, config_dir, attempt, checkpoint_dir),
        env=script_environment(job, attempt, checkpoint_dir),
        findings=tuple(findings),
    )


__all__ = ["CompileError", "CompiledJob", "Finding", "compile_job", "dump_yaml", "rules"]
