"""How a run ended, from exit status, signals, outside evidence and the end of the log. Table-driven, pure.

`accelerate launch` exits 1 for every worker failure, so the launcher's code says little:
the worker's traceback and torchrun's failure block do. An OOM kill and any other SIGKILL
look alike from inside; only outside evidence (cgroup oom_kill, Slurm OUT_OF_MEMORY,
Kubernetes OOMKilled) tells them apart, and callers pass it as `oom_killed`.

The patterns are searched only in what the run died of (`evidence`), never over everything it
printed: a script that once logged "Cannot allocate memory (falling back...)" and later raised
KeyError died of the KeyError. The launcher's own report (accelerate's traceback ending in
ChildFailedError or CalledProcessError, torchrun's failure block and log lines) is set aside first.
Then each rank's lines (`[rankN]: ` prefixes; the unprefixed lines are one stream, where ranks
interleave) give their final words: the exception line of every uncaught traceback at the end (one
followed by more than SETTLED_LINES lines of output was caught: the run went on), plus the lines that
continue its message, read only when the exception line itself names nothing known (another rank's
line may follow it), plus death notices (a C++ `terminate called`, slurmstepd, shardctl's own lines);
a stream without such a traceback (an abort, argparse, a kill) gives its last FINAL_LINES lines. An
out-of-memory error anywhere in those final words wins over the errors it causes.

Message sources: torch c10/cuda/CUDACachingAllocator.cpp ("CUDA out of memory. Tried to
allocate ... GPU N has a total capacity of ..."; not in the CPU wheel, so checked against
torch's source), c10's DefaultCPUAllocator ("can't allocate memory: you tried to allocate",
found in the installed libc10.so), cuBLAS/cuDNN status names, NCCL's "Cuda failure ... 'out of memory'".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from orchestrator.spec.failure import Failure
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
        # ENOSPC (and EDQUOT) in the words of Python's OSError and of C's strerror: a checkpoint or a log that
        # cannot be written. No smaller config helps and a retry fails the same way until space is freed.
        (K.DISK_FULL, r"\[Errno (?:28|122)\]|No space left on device|Disk quota exceeded", "no space left on device"),
        (K.TIMEOUT, r"DUE TO TIME LIMIT", "time limit reached"),
        # Not "Signal 15 (SIGTERM) received": torchrun sends SIGTERM to every rank once one fails.
        (K.PREEMPTED, r"DUE TO PREEMPTION", "preempted by the scheduler"),
        # Slurm refusing to start the step or a submission, in its own words (srun's fatal() and error() from
        # src/srun and src/common: "Unable to create step for job N: ...", "Unable to allocate resources: ...",
        # the SLURM_MEM_PER_* conflict; sbatch's "Batch job submission failed: ..."). Not "srun: error: NODE:
        # task N: Exited with exit code N": that is how srun reports a worker that failed.
        (K.REFUSED, r"^srun: fatal: ", "Slurm's srun refused to start the job step"),
        (K.REFUSED, r"^srun: error: (?:Unable to (?:create step|allocate resources)|Invalid )",
         "Slurm refused the job step"),
        (K.REFUSED, r"^(?:sbatch|salloc): (?:error|fatal): ", "Slurm refused a submission of the job script"),
        (K.USER_ERROR, r"^(?:\[rank\d+\]: )?(?:ModuleNotFoundError|ImportError|SyntaxError|IndentationError)\b",
         "the script cannot be imported"),
        (K.USER_ERROR, r"error: (?:unrecognized arguments|argument |the following arguments are required)",
         "bad script arguments"),
        (K.USER_ERROR, r"can't open file .*No such file or directory", "the script does not exist"),
        (K.USER_ERROR, r"^\[shardctl\] cannot start the run: ", "the run's environment is incomplete"),
        (K.USER_ERROR, r"^(?:[A-Za-z_][\w.]*\.)?(?:KeyError|NameError|AttributeError|TypeError|IndexError|"
                       r"AssertionError|FileNotFoundError|ZeroDivisionError|UnboundLocalError|NotImplementedError)\b",
         "the script raised an error (a bug, or bad input)"),
    )
)

FINAL_LINES = 12  # a stream's last lines, when no traceback says what it died of
MESSAGE_LINES = 4  # at most this many lines continue an exception's message
SETTLED_LINES = 100  # a traceback followed by more lines than this was caught: the run went on after it
_TRACEBACK = "Traceback (most recent call last):"
_CHAINED = ("During handling of the above exception, another exception occurred:",
            "The above exception was the direct cause of the following exception:")
_RANK = re.compile(r"\[rank(\d+)\]: ?")
# torchrun's log lines (glog format) and the launcher's own exception: accelerate's CLI re-raises a worker
# failure as ChildFailedError (torchrun) or CalledProcessError (the simple launcher)
_ELASTIC_LOG = re.compile(r"[IWE]\d{4} [0-9:.]+ +\d+ \S*torch/distributed/elastic/")
_LAUNCHER_ERROR = re.compile(r"(?:torch\.distributed\.elastic\.multiprocessing\.errors\.)?ChildFailedError:"
                             r"|subprocess\.CalledProcessError: Command .*(?:non-zero exit status|died with)")
_RULE = re.compile(r"=+")
# lines that announce a death whoever printed them: a C++ exception ending the process, Slurm's step
# daemon, shardctl's own wrapper or batch script
_DEATH_NOTICE = re.compile(r"terminate called after throwing|slurmstepd: error:|srun: (?:error|fatal):|"
                           r"(?:sbatch|salloc): (?:error|fatal):|\[shardctl\] ")


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
    no_space: str | None = None  # outside evidence: a filesystem the run wrote was full when it ended (its path)


def end_state(failure: Failure | None) -> AttemptState:
    return AttemptState.SUCCEEDED if failure is None else failure.end_state


def _launcher_report(lines: list[str]) -> set[int]:
    """Indexes of the launcher's own report: its traceback, exception and torchrun's failure block."""
    drop = {i for i, line in enumerate(lines) if _ELASTIC_LOG.match(line)}
    for i, line in enumerate(lines):
        if not _LAUNCHER_ERROR.match(line):
            continue
        start = i
        while start > 0 and lines[start - 1].startswith("  "):  # its frames
            start -= 1
        if start > 0 and lines[start - 1].strip() == _TRACEBACK:
            start -= 1
        end = i
        if "ChildFailedError" in line:  # the block between two rules of '='
            rules = [j for j in range(i + 1, len(lines)) if _RULE.fullmatch(lines[j].strip())][:2]
            end = rules[1] if len(rules) == 2 else len(lines) - 1
        drop.update(range(start, end + 1))
    return drop


@dataclass(frozen=True)
class Evidence:
    """What the run died of, from the end of its log, strongest first."""

    exceptions: tuple[str, ...] = ()  # the exception line of each final traceback (chained ones included)
    # the lines that continue each of those messages (NCCL's "Last error: Cuda failure 'out of memory'"); read
    # only when the exception line itself names no known cause, since another process's line may follow it
    continuations: tuple[tuple[str, ...], ...] = ()
    final_lines: tuple[str, ...] = ()  # death notices (a C++ terminate, slurmstepd), or a traceback-less stream's end


def _exception_at(lines: list[str], header: int) -> int | None:
    """Index of the exception line of the traceback whose header is at `header` (frames are indented)."""
    for j in range(header + 1, len(lines)):
        if lines[j].strip() and not lines[j].startswith(" "):
            return j
    return None


def _stream_evidence(lines: list[str], out: dict[str, list[Any]]) -> None:
    """One process's (or one unprefixed stream's) final words, added to `out`."""
    blocks: list[tuple[int, int, int]] = []  # (header, exception line, end of the message)
    for i, line in enumerate(lines):
        if line.strip() != _TRACEBACK:
            continue
        exc = _exception_at(lines, i)
        if exc is None:
            continue
        end = exc
        while (end + 1 < len(lines) and end - exc < MESSAGE_LINES and lines[end + 1].strip()
               and lines[end + 1].strip() != _TRACEBACK and lines[end + 1].strip() not in _CHAINED
               and not _DEATH_NOTICE.match(lines[end + 1])):
            end += 1
        blocks.append((i, exc, end))
    inside: set[int] = set()
    for header, _, end in blocks:
        inside.update(range(header, end + 1))
    loose_after = [0] * (len(lines) + 1)  # loose lines (not in a traceback, not blank) from index i to the end
    for i in range(len(lines) - 1, -1, -1):
        counted = i not in inside and bool(lines[i].strip()) and lines[i].strip() not in _CHAINED
        loose_after[i] = loose_after[i + 1] + counted
    final = [(h, exc, end) for h, exc, end in blocks if loose_after[end + 1] <= SETTLED_LINES]
    if not final:  # no uncaught traceback: the stream's last lines are its final words
        out["final_lines"] += lines[-FINAL_LINES:]
        return
    for _, exc, end in final:
        out["exceptions"].append(lines[exc])
        out["continuations"].append(tuple(lines[exc + 1:end + 1]))
    near_end = [i for i in range(len(lines)) if i not in inside and loose_after[i] <= SETTLED_LINES]
    for i in near_end:  # death notices near the end (a requeued Slurm run's log holds the previous run's too)
        if _DEATH_NOTICE.match(lines[i]):
            out["final_lines"].append(lines[i])
            if lines[i].startswith("terminate called") and i + 1 < len(lines):  # then `what():  MESSAGE`
                out["final_lines"].append(lines[i + 1])


def evidence(tail: str) -> Evidence:
    """What the run died of (see the module docstring). Lines printed before it started dying are not in it."""
    lines = tail.split("\n")  # lines as the log reader cuts them: a \r or \f inside a message is kept
    drop = _launcher_report(lines)
    streams: dict[str | None, list[str]] = {}
    for i, line in enumerate(lines):
        if i in drop:
            continue
        m = _RANK.match(line)
        streams.setdefault(m.group(1) if m else None, []).append(line[m.end():] if m else line)
    out: dict[str, list[Any]] = {"exceptions": [], "continuations": [], "final_lines": []}
    for stream in streams.values():
        _stream_evidence(stream, out)
    return Evidence(tuple(out["exceptions"]), tuple(out["continuations"]), tuple(out["final_lines"]))


def _first_match(lines: tuple[str, ...], oom: bool) -> Failure | None:
    """The first pattern that matches one of `lines`: its kind and meaning, the line as the evidence."""
    for kind, pattern, meaning in PATTERNS:
        if kind.is_oom != oom:
            continue
        for line in lines:
            if pattern.search(line):
                line = line.strip()[:300]
                if kind is K.REFUSED:  # the cluster's own words are the reason
                    return Failure(kind, f"{meaning}: {line}", line)
                return Failure(kind, meaning, line)
    return None


def _cause(found: Evidence) -> Failure | None:
    """An out-of-memory error anywhere in the final words first (OOMs before the errors they cause), then any
    other known cause; the exception lines (with their continuations when needed) before the other lines."""
    messages: list[str] = []
    for line, rest in zip(found.exceptions, found.continuations, strict=True):
        messages.append(line)
        if not any(pattern.search(line) for _, pattern, _ in PATTERNS):
            messages += rest
    groups = (tuple(messages), found.final_lines)
    for oom in (True, False):
        for group in groups:
            if matched := _first_match(group, oom):
                return matched
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
    found = evidence(tail)
    matched = _cause(found)
    if matched and matched.is_oom:
        return matched
    if outcome.no_space:  # what the run died of could not even be written to its log
        return Failure(K.DISK_FULL, f"no space left on device ({outcome.no_space})",
                       matched.evidence if matched and matched.kind is K.DISK_FULL else "")
    if outcome.timed_out:
        return Failure(K.TIMEOUT, "time limit reached")
    if outcome.preempted:
        return Failure(K.PREEMPTED, "preempted or terminated by the cluster")
    if matched:
        return matched
    if outcome.signal is not None:
        return Failure(K.UNKNOWN, f"killed by signal {outcome.signal} with no out-of-memory evidence")
    root = _ROOT_CAUSE_SIGNAL.search(tail)
    if root:
        return Failure(K.UNKNOWN, f"a worker was killed by {root.group(1)} with no out-of-memory evidence",
                       root.group(0).strip())
    last = found.exceptions[-1].strip()[:300] if found.exceptions else _last_error_line(tail)
    return Failure(K.UNKNOWN, f"exited {outcome.exit_code} with no recognised cause", last)


def _last_error_line(tail: str) -> str:
    for line in reversed(tail.split("\n")):
        if re.search(r"(Error|Exception)\b", line) and "ChildFailedError" not in line:
            return line.strip()[:300]
    return ""
