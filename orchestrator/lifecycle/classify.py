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

from orchestrator.spec.states import AttemptState, FailureKind

K = FailureKind
TAIL_BYTES = 256 * 1024

# (kind, pattern, what it means). Order matters: the first match wins, OOMs before the errors they cause.
PATTERNS: tuple[tuple[FailureKind, re.Pattern[str], str], ...] = tuple(
    (kind, re.compile(pattern, re.MULTILINE), meaning) for kind, pattern, meaning in (
        (K.CUDA_OOM, r"CUDA out of memory\. Tried to allocate", "torch CUDA caching allocator out of memory"),
        (K.CUDA_OOM, r"torch\.(?:cuda\.)?OutOfMemoryError", "torch.OutOfMemoryError"),
        (K.CUDA_OOM, r"CUDA error: out of memory", "CUDA runtime out of memory"),
        (K.CUDA_OOM, r"CUBLAS_STATUS_ALLOC_FAILED", "cuBLAS could not allocate its workspace"),
        (K.CUDA_OOM, r"CUDNN_STATUS_ALLOC_FAILED", "cuDNN could not allocate"),
        (K.CUDA_OOM, r"Cuda failure(?: \d+)? 'out of memory'", "NCCL: CUDA out of memory"),
        (K.HOST_OOM, r"DefaultCPUAllocator: can't allocate memory", "host memory exhausted (CPU allocator)"),
        (K.HOST_OOM, r"std::bad_alloc", "host memory exhausted (std::bad_alloc)"),
        (K.HOST_OOM, r"^(?:\[rank\d+\]: )?MemoryError\b", "host memory exhausted (MemoryError)"),
        (K.HOST_OOM, r"Cannot allocate memory", "host memory exhausted (ENOMEM)"),
        (K.TIMEOUT, r"DUE TO TIME LIMIT", "time limit reached"),
        # Not "Signal 15 (SIGTERM) received": torchrun sends SIGTERM to every rank once one fails.
        (K.PREEMPTED, r"DUE TO PREEMPTION", "preempted by the scheduler"),
        (K.USER_ERROR, r"^(?:\[rank\d+\]: )?(?:ModuleNotFoundError|ImportError|SyntaxError|IndentationError)\b",
         "the script cannot be imported"),
        (K.USER_ERROR, r"error: (?:unrecognized arguments|argument |the following arguments are required)",
         "bad script arguments"),
        (K.USER_ERROR, r"can't open file .*No such file or directory", "the script does not exist"),
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
    """Why an attempt did not succeed (a success has no Failure)."""

    kind: FailureKind
    reason: str  # one line, for the history
    evidence: str = ""  # the log line or fact that decided it

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FailureKind(self.kind))  # a kind read back from a record is a str

    @property
    def is_oom(self) -> bool:
        return self.kind.is_oom

    @property
    def end_state(self) -> AttemptState:
        """The state an attempt ends in after this."""
        return AttemptState.CANCELLED if self.kind is FailureKind.CANCELLED else AttemptState.FAILED


def end_state(failure: Failure | None) -> AttemptState:
    return AttemptState.SUCCEEDED if failure is None else failure.end_state


def _first_match(text: str) -> tuple[FailureKind, str, str] | None:
    for kind, pattern, meaning in PATTERNS:
        m = pattern.search(text)
        if m:
            start = text.rfind("\n", 0, m.start()) + 1
            end = text.find("\n", m.end())
            return kind, meaning, text[start:end if end != -1 else None].strip()[:300]
    return None


def classify(outcome: Outcome) -> Failure | None:
    """None when the attempt succeeded; else how it failed."""
    tail = outcome.log_tail[-TAIL_BYTES:]
    if outcome.cancelled:
        return Failure(K.CANCELLED, "cancelled by the user")
    ended_by_cluster = outcome.oom_killed or outcome.timed_out or outcome.preempted  # Slurm: TIMEOUT is "0:0"
    if outcome.exit_code == 0 and outcome.signal is None and not ended_by_cluster:
        return None
    if outcome.oom_killed:
        return Failure(K.HOST_OOM, "killed by the out-of-memory killer (memory limit reached)", "oom_kill event")
    matched = _first_match(tail)
    if matched and matched[0].is_oom:
        return Failure(matched[0], matched[1], matched[2])
    if outcome.timed_out:
        return Failure(K.TIMEOUT, "time limit reached")
    if outcome.preempted:
        return Failure(K.PREEMPTED, "preempted or terminated by the cluster")
    if matched:
        return Failure(matched[0], matched[1], matched[2])
    if outcome.signal is not None:
        return Failure(K.UNKNOWN, f"killed by signal {outcome.signal} with no out-of-memory evidence")
    root = _ROOT_CAUSE_SIGNAL.search(tail)
    if root:
        return Failure(K.UNKNOWN, f"a worker was killed by {root.group(1)} with no out-of-memory evidence",
                       root.group(0).strip())
    return Failure(K.UNKNOWN, f"exited {outcome.exit_code} with no recognised cause", _last_error_line(tail))


def _last_error_line(tail: str) -> str:
    for line in reversed(tail.splitlines()):
        if re.search(r"(Error|Exception)\b", line) and "ChildFailedError" not in line:
            return line.strip()[:300]
    return ""
