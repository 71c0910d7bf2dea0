"""The real Supervisor on one host, over jobs another host's Supervisor drives at the same time.

The target stands for one scheduler both hosts talk to (as a login node and a compute node both
talk to slurmctld): its submissions are lines in a file on local disk, so the test can count how
many times each attempt was submitted. Attempt 1 of every job dies of host OOM (the fallback
then shards more), attempt 2 succeeds; each "runs" for RUN_S after its submission.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from orchestrator.compile import compile_job
from orchestrator.lifecycle.classify import Outcome
from orchestrator.lifecycle.moves import Observation, Seen
from orchestrator.targets.base import AttemptRef, DryRun

OOM_TAIL = (Path(__file__).parents[1] / "lifecycle" / "data" / "host_oom_cpu_allocator.txt").read_text()
RUN_S = 0.3


class SharedSchedulerTarget:
    """Submissions, cancels and their times, as lines in DIR/submissions.log; read back by both hosts."""

    name = "twohosts"
    on_gpu = True

    def __init__(self, directory: str, host: str) -> None:
        self.path = Path(directory) / "submissions.log"
        self.host = host

    def _append(self, **fields: Any) -> None:
        line = json.dumps({"host": self.host, "t": time.time(), **fields}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _submissions(self, ref: AttemptRef) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        entries = [json.loads(line) for line in lines if line.strip()]
        return [e for e in entries if e["ev"] == "submit" and e["job"] == ref.job_id and e["n"] == ref.number]

    def render(self, spec: Any, ref: AttemptRef) -> DryRun:
        compiled = compile_job(spec, config_dir=ref.run_dir, checkpoint_dir=ref.checkpoint_dir, attempt=ref.number)
        return DryRun(self.name, compiled, compiled.files(), ["true"])

    def submit(self, dry: DryRun, ref: AttemptRef) -> str:
        external_id = f"{ref.job_id}.{ref.number}.{self.host}.{time.monotonic_ns()}"
        self._append(ev="submit", job=ref.job_id, n=ref.number, id=external_id)
        return external_id

    def recover(self, ref: AttemptRef) -> str | None:
        found = self._submissions(ref)
        return found[0]["id"] if found else None

    def describe(self, external_id: str, ref: AttemptRef) -> Observation:
        found = [e for e in self._submissions(ref) if e["id"] == external_id]
        if not found or time.time() - found[0]["t"] < RUN_S:
            return Observation(Seen.RUNNING)
        if ref.number == 1:
            return Observation(Seen.ENDED, outcome=Outcome(exit_code=1, log_tail=OOM_TAIL), peak_memory_bytes=1)
        return Observation(Seen.ENDED, outcome=Outcome(exit_code=0), peak_memory_bytes=1)

    def cancel(self, external_id: str, ref: AttemptRef) -> None:
        self._append(ev="cancel", job=ref.job_id, n=ref.number, id=external_id)


def run_supervise(args: argparse.Namespace, store: Any, log: Any) -> int:
    """advance() every unfinished job, round after round, until all have ended (or the deadline)."""
    from orchestrator.supervise.supervisor import Supervisor
    from tests.twohosts.worker import wait_for_go

    jobs = json.loads(Path(args.jobs).read_text())
    target = SharedSchedulerTarget(args.targets, args.name)
    wait_for_go(args.go)
    log("start", pid=os.getpid())
    deadline = time.monotonic() + args.deadline
    errors = rounds = 0
    while time.monotonic() < deadline:
        open_jobs = [j for j in jobs if not store.get_job(j).terminal]
        if not open_jobs:
            break
        rounds += 1
        for job_id in open_jobs:
            try:
                Supervisor(store, job_id, target).advance()  # type: ignore[arg-type]
            except Exception as exc:  # record it and go on: the other host may still finish the job
                errors += 1
                log("error", job=job_id, error=f"{type(exc).__name__}: {exc}")
        time.sleep(0.05)
    log("stop", rounds=rounds, errors=errors)
    return 1 if errors else 0
