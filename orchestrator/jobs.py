"""Submitting, cancelling and keeping jobs moving: what the CLI does, without the printing.

A job is checked and its first attempt rendered (pure) before anything is recorded, so bad
input never leaves a half-submitted job behind; on Slurm the controller also checks the
request (`sbatch --test-only`) first.

Who moves a job forward depends on the target. Local: one detached supervisor per job.
Slurm: nobody stays logged in; each attempt's judge job (see targets/slurm_render.py) records
its end and submits the next attempt, and any shardctl command that reads the job makes the
same moves inline, which covers a judge that never ran.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from orchestrator.spec.models import TrainingJob
from orchestrator.store import JobRecord, Store
from orchestrator.supervise.supervisor import Supervisor, ensure_supervised, job_to_json, spawn, wait_caught_up
from orchestrator.targets import get_target
from orchestrator.targets.base import AttemptRef, DryRun, SubmitError

INLINE_TARGETS = ("slurm",)  # targets whose jobs are moved by short-lived steps, not a resident supervisor


def target_options(job: TrainingJob) -> dict:
    if job.spec.target == "local":
        from orchestrator.targets.local import has_gpu

        return {"cpu": not has_gpu(), "memory_mode": os.environ.get("SHARDCTL_MEMORY_LIMIT", "auto")}
    if job.spec.target == "slurm":  # the login node's GPUs say nothing about the compute nodes'
        return {"cpu": os.environ.get("SHARDCTL_FORCE_CPU") == "1"}
    return {}


def checkpoint_dir(job: TrainingJob, workdir: str) -> str | None:
    d = job.spec.checkpoint.dir
    return str((Path(workdir) / d).resolve()) if d else None


def dry_run(job: TrainingJob, workdir: str, run_dir: str = "<run-dir>/attempt-1",
            checkpoint: str | None = None, job_id: str = "<id>") -> DryRun:
    """Exactly what attempt 1 would submit (raises CompileError)."""
    from orchestrator.compile.launch import DEFAULT_PORT

    target = get_target(job.spec.target, {**target_options(job), "port": DEFAULT_PORT})  # a real run draws a free port
    ckpt = checkpoint or checkpoint_dir(job, workdir) or "<state-dir>/jobs/<id>/checkpoints"
    ref = AttemptRef(job_id, 1, run_dir, ckpt, workdir, f"{run_dir}/output.log")
    return target.render(job, ref)


def preflight(job: TrainingJob, workdir: str) -> str:
    """Slurm: would the controller accept attempt 1 (partition, GPU count, memory, time)? Raises SubmitError."""
    if job.spec.target != "slurm":
        return ""
    with tempfile.TemporaryDirectory(prefix="shardctl-check-") as scratch:
        dry = dry_run(job, workdir, run_dir=f"{scratch}/attempt-1", job_id="check")
        return get_target("slurm", target_options(job)).check(dry, scratch)


def submit(store: Store, job: TrainingJob, *, source: str | None, workdir: str | None = None) -> JobRecord:
    workdir = workdir or os.getcwd()
    if job.spec.target == "kubernetes":  # the cluster keeps the record; the controller moves the job
        from orchestrator import kube_jobs

        return kube_jobs.submit(store, job, source=source, workdir=workdir)
    dry_run(job, workdir)  # compiles for this target, or raises before anything is recorded
    preflight(job, workdir)
    record = store.create_job(name=job.metadata.name, target=job.spec.target, spec=job_to_json(job), source=source,
                              workdir=workdir, checkpoint_dir=checkpoint_dir(job, workdir),
                              options=target_options(job))
    if record.target in INLINE_TARGETS:
        advance(store, record)  # attempt 1 and its judge are submitted when this returns
        return store.get_job(record.id)
    proc = spawn(store, record)
    wait_caught_up(store, record.id, proc, 10.0)  # attempt 1 is started and recorded when this returns
    return store.get_job(record.id)


def advance(store: Store, job: JobRecord) -> str:
    """Every move the job can make now without waiting (inline targets)."""
    return Supervisor(store, job.id, get_target(job.target, job.option_data)).advance()


def revive(store: Store, job: JobRecord) -> str | None:
    """Make sure an unfinished job keeps moving; returns a note for the user when something had stalled."""
    if job.terminal or job.target == "kubernetes":  # the controller in the cluster moves those
        return None
    if job.target in INLINE_TARGETS:
        before = [a.state for a in store.attempts(job.id)]
        advance(store, job)
        after = [a.state for a in store.attempts(job.id)]
        if after != before:
            return f"job {job.id}: recorded what Slurm reports ({' -> '.join(_summary(before, after))})"
        return None
    if ensure_supervised(store, job):
        return f"note: job {job.id} had no supervisor (killed, or the machine restarted); started a new one"
    return None


def revive_all(store: Store, jobs: list[JobRecord]) -> list[str]:
    """As revive, for many jobs; Slurm jobs are looked up with one batched sacct call."""
    running = [a.external_id for j in jobs if j.target == "slurm" and not j.terminal
               for a in store.attempts(j.id)[-1:] if a.state == "running" and a.external_id]
    if running:
        from orchestrator.targets.slurm_accounting import POLLER

        POLLER.watch(running)
        POLLER.refresh()
    return [note for j in jobs if (note := revive(store, j))]


def _summary(before: list[str], after: list[str]) -> list[str]:
    return [f"attempt {i + 1} {state}" for i, state in enumerate(after)
            if i >= len(before) or before[i] != state]


def cancel(store: Store, job: JobRecord, wait_s: float = 60.0) -> JobRecord:
    """Stop the job (its attempt, and on Slurm its judge) and wait until the end is recorded."""
    if job.terminal:
        return job
    if job.target == "kubernetes":
        from orchestrator import kube_jobs

        return kube_jobs.cancel(store, job)
    store.request_cancel(job.id)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        job = store.get_job(job.id)
        if job.terminal:
            return job
        if job.target in INLINE_TARGETS:
            advance(store, job)  # sends the cancel, then records the end once Slurm reports it
            time.sleep(0.5)
        else:
            ensure_supervised(store, job)  # a supervisor killed meanwhile is replaced
            time.sleep(0.1)
    return store.get_job(job.id)


__all__ = ["SubmitError", "advance", "cancel", "dry_run", "preflight", "revive", "revive_all", "submit"]
