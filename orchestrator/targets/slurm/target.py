"""The Slurm target: `sbatch --parsable` for each attempt, plus a judge job that runs when it ends.

Submitted with plain sbatch rather than submitit: the request must be a readable script that
`shardctl render` shows and `sbatch --test-only` checks, and the job is `accelerate launch`,
not a pickled Python callable. Watching goes through one batched `sacct` (slurm_accounting).
"""

from __future__ import annotations

import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import orchestrator
from orchestrator.errors import Refused, SlurmRefused, SlurmTimeout, SlurmUnavailable
from orchestrator.lifecycle.classify import TAIL_BYTES, Outcome
from orchestrator.lifecycle.moves import Observation, Seen
from orchestrator.procfiles import read_json, write_files, write_json
from orchestrator.spec.models import TrainingJob
from orchestrator.store.paths import state_dir as default_state_dir
from orchestrator.targets.base import AttemptRef, Driver, DryRun, ranks_waited
from orchestrator.targets.filelog import FileLog, read_tail
from orchestrator.targets.slurm import refusals as slurm_refusals
from orchestrator.targets.slurm import render as slurm_render
from orchestrator.targets.slurm.accounting import (
    LOST_STATES,
    POLLER,
    JobInfo,
    Poller,
    node_shapes,
    run_once,
    run_slurm,
)

SUBMITTED_FILE = "slurm.json"  # {"job": id, "judge": id or None[, "judge_refused": why]}, once sbatch answered


# A busy slurmctld (a sweep of hundreds of points submitted at once) answers sbatch with these, in Slurm's words
# (slurm_strerror: ESLURM_... and errno strings; sbatch's "Batch job submission failed: ..."): try again later.
BUSY = re.compile(r"Socket timed out on send/recv operation|Resource temporarily unavailable|Unable to contact "
                  r"slurm controller|Slurm temporarily unable to accept job|Zero Bytes were transmitted or received|"
                  r"Slurmctld is busy|slurmctld not responding")
SBATCH_TRIES = 6
SBATCH_BACKOFF_S = 2.0  # then 4, 8, 16, 32 s (with jitter): about a minute in all before giving up


def sbatch(argv: list[str], cwd: str | None = None, name: str | None = None) -> str:
    """sbatch; returns the job id. SlurmRefused when sbatch refuses (nothing was submitted), SlurmTimeout when it
    does not answer (it may have submitted). When slurmctld is busy (BUSY) it is tried again with backoff, but
    only once the job's name (`name`: unique per attempt) shows that the lost try did not submit it after all:
    a socket timeout may lose the answer to a submission that happened."""
    for attempt in range(SBATCH_TRIES):
        proc = run_once(["sbatch", "--parsable", *argv], timeout=120, cwd=cwd)
        if proc.returncode == 0:
            return proc.stdout.strip().split(";")[0]  # "id" or "id;cluster"
        words = proc.stderr.strip() or f"sbatch exited {proc.returncode}"
        if not BUSY.search(words) or attempt == SBATCH_TRIES - 1:
            raise SlurmRefused(words)
        time.sleep(SBATCH_BACKOFF_S * 2 ** attempt * random.uniform(0.8, 1.2))
        if name is not None and (found := submitted_as(name)) is not None:
            return found
        print(f"shardctl: sbatch: Slurm is busy ({words.splitlines()[-1][:200]}); trying again "
              f"({attempt + 2} of {SBATCH_TRIES})", file=sys.stderr)
    raise AssertionError("unreachable")


def submitted_as(name: str) -> str | None:
    """The id of the job named `name`, if Slurm has one (slurmctld knows a job the moment sbatch returns;
    accounting may lag behind, so ask both), else None; None too when Slurm cannot say."""
    for argv in (["squeue", "-h", "--name", name, "-o", "%i"],
                 ["sacct", "-n", "-X", "-P", "--name", name, "-S", "now-30days", "-o", "JobID"]):
        try:
            ids = [line.strip() for line in run_slurm(argv).splitlines() if line.strip()]
        except (SlurmUnavailable, SlurmTimeout):
            return None
        if ids:
            return ids[-1]
    return None


def test_only(script: str) -> str:
    """`sbatch --test-only`: the controller checks the request (partition, GPUs, limits) and starts nothing;
    SlurmRefused when it would refuse it."""
    for attempt in range(SBATCH_TRIES):  # it submits nothing: a busy slurmctld is simply asked again
        proc = run_once(["sbatch", "--test-only", script])
        message = "\n".join(line for line in proc.stderr.splitlines() if line.strip())
        if proc.returncode == 0:
            return message
        if not BUSY.search(message) or attempt == SBATCH_TRIES - 1:
            raise SlurmRefused(message or f"sbatch --test-only exited {proc.returncode}")
        time.sleep(SBATCH_BACKOFF_S * 2 ** attempt * random.uniform(0.8, 1.2))
    raise AssertionError("unreachable")


