"""The local target: `accelerate launch` on this machine, as one process group per attempt.

render() writes nothing: it returns launch.sh and the config files exactly as submit runs them.
On a machine without GPUs the job runs `gpus_per_node` CPU processes over gloo, with a warning:
DeepSpeed really partitions on CPU (DS_ACCELERATOR=cpu; the script creates a gloo process
group); FSDP through accelerate does not shard on CPU and runs as DDP (ACCELERATE_USE_CPU=true).
docs/design.md says how accelerate and DeepSpeed behave on CPU.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.compile import CompiledJob, CompileError, Finding
from orchestrator.compile.launch import (
    DEFAULT_PORT,
    MACHINE_RANK,
    MAIN_PROCESS_IP,
    MAIN_PROCESS_PORT,
    MODULE_PREFIX,
)
from orchestrator.errors import Refused
from orchestrator.intake.secrets import check as check_secret_source
from orchestrator.intake.secrets import references, resolve_path
from orchestrator.lifecycle.classify import TAIL_BYTES, Outcome
from orchestrator.lifecycle.moves import Observation, Seen
from orchestrator.procfiles import read_json, spawn_detached, write_files
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.quantity import parse_bytes
from orchestrator.targets.base import AttemptRef, Driver, DryRun, notify_env_names, ranks_waited
from orchestrator.targets.cpu import compile_maybe_on_cpu, cpu_environment, has_gpu
from orchestrator.targets.filelog import FileLog, read_tail
from orchestrator.targets.local import wrapper as local_wrapper

HOST = socket.gethostname()  # where every local attempt runs: its one node

LAUNCH_SCRIPT = "launch.sh"


def launch_script(compiled: CompiledJob, *, workdir: str, cpu: bool, port: int = DEFAULT_PORT,
                  bin_dir: str | None = None, extra_env: dict[str, str] | None = None) -> str:
    """bash that starts one launcher per node on localhost; every value is shell-quoted."""
    job = compiled.job
    env = {**compiled.env, **(extra_env or {})}
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


# Every "node" of a local run is a launcher on this machine, each starting gpus_per_node processes: a
# cluster-sized spec (4096 x 64) would start a quarter of a million. No single machine has more than
# 64 GPUs or sensibly runs more CPU training processes, and the limit does not depend on the machine,
# so that a render says the same everywhere.
MAX_LOCAL_PROCESSES = 64


def check_size(job: TrainingJob) -> None:
    """CompileError (naming both fields) when the job is too big to run on one machine."""
    r = job.spec.resources
    if r.nodes * r.gpus_per_node > MAX_LOCAL_PROCESSES:
        raise CompileError([Finding(
            "error", "spec.resources",
            f"resources.nodes x resources.gpus_per_node = {r.nodes} x {r.gpus_per_node} = "
            f"{r.nodes * r.gpus_per_node} processes, all on this machine: the local target starts at most "
            f"{MAX_LOCAL_PROCESSES}; use target slurm or kubernetes for a cluster")])


def render(job: TrainingJob, run_dir: str, *, checkpoint_dir: str, attempt: int = 1, cpu: bool | None = None,
           port: int = DEFAULT_PORT, workdir: str | None = None, bin_dir: str | None = None,
           extra_env: dict[str, str] | None = None) -> DryRun:
    check_size(job)
    cpu = (not has_gpu()) if cpu is None else cpu
    compiled, warnings = compile_maybe_on_cpu(job, run_dir, checkpoint_dir, attempt, cpu)
    files = compiled.files()
    files[LAUNCH_SCRIPT] = launch_script(compiled, workdir=workdir or os.getcwd(), cpu=cpu, port=port,
                                         bin_dir=bin_dir, extra_env=extra_env)
    return DryRun("local", compiled, files, ["bash", f"{run_dir.rstrip('/')}/{LAUNCH_SCRIPT}"], tuple(warnings))


def free_port() -> int:
    """A port nobody listens on now: two attempts (or two jobs) never share a rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_limit(job: TrainingJob) -> int | None:
    """All 'nodes' of a local run share this machine: the run gets nodes x memory_per_node."""
    per_node = job.spec.resources.memory_per_node
    return parse_bytes(per_node) * job.spec.resources.nodes if per_node else None


