"""Running a GPU spec on CPU processes (machines and dev clusters without GPUs), shared by the targets.

DeepSpeed really partitions on CPU (DS_ACCELERATOR=cpu; the script creates a gloo process
group); FSDP through accelerate does not shard on CPU and runs as DDP (ACCELERATE_USE_CPU=true).
Every change to the spec is returned as a warning. docs/design.md ("Supervising a run") says what was verified on CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.compile import CompiledJob, compile_job
from orchestrator.spec.models import FsdpOptions, Precision, TrainingJob


def has_gpu() -> bool:
    """Cheap and torch-free: the NVIDIA driver exposes one directory per GPU."""
    if os.environ.get("SHARDCTL_FORCE_CPU") == "1":
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def adapt_for_cpu(job: TrainingJob) -> tuple[TrainingJob, list[str]]:
    """The same spec made runnable on CPU processes; every change is reported."""
    spec = job.spec
    n = spec.world_size
    notes = []
    changes: dict = {}
    if spec.backend == "deepspeed":
        notes.append(f"no GPU: DeepSpeed ZeRO runs on {n} CPU processes over gloo (DS_ACCELERATOR=cpu)")
    else:
        notes.append(f"no GPU: FSDP does not shard on CPU through accelerate; this runs as DDP on {n} CPU processes "
                     "over gloo (use backend: deepspeed for real sharding on CPU)")
        # cpu_ram_efficient_loading/sync_module_states need a GPU ("no available devices found").
        changes["fsdp"] = FsdpOptions(**{**spec.fsdp.model_dump(), "cpu_ram_efficient_loading": False,
                                         "sync_module_states": False})
    if spec.precision.mixed == "fp16":
        notes.append("no GPU: fp16 mixed precision is GPU-only; using bf16 on CPU")
        changes["precision"] = Precision(mixed="bf16", params=spec.precision.params)
    return (job.with_spec(**changes) if changes else job), notes


def cpu_environment(job: TrainingJob) -> dict[str, str]:
    if job.spec.backend == "deepspeed":
        return {"DS_ACCELERATOR": "cpu"}
    return {"ACCELERATE_USE_CPU": "true"}


def compile_maybe_on_cpu(job: TrainingJob, run_dir: str, checkpoint_dir: str, attempt: int,
                      cpu: bool) -> tuple[CompiledJob, list[str]]:
    warnings: list[str] = []
    if cpu:
        job, warnings = adapt_for_cpu(job)
    return compile_job(job, config_dir=run_dir, checkpoint_dir=checkpoint_dir, attempt=attempt), warnings