class SlurmTarget:
    name = "slurm"
    driver = Driver.JUDGE

    def __init__(self, *, cpu: bool = False, state_dir: str | None = None, python: str | None = None,
                 poller: Poller | None = None, cpus_per_gpu: int | None = None, cpus_basis: str = "") -> None:
        self.cpu = cpu
        self.state_dir = state_dir or str(default_state_dir())
        self.python = python or sys.executable
        self.poller = poller or POLLER
        self.cpus_per_gpu = cpus_per_gpu  # learnt from sinfo at submit, then kept with the job (options)
        self.cpus_basis = cpus_basis
        self._judge_refusals: dict[str, str] = {}  # run_dir -> why sbatch refused its judge ("" when it did not)

    @classmethod
    def from_options(cls, options: dict) -> SlurmTarget:
        """The login node's GPUs say nothing about the compute nodes': CPU runs only when forced."""
        cpu = options["cpu"] if "cpu" in options else os.environ.get("SHARDCTL_FORCE_CPU") == "1"
        per_gpu = options.get("cpus_per_gpu")
        return cls(cpu=bool(cpu), state_dir=options.get("state_dir"),
                   cpus_per_gpu=int(per_gpu) if per_gpu else None, cpus_basis=str(options.get("cpus_basis") or ""))

    @property
    def on_gpu(self) -> bool:
        return not self.cpu

    def options(self) -> dict:
        """Kept with the job: every attempt and judge renders with the CPUs figure derived at submit."""
        out: dict = {"cpu": self.cpu}
        if self.cpus_basis:
            out.update(cpus_per_gpu=self.cpus_per_gpu, cpus_basis=self.cpus_basis)
        return out

    def preflight(self, job: TrainingJob, workdir: str) -> list[str]:
        """Derive the CPUs per task when the spec sets none, then `sbatch --test-only` of attempt 1 and of its
        judge: partition, GPU count, CPUs, memory and time checked by slurmctld before anything is recorded."""
        if not job.spec.resources.cpus_per_node:
            self.cpus_per_gpu, self.cpus_basis = derive_cpus_per_gpu(job.spec.slurm.partition)
        with tempfile.TemporaryDirectory(prefix="shardctl-check-") as scratch:
            run_dir = f"{scratch}/attempt-1"
            ref = AttemptRef("check", 1, run_dir, f"{scratch}/checkpoints", workdir, f"{run_dir}/output.log")
            try:
                message = self.check(self.render(job, ref), scratch)
            except SlurmRefused as exc:
                raise refusal_of(job, str(exc)) from None
        return [message] if message else []

    def log_source(self, ref: AttemptRef, external_id: str | None) -> FileLog:
        return FileLog(ref.log_path)

    def request(self, ref: AttemptRef) -> slurm_render.SlurmRequest:
        return slurm_render.SlurmRequest(
            job_id=ref.job_id, attempt=ref.number, run_dir=ref.run_dir, checkpoint_dir=ref.checkpoint_dir,
            workdir=ref.workdir, log_path=ref.log_path, state_dir=self.state_dir, python=self.python,
            package_root=str(Path(orchestrator.__file__).resolve().parent.parent),
            bin_dir=str(Path(self.python).parent), cpu=self.cpu, cpus_per_gpu=self.cpus_per_gpu,
            cpus_basis=self.cpus_basis, resume_from=ref.resume_from)

    def render(self, job: TrainingJob, ref: AttemptRef) -> DryRun:
        return slurm_render.render(job, self.request(ref))

    def check(self, dry: DryRun, scratch_dir: str) -> str:
        """Ask the controller whether it would accept this attempt and its judge (on its own partition), before
        anything is recorded."""
        names = (slurm_render.JOB_SCRIPT, slurm_render.JUDGE_SCRIPT)
        write_files(Path(scratch_dir), {name: dry.files[name] for name in names})
        message = test_only(str(Path(scratch_dir) / slurm_render.JOB_SCRIPT))
        try:
            test_only(str(Path(scratch_dir) / slurm_render.JUDGE_SCRIPT))
        except SlurmRefused as exc:
            raise SlurmRefused(f"the judge job that follows each attempt: {exc} (slurm.supervisor_partition names "
                               "the partition for it; unset, Slurm's default partition)") from None
        return message

    def submit(self, dryrun: DryRun, ref: AttemptRef) -> str:
        missing = [n for n in slurm_render.exported_names(dryrun.compiled.job) if n not in os.environ]
        if missing:  # sbatch would start the job without them: the judge or a shell that lacks them submits this
            raise Refused(f"entrypoint.env_from: {', '.join(missing)} not set in the environment of the process "
                          f"submitting attempt {ref.number} (export it in the shell that runs shardctl); nothing "
                          "was submitted")
        run_dir = Path(ref.run_dir)
        write_files(run_dir, dryrun.files)
        try:
            job_id = sbatch([str(run_dir / slurm_render.JOB_SCRIPT)], cwd=ref.workdir,
                            name=_job_name(dryrun.files[slurm_render.JOB_SCRIPT]))
        except SlurmRefused as exc:  # said as at submit: the spec's field (too few nodes once some are avoided...)
            job = dryrun.compiled.job
            explained = slurm_refusals.explain(job, str(exc), slurm_refusals.SiteLimits(job.spec.slurm.partition or ""))
            if explained is None:
                raise
            raise SlurmRefused(f"{explained[0]}: {explained[1]}") from None
        write_json(run_dir / SUBMITTED_FILE, {"job": job_id, "judge": None})
        try:
            judge = sbatch([f"--dependency=afterany:{job_id}", str(run_dir / slurm_render.JUDGE_SCRIPT)],
                           cwd=ref.workdir, name=_job_name(dryrun.files[slurm_render.JUDGE_SCRIPT]))
        except (SlurmRefused, SlurmTimeout) as exc:  # the attempt runs: any shardctl command that reads the job
            # judges it later; status says so meanwhile (open_detail)
            refused = " ".join(str(exc).split())[:500]
            print(f"shardctl: attempt {ref.number}: the judge job was refused ({refused}); "
                  "`shardctl status` will judge the attempt when it ends", file=sys.stderr)
            write_json(run_dir / SUBMITTED_FILE, {"job": job_id, "judge": None, "judge_refused": refused})
        else:
            write_json(run_dir / SUBMITTED_FILE, {"job": job_id, "judge": judge})
        self.poller.watch([job_id])
        return job_id

    def recover(self, ref: AttemptRef) -> str | None:
        run_dir = Path(ref.run_dir)
        submitted = read_json(run_dir / SUBMITTED_FILE)
        if submitted:
            return str(submitted["job"])
        script = run_dir / slurm_render.JOB_SCRIPT
        if not script.exists():
            return None  # never got as far as writing the request
        name = _job_name(script.read_text())
        # slurmctld knows a job the moment sbatch returns; accounting may lag behind, so ask both
        for argv in (["squeue", "-h", "--name", name, "-o", "%i"],
                     ["sacct", "-n", "-X", "-P", "--name", name, "-S", "now-30days", "-o", "JobID"]):
            ids = [line.strip() for line in run_slurm(argv).splitlines() if line.strip()]
            if ids:
                return ids[-1]
        return None

    def prefetch(self, external_ids: list[str]) -> None:
        """One sacct for all these attempts: the poller every describe in this process shares."""
        self.poller.watch(external_ids)
        self.poller.poll()

    def describe(self, external_id: str, ref: AttemptRef) -> Observation:
        info = self.poller.get(external_id)
        if info is None or info.phase == "unknown":
            return Observation(Seen.PENDING, detail=f"Slurm does not report job {external_id} yet")
        if info.phase != "ended":
            return Observation(Seen(info.phase), detail=self.open_detail(info, ref), preemptions=info.requeues,
                               nodes=info.nodes, stalled=info.stalled)
        tail = read_tail(ref.log_path, TAIL_BYTES)
        found = read_json(Path(ref.run_dir) / slurm_render.HUNG_FILE)
        hung = found.get("reason") if isinstance(found, dict) and isinstance(found.get("reason"), str) else None
        if hung and isinstance(found, dict) and (waited := ranks_waited(found.get("where"),
                                                                         f"{ref.run_dir}/stacks-NODE.txt")):
            hung = f"{hung[:500]}; {waited}"
        outcome = Outcome(exit_code=info.exit_code, signal=info.signal, log_tail=tail, hung=hung and hung[:1000],
                          oom_killed=info.out_of_memory, timed_out=info.state in ("TIMEOUT", "DEADLINE"),
                          cancelled=info.state == "CANCELLED", preempted=info.state in LOST_STATES,
                          node_failed=info.state == "NODE_FAIL")
        self.poller.forget([external_id])
        detail = f"Slurm job {external_id}: {info.summary()}"
        if info.state == "CANCELLED":
            detail = f"Slurm job {external_id} was cancelled (scancel, or an administrator)"
        return Observation(Seen.ENDED, outcome=outcome, peak_memory_bytes=info.max_rss_bytes, detail=detail,
                           nodes=info.nodes,
                           preemptions=info.requeues)

    def open_detail(self, info: JobInfo, ref: AttemptRef) -> str:
        """What Slurm says of an open attempt beyond its state ("" when nothing): why it pends, its requeues,
        and that no judge job follows it (sbatch refused the judge when the attempt was submitted)."""
        said = []
        if info.phase == "pending" or info.reason not in ("", "None"):
            said.append(f"{info.state} ({info.reason})" if info.reason not in ("", "None") else info.state)
        if info.requeues:
            said.append(f"requeued {info.requeues}x: the attempt resumes from its checkpoint")
        if ref.run_dir not in self._judge_refusals:  # read once: written when the attempt was submitted
            self._judge_refusals[ref.run_dir] = str((read_json(Path(ref.run_dir) / SUBMITTED_FILE) or {}).get(
                "judge_refused") or "")
        if refused := self._judge_refusals[ref.run_dir]:
            said.append(f"no judge job follows it (sbatch refused it: {refused}): the next shardctl command that "
                        "reads the job after the attempt ends judges it")
        return "; ".join(said)

    def stop_hung(self, external_id: str, ref: AttemptRef) -> None:
        """No stack capture here yet (no hang watchdog drives this target: docs/design.md, "Hangs"): the attempt is
        cancelled, its judge is not (it runs after it and makes the next move: the restart)."""
        run_slurm(["scancel", external_id])

    def cancel(self, external_id: str, ref: AttemptRef) -> None:
        """The attempt and its judge: the caller records the end itself, nothing is left to resubmit."""
        submitted = read_json(Path(ref.run_dir) / SUBMITTED_FILE) or {}
        ids = [external_id] + ([str(submitted["judge"])] if submitted.get("judge") else [])
        run_slurm(["scancel", *ids])