class LocalTarget:
    """Runs each attempt under local_wrapper, in its own session, leaving exit.json behind."""

    name = "local"
    driver = Driver.SUPERVISOR

    def __init__(self, *, cpu: bool | None = None, bin_dir: str | None = None, port: int | None = None,
                 memory_mode: str | None = None) -> None:
        self.cpu = (not has_gpu()) if cpu is None else cpu
        self.bin_dir = bin_dir or str(Path(sys.executable).parent)
        self.port = port
        self.memory_mode = memory_mode or os.environ.get("SHARDCTL_MEMORY_LIMIT", "auto")
        self._children: dict[int, subprocess.Popen] = {}

    @classmethod
    def from_options(cls, options: dict) -> LocalTarget:
        return cls(cpu=options.get("cpu"), memory_mode=options.get("memory_mode"), port=options.get("port"))

    @property
    def on_gpu(self) -> bool:
        return not self.cpu

    def options(self) -> dict:
        return {"cpu": self.cpu, "memory_mode": self.memory_mode}

    def preflight(self, job: TrainingJob, workdir: str) -> list[str]:
        """The script must be there now (Slurm's nodes check theirs at submit too): a run that could only fail
        with `No such file` is refused before anything is recorded. Render has checked the rest."""
        script = job.spec.entrypoint.script
        if not script.startswith(MODULE_PREFIX) and not (Path(workdir) / Path(script).expanduser()).is_file():
            raise CompileError([Finding("error", "spec.entrypoint.script",
                                        f"{script}: no such file in {workdir}; nothing was recorded")])
        return []

    def prefetch(self, external_ids: list[str]) -> None:
        pass  # describe reads each attempt's own files

    def log_source(self, ref: AttemptRef, external_id: str | None) -> FileLog:
        return FileLog(ref.log_path)

    def render(self, job: TrainingJob, ref: AttemptRef) -> DryRun:
        dry = render(job, ref.run_dir, checkpoint_dir=ref.checkpoint_dir, attempt=ref.number, cpu=self.cpu,
                     port=self.port or free_port(), workdir=ref.workdir, bin_dir=self.bin_dir,
                     extra_env={"SHARDCTL_JOB_ID": ref.job_id, "SHARDCTL_RUN_DIR": ref.run_dir,
                                **({"SHARDCTL_RESUME_FROM": ref.resume_from} if ref.resume_from else {})})
        limit = memory_limit(job)
        request = {
            "command": dry.command,
            "cwd": ref.workdir,
            "log": Path(ref.log_path).name,
            "memory_limit_bytes": limit,
            "memory_mode": self.memory_mode,
            "cgroup_name": f"shardctl-{ref.job_id}-{ref.number}",
            # where the run writes: one of them full when it ends says what it died of (its log may be empty)
            "disk_paths": [p for p in (ref.run_dir, ref.checkpoint_dir) if p],
            # secrets by reference: the wrapper adds their values to the run's environment at launch
            "env_from": [{kind: resolve_path(value, ref.workdir) if kind == "file" else value}
                         for source in references(job.spec.entrypoint.env_from) for kind, value in source.items()],
            # spec.notify's variables are the supervisor's (it sends the webhooks), never the training script's
            "env_drop": notify_env_names(job),
        }
        warnings = list(dry.warnings)
        if limit is None:
            warnings.append("resources.memory_per_node is unset: the run has no memory limit")
        files = {**dry.files, local_wrapper.ATTEMPT_FILE: json.dumps(request, indent=1) + "\n"}
        return DryRun(self.name, dry.compiled, files, dry.command, tuple(warnings))

    def submit(self, dryrun: DryRun, ref: AttemptRef) -> str:
        """Start the wrapper. Each launch has a nonce, in the request and in every record the wrapper writes,
        so that a record of an earlier launch of this attempt (a resubmission after a crash) is never read."""
        run_dir = Path(ref.run_dir)
        request = json.loads(dryrun.files[local_wrapper.ATTEMPT_FILE])
        for source in request.get("env_from", []):  # a supervisor restarted from a shell without the variable
            if (why := check_secret_source(source, os.environ, ref.workdir)) is not None:
                raise Refused(f"entrypoint.env_from: {why}; attempt {ref.number} was not started")
        nonce = os.urandom(8).hex()
        request["launch"] = nonce
        files = {**dryrun.files, local_wrapper.ATTEMPT_FILE: json.dumps(request, indent=1) + "\n"}
        for stale in (local_wrapper.WRAPPER_FILE, local_wrapper.EXIT_FILE):
            try:
                (run_dir / stale).unlink()
            except FileNotFoundError:
                pass
        write_files(run_dir, files, executable=(LAUNCH_SCRIPT,))  # 0700, the rest 0600, whatever the umask
        proc = spawn_detached("orchestrator.targets.local.wrapper", [str(run_dir)], cwd=ref.workdir,
                              log_path=run_dir / "wrapper.log")
        self._children[proc.pid] = proc
        external_id = f"{proc.pid}:{local_wrapper.start_ticks(proc.pid)}:{nonce}"
        # "running" must mean launched: wait until the wrapper has joined its memory limit and started the
        # command (or already ended), so callers never see a running attempt without its wrapper.json
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and proc.poll() is None:
            info = _own(read_json(run_dir / local_wrapper.WRAPPER_FILE), nonce)
            if (info and "launched_at" in info) or _own(read_json(run_dir / local_wrapper.EXIT_FILE), nonce):
                break
            time.sleep(0.02)
        return external_id

    def recover(self, ref: AttemptRef) -> str | None:
        run_dir = Path(ref.run_dir)
        if not (run_dir / local_wrapper.ATTEMPT_FILE).exists():
            return None  # never got as far as writing the request
        nonce = (read_json(run_dir / local_wrapper.ATTEMPT_FILE) or {}).get("launch")
        deadline = time.monotonic() + 5.0  # a wrapper that was just started writes wrapper.json at once
        while time.monotonic() < deadline:
            info = _own(read_json(run_dir / local_wrapper.WRAPPER_FILE), nonce)
            if info:
                return f"{info['pid']}:{info['start_ticks']}" + (f":{nonce}" if nonce else "")
            time.sleep(0.1)
        return None

    def describe(self, external_id: str, ref: AttemptRef) -> Observation:
        pid, ticks, nonce = _parse_id(external_id)
        if pid in self._children:
            if self._children[pid].poll() is not None:  # reap our own child
                del self._children[pid]
        run_dir = Path(ref.run_dir)
        result = _own(read_json(run_dir / local_wrapper.EXIT_FILE), nonce)
        if result is None and local_wrapper.is_alive(pid, ticks):
            return Observation(Seen.RUNNING, nodes=(HOST,))
        result = result or _own(read_json(run_dir / local_wrapper.EXIT_FILE), nonce)  # it may just have ended
        tail = read_tail(ref.log_path, TAIL_BYTES)
        if result is None:
            return Observation(Seen.ENDED, outcome=Outcome(exit_code=None, log_tail=tail, preempted=True,
                                                           no_space=local_wrapper.full_filesystem([ref.run_dir])),
                               detail="the attempt's wrapper is gone without an exit status (machine restart or "
                                       "killed from outside)", nodes=(HOST,))
        return Observation(
            Seen.ENDED,
            outcome=Outcome(exit_code=result["exit_code"], signal=result["signal"], log_tail=tail,
                            oom_killed=result.get("oom_kills", 0) > 0,
                            preempted=result.get("terminated_by") is not None, no_space=result.get("no_space"),
                            hung=hung_text(result.get("hung"), run_dir)),
            peak_memory_bytes=result.get("peak_bytes"), nodes=(HOST,),
        )

    def cancel(self, external_id: str, ref: AttemptRef) -> None:
        self._signal(external_id, signal.SIGTERM)  # the wrapper stops the whole tree, then writes exit.json

    def stop_hung(self, external_id: str, ref: AttemptRef) -> None:
        """The wrapper dumps each rank's Python stacks into the log and stacks.txt, then stops the tree as on a
        cancel; exit.json's `hung` says where each rank waited. A second ask while it does so changes nothing."""
        self._signal(external_id, local_wrapper.HUNG_SIGNAL)

    def _signal(self, external_id: str, signum: int) -> None:
        pid, ticks, _ = _parse_id(external_id)
        if local_wrapper.is_alive(pid, ticks):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def hung_text(where: object, run_dir: Path) -> str | None:
    """Where each rank waited, from exit.json's `hung` (rank -> `file:line function`), for the attempt's reason."""
    return ranks_waited(where, str(run_dir / local_wrapper.STACKS_FILE))


def _parse_id(external_id: str) -> tuple[int, int | None, str | None]:
    """`PID:START_TICKS:LAUNCH` (ids recorded before launches had a nonce have no third part)."""
    pid, _, rest = external_id.partition(":")
    ticks, _, nonce = rest.partition(":")
    return int(pid), (int(ticks) if ticks and ticks != "None" else None), (nonce or None)


def _own(record: dict | None, nonce: str | None) -> dict | None:
    """A wrapper's record, if it is this launch's (any record when the launch has no nonce)."""
    if record is None or (nonce is not None and record.get("launch") != nonce):
        return None
    return record


__all__ = ["LAUNCH_SCRIPT", "LocalTarget", "free_port", "has_gpu", "launch_script", "render"]

