"""The `accelerate launch` command and the environment the script sees.

Multi-node values (machine rank, main process address and port) are left as
named variables: each target fills them its own way (a literal locally,
"$SLURM_NODEID" under srun, the pod's completion index on Kubernetes).
Nothing here touches a shell; `shell_words` quotes every literal.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from orchestrator.compile import rules
from orchestrator.compile.configs import ACCELERATE_CONFIG_NAME
from orchestrator.spec.models import TrainingJob

MACHINE_RANK = "MACHINE_RANK"
MAIN_PROCESS_IP = "MAIN_PROCESS_IP"
MAIN_PROCESS_PORT = "MAIN_PROCESS_PORT"
DEFAULT_PORT = 29500
MODULE_PREFIX = "-m "  # entrypoint.script "-m pkg.mod" runs a module, as python -m does


@dataclass(frozen=True)
class Var:
    """A value only the target knows (per node, per allocation)."""

    name: str


Token = str | Var


@dataclass(frozen=True)
class LaunchCommand:
    argv: tuple[Token, ...]

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.name for t in self.argv if isinstance(t, Var)))

    def resolve(self, values: Mapping[str, str]) -> list[str]:
        """Concrete argv; a missing value is a bug in the target, so it raises."""
        missing = [v for v in self.variables if v not in values]
        if missing:
            raise KeyError(f"launch variables not provided: {', '.join(missing)}")
        return [values[t.name] if isinstance(t, Var) else t for t in self.argv]

    def shell_words(self, render_var: Callable[[Var], str]) -> str:
        """One shell line: literals quoted, variables as the target spells them (e.g. '"$SLURM_NODEID"')."""
        return " ".join(render_var(t) if isinstance(t, Var) else shlex.quote(t) for t in self.argv)


# a placeholder, or `{{` / `}}`: a literal brace (as str.format reads them); read left to right, so
# `{{{micro_batch}}}` is `{8}`. A lone brace that is neither stays as it is (`{"a": 1}`).
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(micro_batch|grad_accum|checkpoint_dir|attempt|seq_len|world_size)\}")


def fill_placeholders(arg: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) else m.group()[0], arg)


def placeholder_values(job: TrainingJob, attempt: int, checkpoint_dir: str) -> dict[str, str]:
    spec = job.spec
    return {
        "micro_batch": str(spec.batch.micro),
        "grad_accum": str(rules.grad_accum(spec)),
        "checkpoint_dir": checkpoint_dir,
        "attempt": str(attempt),
        "seq_len": str(spec.batch.seq_len or ""),
        "world_size": str(spec.world_size),
    }


def launch_command(job: TrainingJob, config_dir: str, attempt: int, checkpoint_dir: str) -> LaunchCommand:
    spec = job.spec
    argv: list[Token] = [
        "accelerate", "launch",
        "--config_file", f"{config_dir.rstrip('/')}/{ACCELERATE_CONFIG_NAME}",
        "--num_machines", str(spec.resources.nodes),
        "--num_processes", str(spec.world_size),
        "--machine_rank", Var(MACHINE_RANK),
        "--main_process_ip", Var(MAIN_PROCESS_IP),
        "--main_process_port", Var(MAIN_PROCESS_PORT),
    ]
    values = placeholder_values(job, attempt, checkpoint_dir)
    script = spec.entrypoint.script
    if script.startswith(MODULE_PREFIX):  # a module (a Python function's runner): accelerate launch --module
        argv += ["--module", script[len(MODULE_PREFIX):].strip()]
    else:
        argv.append(script)
    argv.extend(fill_placeholders(a, values) for a in spec.entrypoint.args)
    return LaunchCommand(tuple(argv))


ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE = "expandable_segments:True"  # every attempt's default (script_environment)

# PyTorch's ProcessGroupNCCL (torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp, torch 2.13), set explicitly so
# that a collective that fails or times out ends the run in minutes instead of holding its GPUs (docs/design.md):
NCCL_ENVIRONMENT = {
    # 3 (SkipCleanUp): when a collective fails or times out, its watchdog tears the process down without
    # ncclCommAbort (which can itself hang); torch 2.13's default, but 0 (NoHandling: the process waits on)
    # before torch 2.2, and an inherited NCCL_ASYNC_ERROR_HANDLING=0 would turn it off
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
    # the heartbeat monitor: a thread that aborts the process when the watchdog itself is stuck (in a CUDA or NCCL
    # call that never returns) for TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC; on by default in torch 2.13
    "TORCH_NCCL_ENABLE_MONITORING": "1",
    # 3 minutes instead of torch's 8 (480 s): a stuck watchdog is no slow step, it never recovers
    "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "180",
}


def script_environment(job: TrainingJob, attempt: int, checkpoint_dir: str) -> dict[str, str]:
    """What the training script can read (documented in README 'What your script sees')."""
    spec = job.spec
    # unbuffered: a script's stdout goes to a file, where Python would hold it back in 8 KiB blocks and
    # progress lines (docs/progress.md) would reach `status` late and out of order with stderr.
    # faulthandler: a fatal signal (SIGSEGV, and the SIGABRT the hang watchdog sends) prints every thread's
    # Python traceback to stderr, the log: where each rank was (docs/design.md, "Hangs").
    # The NCCL variables make a failed or stuck collective end the run in minutes (NCCL_ENVIRONMENT); a value the
    # user set in entrypoint.env wins over each.
    # expandable segments: the CUDA caching allocator grows one segment instead of stranding free memory in split
    # blocks (a fragmentation OOM); unused without CUDA. A PYTORCH_CUDA_ALLOC_CONF of the user's replaces it.
    env = {"PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", ALLOC_CONF: EXPANDABLE, **NCCL_ENVIRONMENT,
           **spec.entrypoint.env}
    env.update({
        "SHARDCTL_JOB_NAME": job.metadata.name,
        "SHARDCTL_ATTEMPT": str(attempt),
        "SHARDCTL_CHECKPOINT_DIR": checkpoint_dir,
        "SHARDCTL_CHECKPOINT_EVERY": str(spec.checkpoint.every_steps or ""),
        "SHARDCTL_BACKEND": spec.backend,
        "SHARDCTL_SHARDING": spec.sharding,
        "SHARDCTL_ZERO_STAGE": str(rules.zero_stage(spec)),
        "SHARDCTL_LOAD_DTYPE": spec.precision.params,
        "SHARDCTL_MIXED_PRECISION": spec.precision.mixed,
        "SHARDCTL_MICRO_BATCH": str(spec.batch.micro),
        "SHARDCTL_GRAD_ACCUM": str(rules.grad_accum(spec)),
        "SHARDCTL_GLOBAL_BATCH": str(rules.global_batch(spec)),
        "SHARDCTL_SEQ_LEN": str(spec.batch.seq_len or ""),
        "SHARDCTL_WORLD_SIZE": str(spec.world_size),
        "SHARDCTL_ACTIVATION_CHECKPOINTING": "1" if spec.activation_checkpointing else "0",
        "SHARDCTL_OFFLOAD_OPTIMIZER": spec.offload.optimizer,
        "SHARDCTL_OFFLOAD_PARAMS": spec.offload.params,
        "SHARDCTL_MODEL": spec.model.name_or_path,
    })
    return env
