"""The Slurm dry run (pure): `job.sbatch` for an attempt, and `judge.sbatch` that runs when it ends.

job.sbatch asks for one task per node and runs one `accelerate launch` per node under `srun`,
with the node's rank from $SLURM_NODEID and the allocation's first host as the rendezvous
(accelerate #1327, #2362: without this every node thinks it is rank 0). Values from the spec
reach the shell only through shlex.quote; Slurm names are restricted by the spec itself.

judge.sbatch is the supervision without a terminal: a one-CPU job submitted with
`--dependency=afterany:<attempt>`, so Slurm itself starts it when the attempt ends, however it
ends. It records the outcome and, if the fallback policy says so, submits the next attempt with
its own judge. See docs/design.md, "Slurm".

Secrets by reference (entrypoint.env_from) never appear in either script: a variable of the
submitting shell is named in `--export=ALL,NAME` (sbatch sends its value to slurmctld, the judge
passes it on to the next attempt), and a file is read by the batch script on the node when the
attempt starts, with the same rules as secretenv's reader.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass

from orchestrator.compile import CompiledJob, CompileError, Finding
from orchestrator.compile.launch import MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT, Var
from orchestrator.intake.secrets import resolve_path
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.quantity import parse_bytes
from orchestrator.targets.base import DryRun, notify_env_names
from orchestrator.targets.cpu import compile_maybe_on_cpu, cpu_environment

JOB_SCRIPT = "job.sbatch"
JUDGE_SCRIPT = "judge.sbatch"
JUDGE_LOG = "judge.log"
CHECKPOINT_REQUEST = "checkpoint-requested"
HUNG_FILE = "hung.json"  # written by the attempt's hang watchdog (supervise/watch.py) when it stops a hung run
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
    # resources.cpus_per_node unset: the target asks Slurm at submit (the render never does) how many
    # CPUs the partition's nodes have per GPU; `cpus_basis` says where the figure came from, or why
    # there is none ("" when nobody asked: a dry run).
    cpus_per_gpu: int | None = None
    cpus_basis: str = ""
    resume_from: str | None = None  # the newest complete checkpoint, for SHARDCTL_RESUME_FROM


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


def exported_names(job: TrainingJob) -> list[str]:
    """The variables of the submitting shell that must reach the job (entrypoint.env_from `env`), and its judge,
    which tells the webhooks (spec.notify's `env` references) and passes them all on to the next attempt."""
    names = [s.env for s in job.spec.entrypoint.env_from if s.env is not None]
    for hook in job.spec.notify:
        names += [ref.env for ref in (hook.url, hook.signing_secret) if ref is not None and ref.env is not None]
    return list(dict.fromkeys(names))


def export_directive(job: TrainingJob) -> list[str]:
    """`--export=ALL,NAME,...`: sbatch's default is ALL, but a site may change it (SBATCH_EXPORT); the named
    variables reach the job either way, and their values are in no file."""
    names = exported_names(job)
    return [f"--export=ALL,{','.join(names)}"] if names else []


def check_export(job: TrainingJob) -> None:
    """CompileError when slurm.extra sets --export too: one of the two would silently lose."""
    if not exported_names(job):
        return
    for i, extra in enumerate(job.spec.slurm.extra):
        if extra.split("=", 1)[0].strip() == "--export":
            raise CompileError([Finding(
                "error", f"spec.slurm.extra.{i}",
                f"{extra} conflicts with entrypoint.env_from, whose variables shardctl passes with "
                f"{export_directive(job)[0]}: remove it from slurm.extra")])


_ENV_FILE_READER = r"""# entrypoint.env_from files: KEY=VALUE lines read here, on the node, when the attempt starts;
# shardctl never copies them. Blank lines and # comments are skipped, `export ` is allowed, one pair
# of surrounding quotes is removed, nothing is expanded.
shardctl_env_file() {
  local file=$1 line key value n=0 re='^[[:blank:]]*(export[[:blank:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$'
  if [ ! -f "$file" ] || [ ! -r "$file" ]; then
    echo "[shardctl] cannot start the run: entrypoint.env_from: $file cannot be read on $(hostname)" >&2
    exit 2
  fi
  if [ -n "$(find "$file" -maxdepth 0 \( ! -user "$(id -u)" -o -perm /077 \))" ]; then
    echo "[shardctl] cannot start the run: entrypoint.env_from: $file must be yours and private (chmod 600)" >&2
    exit 2
  fi
  while IFS= read -r line || [ -n "$line" ]; do
    n=$((n + 1))
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    if [[ ! $line =~ $re ]]; then
      echo "[shardctl] cannot start the run: entrypoint.env_from: $file, line $n: not a KEY=VALUE line" >&2
      exit 2
    fi
    key=${BASH_REMATCH[2]}
    value=${BASH_REMATCH[3]}
    if [ ${#value} -ge 2 ] && { [[ $value == \"*\" ]] || [[ $value == \'*\' ]]; }; then
      value=${value:1:${#value}-2}
    fi
    export "$key=$value"
  done < "$file"
}"""


def env_file_lines(job: TrainingJob, workdir: str) -> list[str]:
    """The batch script's lines that read entrypoint.env_from files (none without any)."""
    files = [resolve_path(s.file, workdir) for s in job.spec.entrypoint.env_from if s.file is not None]
    if not files:
        return []
    return [_ENV_FILE_READER] + [f"shardctl_env_file {shlex.quote(f)}" for f in files]


def cpus_per_task(job: TrainingJob, req: SlurmRequest) -> int | None:
    """The spec's CPUs per node, else the node's CPUs per GPU times the GPUs of the one task per node: without
    --cpus-per-task Slurm gives a task one CPU, which starves the data loaders of a GPU job."""
    res = job.spec.resources
    if res.cpus_per_node:
        return res.cpus_per_node
    return req.cpus_per_gpu * res.gpus_per_node if req.cpus_per_gpu else None


def cpus_warning(job: TrainingJob, req: SlurmRequest) -> str | None:
    """What the render says when the spec sets no CPUs: the derived figure, why there is none, or (a dry run)
    that it is only known at submit."""
    res = job.spec.resources
    if res.cpus_per_node:
        return None
    if req.cpus_per_gpu:
        return (f"resources.cpus_per_node is unset: --cpus-per-task={cpus_per_task(job, req)} ({req.cpus_per_gpu} "
                f"CPUs per GPU x {res.gpus_per_node} GPUs per node, derived from {req.cpus_basis}); set "
                "resources.cpus_per_node to choose")
    if req.cpus_basis:
        return (f"resources.cpus_per_node is unset and cannot be derived ({req.cpus_basis}): no --cpus-per-task, "
                "so each task gets the partition's default (often 1 CPU); set resources.cpus_per_node")
    return ("resources.cpus_per_node is unset: submit derives --cpus-per-task from the CPUs per GPU of the "
            "partition's nodes (sinfo); a dry run does not ask Slurm, so this script has none")


def directives(job: TrainingJob, req: SlurmRequest) -> list[str]:
    spec = job.spec
    res = spec.resources
    out = [f"--job-name={slurm_job_name(job.metadata.name, req.job_id, req.attempt)}",
           f"--nodes={res.nodes}", "--ntasks-per-node=1", f"--gpus-per-node={res.gpus_per_node}"]
    cpus = cpus_per_task(job, req)
    if cpus:
        out.append(f"--cpus-per-task={cpus}")
    if res.memory_per_node:
        out.append(f"--mem={memory_directive(res.memory_per_node)}")
    if spec.slurm.time:
        out.append(f"--time={spec.slurm.time}")
        out.append(f"--signal=B:USR1@{spec.slurm.signal_seconds}")
    if res.avoid_nodes:  # after a node fault, and the site's suspect nodes (resources.avoid_nodes)
        out.append(f"--exclude={','.join(res.avoid_nodes)}")
    out += _site(job, spec.slurm.partition)
    out += [f"--output={_directive_path(req.log_path)}", f"--error={_directive_path(req.log_path)}",
            "--open-mode=append"]  # a requeued attempt appends to the same log
    out.append("--requeue" if requeue(job) else "--no-requeue")
    out += export_directive(job)
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
    if req.resume_from:
        env["SHARDCTL_RESUME_FROM"] = req.resume_from
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
    if dropped := notify_env_names(job):  # named in --export for the judge, which sends the webhooks
        lines.append(f"unset {' '.join(dropped)}  # spec.notify's credentials: the judge's, not the training's")
    lines += env_file_lines(job, req.workdir)
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
    lines += [
        "# Notices (docs/design.md, \"Notices\"): the script learns of them from $SHARDCTL_CHECKPOINT_REQUEST, a",
        "# file holding why: time_limit (save, then go on: the limit ends the run) or terminate (save, then stop).",
        '# A request left by an earlier run of this job (a requeue) is not this one\'s.',
        'rm -f "$SHARDCTL_CHECKPOINT_REQUEST"',
        "notice() {",
        '  echo "[shardctl] $2: requesting a checkpoint ($SHARDCTL_CHECKPOINT_REQUEST: $1)"',
        '  printf \'%s\\n\' "$1" > "$SHARDCTL_CHECKPOINT_REQUEST" || true',
        "}",
        "# A preemption (Slurm sends SIGTERM to this shell and every task, GraceTime before SIGKILL) or a cancel.",
        "trap 'notice terminate \"SIGTERM (a preemption or a cancel)\"' TERM",
    ]
    if spec.slurm.time:
        lines += [
            "# Slurm sends SIGUSR1 to this shell before the time limit (--signal=B:USR1@...): ask the script",
            "# to save a checkpoint now; the next attempt resumes from it.",
            "trap 'notice time_limit \"time limit near\"' USR1",
        ]
    if req.checkpoint_dir:
        lines += [
            "# A requeued run (a preemption, a node failure) starts here again with no supervisor in between: it",
            "# resumes from the newest complete checkpoint (a save cut short by the preemption is passed over).",
            'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then',
            f"  SHARDCTL_RESUME_FROM=$(PYTHONPATH={q(req.package_root)}${{PYTHONPATH:+:$PYTHONPATH}} {q(req.python)} "
            f"-m orchestrator.supervise.checkpoints {q(req.checkpoint_dir)}) || SHARDCTL_RESUME_FROM=",
            '  [ -n "$SHARDCTL_RESUME_FROM" ] && export SHARDCTL_RESUME_FROM || unset SHARDCTL_RESUME_FROM',
            '  echo "[shardctl] requeued: resuming from ${SHARDCTL_RESUME_FROM:-the start (nothing complete)}"',
            "fi",
        ]
    inner = "exec " + _launch_words(compiled)
    limits = " ".join("-" if v is None else str(v)
                      for v in (spec.resilience.hang_after, spec.resilience.first_step_within))
    lines += [
        f"srun --nodes={spec.resources.nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {q(inner)} &",
        "step=$!",
        "# the hang watchdog (spec.resilience.hang_after): no output and no progress for the limit, and it writes",
        f"# {HUNG_FILE} and stops the step; it leaves by itself when the step ends",
        f"PYTHONPATH={q(req.package_root)}${{PYTHONPATH:+:$PYTHONPATH}} {q(req.python)} "
        f'-m orchestrator.supervise.watch {q(req.run_dir)} {q(req.log_path)} "$step" {limits} &',
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
        f"--time={JUDGE_TIME}", *_site(job, slurm.supervisor_partition),
        f"--output={_directive_path(req.run_dir + '/' + JUDGE_LOG)}", "--open-mode=append",
        "--kill-on-invalid-dep=yes", "--no-requeue", *export_directive(job)]]
    lines += [
        f"# shardctl: judges attempt {req.attempt} of job {job.metadata.name} ({req.job_id}) once it has ended.",
        "# Submitted with --dependency=afterany:<the attempt's Slurm job id>. It records how the attempt",
        "# ended and, if the fallback policy says so, submits the next attempt with its own judge.",
        *([] if slurm.supervisor_partition else [
            "# No --partition: Slurm's default partition runs this one-CPU job, not the attempt's GPU",
            "# partition (slurm.supervisor_partition names another)."]),
        "set -euo pipefail",
        f"cd {q(req.workdir)}",
        f"export SHARDCTL_HOME={q(req.state_dir)}",
        f"export PYTHONPATH={q(req.package_root)}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"exec {q(req.python)} -m orchestrator.supervise.daemon {q(req.job_id)} --once",
    ]
    return "\n".join(lines) + "\n"


def render(job: TrainingJob, req: SlurmRequest) -> DryRun:
    check_export(job)
    compiled, warnings = compile_maybe_on_cpu(job, req.run_dir, req.checkpoint_dir, req.attempt, req.cpu)
    files = compiled.files()
    files[JOB_SCRIPT] = job_script(compiled, req)
    files[JUDGE_SCRIPT] = judge_script(compiled.job, req)
    if (cpus := cpus_warning(job, req)) is not None:
        warnings.append(cpus)
    if job.spec.resources.memory_per_node is None:
        warnings.append("resources.memory_per_node is unset: the job gets the partition's default memory")
    if job.spec.slurm.time is None:
        warnings.append("slurm.time is unset: the partition's default time limit applies, and no checkpoint "
                        "is requested before it")
    return DryRun("slurm", compiled, files, ["sbatch", "--parsable", f"{req.run_dir.rstrip('/')}/{JOB_SCRIPT}"],
                  tuple(warnings))