def refusal_of(job: TrainingJob, slurm_words: str) -> Exception:
    """A refusal at submit as the spec's field that caused it (a CompileError: FILE:LINE: field: why, with
    Slurm's words), or as Slurm said it when its words name no field of ours."""
    from orchestrator.compile import CompileError, Finding

    partition = job.spec.slurm.partition or ""
    max_time = ""
    try:  # what the partition allows: the explanation of a time limit needs it, and it costs one sinfo
        for line in run_slurm(["sinfo", "-h", "-o", "%P|%l"], retries=0).splitlines():
            name, _, limit = line.strip().partition("|")
            if name.rstrip("*") == partition or (not partition and name.endswith("*")):
                partition, max_time = name.rstrip("*"), limit
                break
    except (SlurmUnavailable, SlurmTimeout):
        pass
    explained = slurm_refusals.explain(job, slurm_words, slurm_refusals.SiteLimits(partition, max_time))
    if explained is None:
        return SlurmRefused(slurm_words)
    field, why = explained
    return CompileError([Finding("error", field, why)])


def derive_cpus_per_gpu(partition: str | None) -> tuple[int | None, str]:
    """CPUs per GPU of the partition's nodes (the fewest, if they differ) and where that came from; (None, why)
    when Slurm cannot say (no GPUs there, sinfo failing)."""
    try:
        text = run_slurm(["sinfo", "-h", "--exact", "-o", "%P|%c|%G"])
    except (SlurmUnavailable, SlurmTimeout) as exc:
        return None, f"sinfo failed: {exc}"
    name, shapes = node_shapes(text, partition)
    if name is None:
        return None, "no partition named and Slurm has no default partition"
    if not shapes:
        return None, f"sinfo lists no nodes in partition {name}"
    with_gpus = [(cpus, gpus) for cpus, gpus in shapes if gpus > 0]
    if not with_gpus:
        return None, f"sinfo reports no GPUs on partition {name}'s nodes"
    cpus, gpus = min(with_gpus, key=lambda s: s[0] // s[1])
    return max(1, cpus // gpus), f"partition {name}'s nodes: {cpus} CPUs, {gpus} GPUs each"


def _job_name(script: str) -> str:
    for line in script.splitlines():
        if line.startswith("#SBATCH --job-name="):
            return line.split("=", 1)[1].strip()
    raise ValueError("job.sbatch has no --job-name")


__all__ = ["SlurmTarget", "sbatch", "test_only"]
