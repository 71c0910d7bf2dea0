"""How a run ended, from exit status, signals, outside evidence and the log tail. Table-driven, pure.

`accelerate launch` exits 1 for every worker failure, so the launcher's code says little:
the worker's traceback and torchrun's failure block do. An OOM kill and any other SIGKILL
look alike from inside; only outside evidence (cgroup oom_kill, Slurm OUT_OF_MEMORY,
Kubernetes OOMKilled) tells them apart, and callers pass it as `oom_killed`.

Message sources: torch c10/cuda/CUDACachingAllocator.cpp ("CUDA out of memory. Tried to
allocate ... GPU N has a total capacity of ..."; not in the CPU wheel, so checked against
torch's source), c10's DefaultCPUAllocator ("can't allocate memory: you tried to allocate",
found in the installed libc10.so), cuBLAS/cuDNN status names, NCCL's "Cuda failure ... 'out of memory'".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["succeeded", "cuda_oom", "host_oom", "preempted", "timeout", "cancelled", "user_error", "unknown"]
OOM_KINDS = ("cuda_oom", "host_oom")
TAIL_BYTES = 256 * 1024

# (kind, pattern, what it means). Order matters: the first match wins, OOMs before the errors they cause.
PATTERNS: tuple[tuple[Kind, re.Pattern[str], str], ...] = tuple(
    (kind, re.compile(pattern, re.MULTILINE), meaning) for kind, pattern, meaning in (
        ("cuda_oom", r"CUDA out of memory\. Tried to allocate", "torch CUDA caching allocator out of memory"),
        ("cuda_oom", r"torch\.(?:cuda\.)?OutOfMemoryError", "torch.OutOfMemoryError"),
        ("cuda_oom", r"CUDA error: out of memory", "CUDA runtime out of memory"),
        ("cuda_oom", r"CUBLAS_STATUS_ALLOC_FAILED", "cuBLAS could not allocate its workspace"),
        ("cuda_oom", r"CUDNN_STATUS_ALLOC_FAILED", "cuDNN could not allocate"),
        ("cuda_oom", r"Cuda failure(?: \d+)? 'out of memory'", "NCCL: CUDA out of memory"),
        ("host_oom", r"DefaultCPUAllocator: can't allocate memory", "host memory exhausted (CPU allocator)"),
        ("host_oom", r"std::bad_alloc", "host memory exhausted (std::bad_alloc)"),
        ("host_oom", r"^(?:\[rank\d+\]: )?MemoryError\b", "host memory exhausted (MemoryError)"),
        ("host_oom", r"Cannot allocate memory", "host memory exhausted (ENOMEM)"),
        ("timeout", r"DUE TO TIME LIMIT", "time limit reached"),
        # Not "Signal 15 (SIGTERM) received": torchrun sends SIGTERM to every rank once one fails.
        ("preempted", r"DUE TO PREEMPTION", "preempted by the scheduler"),
        ("user_error", r"^(?:\[rank\d+\]: )?(?:ModuleNotFoundError|ImportError|SyntaxError|IndentationError)\b",
         "the script cannot be imported"),
        ("user_error", r"error: (?:unrecognized arguments|argument |the following arguments are required)",
         "bad script arguments"),
        ("user_error", r"can't open file .*No such file or directory", "the script does not exist"),
    )
)


# torchrun's "Root Cause (first observed failure)" block: the worker that died first, by a signal.
_ROOT_CAUSE_SIGNAL = re.compile(r"Root Cause \(first observed failure\):[\s\S]*?exitcode\s*:\s*-\d+ \(pid: \d+\)\s*"
                                r"\((SIG[A-Z]+)\)")


@dataclass(frozen=True)
class Outcome:
    """What the target observed when an attempt ended."""

    exit_code: int | None
    signal: int | None = None
    log_tail: str = ""
    oom_killed: bool = False  # outside evidence: cgroup oom_kill, Slurm OUT_OF_MEMORY, Kubernetes OOMKilled
    timed_out: bool = False
    cancelled: bool = False
    preempted: bool = False


@dataclass(frozen=True)
class Failure:
    kind: Kind
    reason: str  # one line, for the history
    evidence: str = ""  # the log line or fact that decided it

    @property
    def is_oom(self) -> bool:
        return self.kind in OOM_KINDS

    @property
    def end_state(self) -> Literal["succeeded", "cancelled", "failed"]:
        """The state an attempt (or a job) ends in after this."""
        return self.kind if self.kind in ("succeeded", "cancelled") else "failed"  # type: ignore[return-value]


def _first_match(text: str) -> tuple[Kind, str, str] | None:
    for kind, pattern, meaning in PATTERNS:
        m = pattern.search(text)
        if m:
            start = text.rfind("\n", 0, m.start()) + 1
            end = text.find("\n", m.end())
            return kind, meaning, text[start:end if end != -1 else None].strip()[:300]
    return None


def classify(outcome: Outcome) -> Failure:
    tail = outcome.log_tail[-TAIL_BYTES:]
    if outcome.cancelled:
        return Failure("cancelled", "cancelled by the user")
    ended_by_cluster = outcome.oom_killed or outcome.timed_out or outcome.preempted  # Slurm: TIMEOUT is "0:0"
    if outcome.exit_code == 0 and outcome.signal is None and not ended_by_cluster:
        return Failure("succeeded", "exited 0")
    if outcome.oom_killed:
        return Failure("host_oom", "killed by the out-of-memory killer (memory limit reached)", "oom_kill event")
    matched = _first_match(tail)
    if matched and matched[0] in OOM_KINDS:
        return Failure(matched[0], matched[1], matched[2])
    if outcome.timed_out:
        return Failure("timeout", "time limit reached")
    if outcome.preempted:
        return Failure("preempted", "preempted or terminated by the cluster")
    if matched:
        return Failure(matched[0], matched[1], matched[2])
    if outcome.signal is not None:
        return Failure("unknown", f"killed by signal {outcome.signal} with no out-of-memory evidence")
    root = _ROOT_CAUSE_SIGNAL.search(tail)
    if root:
        return Failure("unknown", f"a worker was killed by {root.group(1)} with no out-of-memory evidence",
                       root.group(0).strip())
    return Failure("unknown", f"exited {outcome.exit_code} with no recognised cause", _last_error_line(tail))


def _last_error_line(tail: str) -> str:
    for line in reversed(tail.splitlines()):
        if re.search(r"(Error|Exception)\b", line) and "ChildFailedError" not in line:
            return line.strip()[:300]
    return ""
