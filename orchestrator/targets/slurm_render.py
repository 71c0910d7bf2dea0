"""The Slurm dry run (pure): `job.sbatch` for an attempt, and `judge.sbatch` that runs when it ends.

job.sbatch asks for one task per node and runs one `accelerate launch` per node under `srun`,
with the node's rank from $SLURM_NODEID and the allocation's first host as the rendezvous
(accelerate #1327, #2362: without this every node thinks it is rank 0). Values from the spec
reach the shell only through shlex.quote; Slurm names are restricted by the spec itself.

judge.sbatch is the supervision without a terminal: a one-CPU job submitted with
`--dependency=afterany:<attempt>`, so Slurm itself starts it when the attempt ends, however it
ends. It records the outcome and, if the fallback policy says so, submits the next attempt with
its own judge. See docs/design.md, "Slurm".
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass

from orchestrator.compile import CompiledJob
from orchestrator.compile.launch import MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT, Var
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.quantity import parse_bytes
from orchestrator.targets.base import DryRun
from orchestrator.targets.cpu import compile_maybe_on_cpu, cpu_environment

JOB_SCRIPT = "job.sbatch"
JUDGE_SCRIPT = "judge.sbatch"
JUDGE_LOG = "judge.log"
CHECKPOINT_REQUEST = "checkpoint-requested"
JUDGE_MEMORY = "512M"
JUDGE_TIME = "00:10:00"
PORT_BASE = 20000

_PLAIN_PATH = re.compile(r"^[A-Za-z0-9_./@%+=:,-]+$")
_SHELL_VARS = {MACHINE_RANK: '"$SLURM_NODEID"', MAIN_PROCESS_IP: '"$MAIN_PROCESS_IP"',
               MAIN_PROCESS_PORT: '"$MAIN_PROCESS_PORT"'}


@dataclass(frozen=True)
class SlurmRequest:
    """Everything about one attempt that is not in the spec."""

    job_id: str
    attempt: int
    run_dir: str
    checkpoint_dir: str
    workdir: str
    log_path: str
    state_dir: str
    python: str
    package_root: str
    bin_dir: str
    cpu: bool = False


def slurm_job_name(name: str, job_id: str, attempt: int) -> str:
    """`<name>.<id>.<attempt>`: readable in squeue, and unique, so a lost submission can be found again."""
    return f"{name}.{job_id}.{attempt}"


def _directive_path(path: str) -> str:
    return path if _PLAIN_PATH.fullmatch(path) else '"' + path.replace('"', '\\"') + '"'


def memory_directive(memory_per_node: str) -> str:
    return f"{math.ceil(parse_bytes(memory_per_node) / (1 << 20))}M"


def requeue(job: TrainingJob) -> bool:
    slurm = job.spec.slurm
    return slurm.requeue if slurm.requeue is not None else job.spec.checkpoint.every_steps is not None


def _site(job: TrainingJob, partition: str | None) -> list[str]:
    slurm = job.spec.slurm
    out = []
    if partition:
        out.append(f"--partition={partition}")
    if slurm.account:
        out.append(f"--account={slurm.account}")
    if slurm.qos:
        out.append(f"--qos={slurm.qos}")
    return out


def directives(job: TrainingJob, req: SlurmRequest) -> list[str]:
    spec = job.spec
    res = spec.resources
    out = [f"--job-name={slurm_job_name(job.metadata.name, req.job_id, req.attempt)}",
           f"--nodes={res.nodes}", "--ntasks-per-node=1", f"--gpus-per-node={res.gpus_per_node}"]
    if res.cpus_per_node:
        out.append(f"--cpus-per-task={res.cpus_per_node}")
    if res.memory_per_node:
        out.append(f"--mem={memory_directive(res.memory_per_node)}")
    if spec.slurm.time:
        out.append(f"--time={spec.slurm.time}")
        out.append(f"--signal=B:USR1@{spec.slurm.signal_seconds}")
    out += _site(job, spec.slurm.partition)
    out += [f"--output={_directive_path(req.log_path)}", f"--error={_directive_path(req.log_path)}",
            "--open-mode=append"]  # a requeued attempt appends to the same log
    out.append("--requeue" if requeue(job) else "--no-requeue")
    out += list(spec.slurm.extra)  # last, verbatim: the user's word wins
    return out


def _launch_words(compiled: CompiledJob) -> str:
    """accelerate launch, with machine count and process count from the allocation."""
    words = []
    previous = None
    for token in compiled.launch.argv:
        if previous == "--num_machines":
            words.append('"$SLURM_JOB_NUM_NODES"')
        elif previous == "--num_processes":
            words.append('"$NUM_PROCESSES"')
        elif isinstance(token, Var):
            words.append(_SHELL_VARS[token.name])
        else:
            words.append(shlex.quote(token))
        previous = token
    return " ".join(words)


def job_script(compiled: CompiledJob, req: SlurmRequest) -> str:
    job = compiled.job
    spec = job.spec
    env = dict(compiled.env)
    env.update({"SHARDCTL_JOB_ID": req.job_id, "SHARDCTL_RUN_DIR": req.run_dir,
                "SHARDCTL_CHECKPOINT_REQUEST": f"{req.run_dir}/{CHECKPOINT_REQUEST}"})
    if req.cpu:
        env.update(cpu_environment(job))
    q = shlex.quote
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {d}" for d in directives(job, req)]
    lines += [
        f"# shardctl: job {job.metadata.name} ({req.job_id}), attempt {req.attempt}, target slurm.",
        "# Exactly what `shardctl submit` hands to `sbatch --parsable`. One task per node; each runs",
        "# accelerate launch with its node's rank and the allocation's first host as the rendezvous.",
        "set -euo pipefail",
        f"cd {q(req.workdir)}",
        f"export PATH={q(req.bin_dir)}:\"$PATH\"",
    ]
    lines += [f"export {k}={q(v)}" for k, v in sorted(env.items())]
    world = spec.world_size
    lines += [
        f"NUM_PROCESSES=$((SLURM_JOB_NUM_NODES * {spec.resources.gpus_per_node}))",
        f'if [ "$NUM_PROCESSES" -ne {world} ]; then',
        f'  echo "[shardctl] the allocation gives $NUM_PROCESSES processes; this attempt was compiled for {world}" >&2',
        "  exit 2",
        "fi",
        "# the allocation's first host (no `| head`: under pipefail, scontrol's SIGPIPE would fail the job)",
        'hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        "MAIN_PROCESS_IP=${hosts%%$'\\n'*}",
        f"MAIN_PROCESS_PORT=$(({PORT_BASE} + SLURM_JOB_ID % 20000))  # per job: jobs sharing a host never collide",
        "export NUM_PROCESSES MAIN_PROCESS_IP MAIN_PROCESS_PORT",
        'echo "[shardctl] Slurm job $SLURM_JOB_ID on $SLURM_JOB_NODELIST (restart ${SLURM_RESTART_COUNT:-0}),'
        ' rendezvous $MAIN_PROCESS_IP:$MAIN_PROCESS_PORT"',
    ]
    if spec.slurm.time:
        lines += [
            "# Slurm sends SIGUSR1 to this shell before the time limit (--signal=B:USR1@...): ask the script",
            "# to save a checkpoint now; the next attempt resumes from it.",
            "on_usr1() {",
            '  echo "[shardctl] time limit near: requesting a checkpoint ($SHARDCTL_CHECKPOINT_REQUEST)"',
            '  touch "$SHARDCTL_CHECKPOINT_REQUEST"',
            "}",
            "trap on_usr1 USR1",
        ]
    inner = "exec " + _launch_words(compiled)
    lines += [
        f"srun --nodes={spec.resources.nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {q(inner)} &",
        "step=$!",
        "# a trapped signal interrupts wait: wait again until the step has really ended, then pass on its status",
        'while kill -0 "$step" 2>/dev/null; do wait "$step" || true; done',
        'wait "$step"',
    ]
    return "\n".join(lines) + "\n"


def judge_script(job: TrainingJob, req: SlurmRequest) -> str:
    slurm = job.spec.slurm
    q = shlex.quote
    name = slurm_job_name(job.metadata.name, req.job_id, req.attempt) + ".judge"
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {d}" for d in [
        f"--job-name={name}", "--nodes=1", "--ntasks=1", "--cpus-per-task=1", f"--mem={JUDGE_MEMORY}",
        f"--time={JUDGE_TIME}", *_site(job, slurm.supervisor_partition or slurm.partition),
        f"--output={_directive_path(req.run_dir + '/' + JUDGE_LOG)}", "--open-mode=append",
        "--kill-on-invalid-dep=yes", "--no-requeue"]]
    lines += [
        f"# shardctl: judges attempt {req.attempt} of job {job.metadata.name} ({req.job_id}) once it has ended.",
        "# Submitted with --dependency=afterany:<the attempt's Slurm job id>. It records how the attempt",
        "# ended and, if the fallback policy says so, submits the next attempt with its own judge.",
        "set -euo pipefail",
        f"cd {q(req.workdir)}",
        f"export SHARDCTL_HOME={q(req.state_dir)}",
        f"export PYTHONPATH={q(req.package_root)}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"exec {q(req.python)} -m orchestrator.supervise.daemon {q(req.job_id)} --once",
    ]
    return "\n".join(lines) + "\n"


def render(job: TrainingJob, req: SlurmRequest) -> DryRun:
    compiled, warnings = compile_maybe_on_cpu(job, req.run_dir, req.checkpoint_dir, req.attempt, req.cpu)
    files = compiled.files()
    files[JOB_SCRIPT] = job_script(compiled, req)
    files[JUDGE_SCRIPT] = judge_script(compiled.job, req)
    if job.spec.resources.memory_per_node is None:
        warnings.append("resources.memory_per_node is unset: the job gets the partition's default memory")
    if job.spec.slurm.time is None:
        warnings.append("slurm.time is unset: the partition's default time limit applies, and no checkpoint "
                        "is requested before it")
    return DryRun("slurm", compiled, files, ["sbatch", "--parsable", f"{req.run_dir.rstrip('/')}/{JOB_SCRIPT}"],
                  tuple(warnings))
