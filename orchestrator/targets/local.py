"""The local target: `accelerate launch` on this machine, as one process group per attempt.

render() writes nothing: it returns launch.sh and the config files exactly as submit runs them.
On a machine without GPUs the job runs `gpus_per_node` CPU processes over gloo, with a warning:
DeepSpeed really partitions on CPU (DS_ACCELERATOR=cpu; the script creates a gloo process
group); FSDP through accelerate does not shard on CPU and runs as DDP (ACCELERATE_USE_CPU=true).
See ../shared/reference/accelerate-launch-facts.md, "Launching on CPU".
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from orchestrator.compile import CompiledJob, compile_job
from orchestrator.compile.launch import MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT, DEFAULT_PORT
from orchestrator.spec.models import FsdpOptions, Precision, TrainingJob
from orchestrator.targets.base import DryRun

LAUNCH_SCRIPT = "launch.sh"


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


def compile_for_local(job: TrainingJob, run_dir: str, checkpoint_dir: str, attempt: int,
                      cpu: bool) -> tuple[CompiledJob, list[str]]:
    warnings: list[str] = []
    if cpu:
        job, warnings = adapt_for_cpu(job)
    return compile_job(job, config_dir=run_dir, checkpoint_dir=checkpoint_dir, attempt=attempt), warnings


def launch_script(compiled: CompiledJob, *, workdir: str, cpu: bool, port: int = DEFAULT_PORT,
                  bin_dir: str | None = None) -> str:
    """bash that starts one launcher per node on localhost; every value is shell-quoted."""
    job = compiled.job
    env = dict(compiled.env)
    if cpu:
        env.update(cpu_environment(job))
    lines = [
        "#!/usr/bin/env bash",
        f"# shardctl: job {job.metadata.name}, attempt {compiled.attempt}, target local. Exactly what submit runs.",
        "set -euo pipefail",
        f"cd {shlex.quote(workdir)}",
    ]
    if bin_dir:
        lines.append(f"export PATH={shlex.quote(bin_dir)}:\"$PATH\"")
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    nodes = job.spec.resources.nodes
    values = {MAIN_PROCESS_IP: "127.0.0.1", MAIN_PROCESS_PORT: str(port)}
    if nodes == 1:
        argv = compiled.launch.resolve({**values, MACHINE_RANK: "0"})
        lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
    else:
        lines.append("# one launcher per 'machine', all on localhost (static rendezvous on 127.0.0.1)")
        lines.append("pids=()")
        for rank in range(nodes):
            argv = compiled.launch.resolve({**values, MACHINE_RANK: str(rank)})
            lines.append(" ".join(shlex.quote(a) for a in argv) + " & pids+=($!)")
        lines += ["rc=0", 'for p in "${pids[@]}"; do wait "$p" || rc=$?; done', 'exit "$rc"']
    return "\n".join(lines) + "\n"


def render(job: TrainingJob, run_dir: str, *, checkpoint_dir: str, attempt: int = 1, cpu: bool | None = None,
           port: int = DEFAULT_PORT, workdir: str | None = None, bin_dir: str | None = None) -> DryRun:
    cpu = (not has_gpu()) if cpu is None else cpu
    compiled, warnings = compile_for_local(job, run_dir, checkpoint_dir, attempt, cpu)
    files = compiled.files()
    files[LAUNCH_SCRIPT] = launch_script(compiled, workdir=workdir or os.getcwd(), cpu=cpu, port=port,
                                         bin_dir=bin_dir)
    return DryRun("local", compiled, files, ["bash", f"{run_dir.rstrip('/')}/{LAUNCH_SCRIPT}"], tuple(warnings))


__all__ = ["LAUNCH_SCRIPT", "adapt_for_cpu", "has_gpu", "launch_script", "render"]
