"""Submitting and cancelling jobs: what the CLI does, without the printing.

A job is checked and its first attempt rendered (pure) before anything is recorded, so bad
input never leaves a half-submitted job behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from orchestrator.spec.models import TrainingJob
from orchestrator.store import JobRecord, Store
from orchestrator.supervise.supervisor import ensure_supervised, job_to_json, spawn, wait_caught_up
from orchestrator.targets import get_target
from orchestrator.targets.base import AttemptRef, DryRun


def target_options(job: TrainingJob) -> dict:
    if job.spec.target == "local":
        from orchestrator.targets.local import has_gpu

        return {"cpu": not has_gpu(), "memory_mode": os.environ.get("SHARDCTL_MEMORY_LIMIT", "auto")}
    return {}


def checkpoint_dir(job: TrainingJob, workdir: str) -> str | None:
    d = job.spec.checkpoint.dir
    return str((Path(workdir) / d).resolve()) if d else None


def dry_run(job: TrainingJob, workdir: str, run_dir: str = "<run-dir>/attempt-1",
            checkpoint: str | None = None) -> DryRun:
    """Exactly what attempt 1 would submit (raises CompileError)."""
    from orchestrator.compile.launch import DEFAULT_PORT

    target = get_target(job.spec.target, {**target_options(job), "port": DEFAULT_PORT})  # a real run draws a free port
    ckpt = checkpoint or checkpoint_dir(job, workdir) or "<state-dir>/jobs/<id>/checkpoints"
    ref = AttemptRef("<id>", 1, run_dir, ckpt, workdir, f"{run_dir}/output.log")
    return target.render(job, ref)


def submit(store: Store, job: TrainingJob, *, source: str | None, workdir: str | None = None) -> JobRecord:
    workdir = workdir or os.getcwd()
    dry_run(job, workdir)  # compiles for this target, or raises before anything is recorded
    record = store.create_job(name=job.metadata.name, target=job.spec.target, spec=job_to_json(job), source=source,
                              workdir=workdir, checkpoint_dir=checkpoint_dir(job, workdir),
                              options=target_options(job))
    proc = spawn(store, record)
    wait_caught_up(store, record.id, proc, 10.0)  # attempt 1 is started and recorded when this returns
    return store.get_job(record.id)


def cancel(store: Store, job: JobRecord, wait_s: float = 60.0) -> JobRecord:
    """Ask the supervisor to stop the job (starting one if none runs) and wait until it has."""
    if job.terminal:
        return job
    store.request_cancel(job.id)
    ensure_supervised(store, store.get_job(job.id))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        job = store.get_job(job.id)
        if job.terminal:
            return job
        ensure_supervised(store, job)  # a supervisor killed meanwhile is replaced
        time.sleep(0.1)
    return store.get_job(job.id)
