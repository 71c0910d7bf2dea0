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
continue its message, read only when the exception line names nothing known but a network symptom (another rank's
line may follow it), plus death notices (a C++ `terminate called`, slurmstepd, shardctl's own lines);
a stream without such a traceback (an abort, argparse, a kill) gives its last FINAL_LINES lines
(and its death notices near the end: a C++ abort's frames follow its `what()`). An
out-of-memory error anywhere in those final words wins over the errors it causes.

A root cause beats its symptoms: the rows are read in tiers, each over all the final words (exception lines,
then death notices): out of memory first, then a node fault (a dead GPU, a failed node), then every other
known cause, then the network last. One rank that dies of an OOM, a lost GPU or a KeyError leaves its peers
waiting in a collective until NCCL's watchdog or the store times out, or their connections to it reset: those
peers' errors are what the others died of, never what the attempt died of while the first rank's cause is there.

A CUDA OOM reports how much memory the caching allocator held but could not use (`fragmented_gib`): when that is
a fragmentation PyTorch's expandable segments can remove, the reason says "fragmentation: X GiB reserved but
unallocated", so the fallback's first rung can be PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.

Message sources: torch c10/cuda/CUDACachingAllocator.cpp ("CUDA out of memory. Tried to
allocate ... GPU N has a total capacity of ..."; not in the CPU wheel, so checked against
torch's source), c10's DefaultCPUAllocator ("can't allocate memory: you tried to allocate",
found in the installed libc10.so), cuBLAS/cuDNN status names, NCCL's "Cuda failure ... 'out of memory'".
The node-fault and network rows cite theirs: CUDA's runtime error strings, NVIDIA's Xid catalogue,
Slurm's slurmstepd and srun, NCCL's src/ (init.cc, misc/socket.cc, transport/net_ib), torch's
torch/csrc/distributed/c10d (ProcessGroupNCCL.cpp, NCCLUtils.cpp, TCPStore.cpp, socket.cpp,
ProcessGroupGloo.cpp) and torch/distributed/elastic/rendezvous/api.py.
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
        # The GPU or the node failed under the run: a retry elsewhere (or after a GPU reset) is the remedy, no
        # smaller config. CUDA's runtime strings (cudaGetErrorString): cudaErrorECCUncorrectable is "uncorrectable
        # ECC error encountered" (also in NCCL's "NCCL WARN Cuda failure 'uncorrectable ECC error encountered'" and
        # its "Last error:" continuation), cudaErrorNvlinkUncorrectable "uncorrectable NVLink error detected during
        # the execution", cudaErrorDevicesUnavailable "CUDA-capable device(s) is/are busy or unavailable". Not
        # "an illegal memory access was encountered", "unspecified launch failure" (cudaErrorLaunchFailure: CUDA's
        # own description is a kernel dereferencing an invalid pointer) or "unknown error": usually the script's or a
        # library's bug, and a bug retried on another node dies again. A hardware cause of those shows in the
        # driver's Xid line, matched below, when the log carries it.
        (K.NODE_FAULT, r"uncorrectable ECC error encountered|cudaErrorECCUncorrectable|CUDA_ERROR_ECC_UNCORRECTABLE",
         "uncorrectable ECC error on the GPU"),
        (K.NODE_FAULT, r"uncorrectable NVLink error detected|cudaErrorNvlinkUncorrectable",
         "uncorrectable NVLink error"),
        (K.NODE_FAULT, r"all CUDA-capable devices are busy or unavailable|CUDA-capable device\(s\) is/are busy or "
                       r"unavailable|cudaErrorDevicesUnavailable",
         "the node's GPUs are unavailable (held by another process, or in a bad state)"),
        # NVIDIA's driver (NVRM) and nvidia-smi/NVML when a GPU drops off PCIe (Xid 79).
        (K.NODE_FAULT, r"GPU has fallen off the bus|fallen off the bus|GPU is lost", "the GPU fell off the bus"),
        # The driver's Xid lines, as the kernel log has them ("NVRM: Xid (PCI:0000:10:1c): 79, pid=..., GPU has
        # fallen off the bus."), for the Xids NVIDIA's catalogue (docs.nvidia.com/deploy/xid-errors) lists as
        # hardware: 48 double-bit ECC error, 64 row-remapping failure (ECC page retirement failed), 74 NVLink error,
        # 79 fell off the bus, 94 contained and 95 uncontained ECC error. Not 63 (a row marked for remapping, which
        # NVML says does not affect work: it accompanies the error that killed the run, matched on its own).
        (K.NODE_FAULT, r"NVRM: Xid \([^)]*\): (?:48|64|74|79|94|95)\b", "the GPU driver reported a hardware Xid"),
        # slurmstepd's req.c: "*** JOB N ON NODE CANCELLED AT TIME DUE TO NODE FAILURE, SEE SLURMCTLD LOG FOR
        # DETAILS ***" (STEP N.M for a step); srun's "Node failure on NODES" (src/srun/allocate.c, api/step_launch.c).
        (K.NODE_FAULT, r"DUE TO NODE FAILURE|^srun: error: Node failure on ", "Slurm: a node of the job failed"),
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
        # Stopped from outside while nothing else went wrong: a preemption's notice (Slurm signals every task
        # SIGTERM at once, GraceTime before the end: slurmstepd's "*** STEP N.M ON NODE CANCELLED AT TIME ***" with
        # no reason; a user's scancel is the job's CANCELLED state, read first), the container's SIGTERM when its
        # pod stops (the line shardctl's pod and batch scripts print on it), and torchrun's agent stopped by
        # SIGTERM itself (torch/distributed/elastic/agent/server/api.py logs "Received 15 death signal, shutting
        # down workers", and multiprocessing/api.py raises "SignalException: Process N got signal: 15" as the
        # launcher's last word; older torch spells the signal Signals.SIGTERM). Not SIGINT (2): a Ctrl-C is the
        # user's. The next attempt resumes as is, from the checkpoint the notice asked for.
        (K.PREEMPTED, r"^slurmstepd(?:-\S+)?: error: \*\*\* STEP \S+ ON \S+ CANCELLED AT \S+ \*\*\*\s*$",
         "Slurm stopped the job step (a preemption's notice)"),
        (K.PREEMPTED, r"^\[shardctl\] SIGTERM \(", "the job was told to stop (SIGTERM: a preemption, a drain)"),
        (K.PREEMPTED, r"Received (?:15|Signals\.SIGTERM) death signal|SignalException: Process \d+ got signal: "
                      r"(?:15|Signals\.SIGTERM)\b", "the launcher was stopped by SIGTERM from outside"),
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
        # The ranks lost each other: read last (see the module docstring), since a rank that dies of anything
        # leaves its peers with exactly these. ProcessGroupNCCL.cpp's watchdog ("[Rank N] Watchdog caught
        # collective operation timeout: WorkNCCL(SeqNum=.., OpType=ALLREDUCE, ..) ran for 600012 milliseconds
        # before timing out.") and heartbeat monitor ("Heartbeat monitor timed out! Process will be terminated after
        # dumping debug info.").
        (K.NETWORK, r"Watchdog caught collective operation timeout", "NCCL collective timed out (watchdog)"),
        (K.NETWORK, r"Heartbeat monitor timed out", "ProcessGroupNCCL's watchdog got stuck (heartbeat monitor)"),
        # NCCL's result codes as ncclGetErrorString (src/init.cc) and torch's NCCLUtils.cpp spell them: ncclRemoteError
        # "remote process exited or there was a network error", ncclSystemError "unhandled system error" (a socket
        # call failed). Not "NCCL error" alone nor ncclUnhandledCudaError (the "Last error:" line after it says which
        # CUDA error: OOM, ECC) nor ncclInternalError ("please report this issue to the NCCL developers": a bug) nor
        # ncclInvalidUsage.
        (K.NETWORK, r"ncclRemoteError|remote process exited or there was a network error",
         "NCCL: a peer exited or the network failed"),
        (K.NETWORK, r"ncclSystemError|unhandled system error", "NCCL: a system call (socket) failed"),
        # NCCL's InfiniBand transport: "NET/IB : Got completion with error" (to 2.9), "... from peer ADDR with error"
        # (2.10-2.19), "... with status=" (2.20 on; "NET/IB: " since 2.28), logged only for a failed work request;
        # its socket layer: "socketProgress: Connection closed by remote peer ADDR" (src/misc/socket.cc).
        (K.NETWORK, r"NET/IB ?: Got completion (?:from peer \S+ )?with (?:error|status=)",
         "NCCL: an InfiniBand transfer failed"),
        (K.NETWORK, r"Connection closed by remote peer", "NCCL: a peer closed its connection"),
        # c10d and gloo over TCP: c10d raises DistNetworkError for its socket failures (torch/csrc/distributed/c10d/
        # socket.cpp: "The client socket has timed out after 600000ms while trying to connect to (HOST, PORT)."),
        # gloo's pair.cc "Connection closed by peer [ADDR]:PORT" / "Read error [ADDR]:PORT: Connection reset by
        # peer", ProcessGroupGloo.cpp "Gloo connectFullMesh failed with ...". A reset connection only in their
        # context: a dataset download's "Connection reset by peer" is not the ranks losing each other.
        (K.NETWORK, r"\bDistNetworkError\b|The client socket has timed out after", "c10d: a socket to a peer failed"),
        (K.NETWORK, r"(?:gloo|c10d|Dist(?:Backend|Store)Error).*Connection (?:reset|closed) by peer",
         "c10d/gloo: a peer's connection was lost"),
        (K.NETWORK, r"Gloo connectFullMesh failed", "gloo could not connect the ranks"),
        # The c10d store (TCPStore.cpp): "Timed out after N seconds waiting for clients. N/M clients joined.",
        # "wait timeout after Nms, keys: ..." (older torch: "Socket Timeout"); torchrun's rendezvous
        # (torch/distributed/elastic/rendezvous/api.py: RendezvousTimeoutError, RendezvousConnectionError).
        (K.NETWORK, r"DistStoreError: (?:Timed out after \d+ seconds waiting for clients|wait timeout after|"
                    r"Socket Timeout)", "c10d store timed out waiting for the ranks"),
        (K.NETWORK, r"Rendezvous(?:Timeout|Connection)Error", "torchrun's rendezvous timed out or lost its store"),
    )
)

# Tiers: a root cause before its symptoms (see the module docstring).
_TIER_OOM, _TIER_NODE, _TIER_OTHER, _TIER_NETWORK = range(4)


def _tier(kind: FailureKind) -> int:
    if kind.is_oom:
        return _TIER_OOM
    return {K.NODE_FAULT: _TIER_NODE, K.NETWORK: _TIER_NETWORK}.get(kind, _TIER_OTHER)


# Fragmentation in a CUDA OOM. When the caching allocator raises, it has already returned every whole cached
# segment to the driver (c10/cuda/CUDACachingAllocator.cpp: "The only remaining 'cached' memory is split from a
# larger block that is partially in-use"), so "reserved by PyTorch but unallocated" is memory the run holds and
# cannot use: fragmentation. Expandable segments let the allocator map and unmap that memory page by page.
# It counts when it is at least FRAGMENTED_MIN_GIB and the request would have fit in it plus what was free:
# then PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True may make the same config fit. Under 2 GiB it is the
# allocator's ordinary slack (rounding, 2 MiB small-pool and 20 MiB large segments); a request bigger than free
# plus reserved-but-unallocated fails whatever the allocator does (a 25.10 GiB fp32 buffer with 2.56 GiB free and
# 11.37 GiB unallocated, measured on an H100 with ZeRO-2). A share of what PyTorch reserved (say 25%) would miss
# the measured FSDP case with 3.41 GiB unusable (4% of 77.8 GiB) under a 162 MiB request that failed.
FRAGMENTED_MIN_GIB = 2.0
_SIZE = r"(\d+(?:\.\d+)?) (bytes|KiB|MiB|GiB|TiB)"
_UNIT = {"bytes": 1 / 1024 ** 3, "KiB": 1 / 1024 ** 2, "MiB": 1 / 1024, "GiB": 1.0, "TiB": 1024.0}
# torch >= 2.1: "Tried to allocate S. GPU N has a total capacity of S of which S is free. [...] Of the allocated
# memory S is allocated by PyTorch, [with S allocated in private pools (e.g., CUDA Graphs), ]and S is reserved by
# PyTorch but unallocated."
_OOM_NOW = re.compile(rf"Tried to allocate {_SIZE}\..*? of which {_SIZE} is free\..*?Of the allocated memory "
                      rf"{_SIZE} is allocated by PyTorch, .*?{_SIZE} is reserved by PyTorch but unallocated")
# torch < 2.1: "Tried to allocate S (GPU N; S total capacity; S already allocated; S free; S reserved in total by
# PyTorch)"
_OOM_OLD = re.compile(rf"Tried to allocate {_SIZE} \(GPU \d+; {_SIZE} total capacity; {_SIZE} already allocated; "
                      rf"{_SIZE} free; {_SIZE} reserved in total by PyTorch")
_FRAGMENTATION_REASON = re.compile(r"fragmentation: (\d+(?:\.\d+)?) GiB reserved but unallocated")


def _gib(number: str, unit: str) -> float:
    return float(number) * _UNIT[unit]


def fragmented_gib(text: str) -> float | None:
    """GiB reserved by PyTorch but unallocated, from the last CUDA OOM message in `text`, when that fragmentation is
    significant (see FRAGMENTED_MIN_GIB); else None. Also reads a Failure's reason that classify wrote."""
    found: tuple[float, float, float] | None = None  # (asked, free, reserved but unallocated)
    for m in _OOM_NOW.finditer(text):
        g = m.groups()
        found = (_gib(g[0], g[1]), _gib(g[2], g[3]), _gib(g[6], g[7]))
    if found is None:
        for m in _OOM_OLD.finditer(text):
            g = m.groups()
            found = (_gib(g[0], g[1]), _gib(g[6], g[7]), _gib(g[8], g[9]) - _gib(g[4], g[5]))
    if found is None:
        said = _FRAGMENTATION_REASON.search(text)
        return float(said.group(1)) if said else None
    asked, free, unallocated = found
    if unallocated >= FRAGMENTED_MIN_GIB and asked <= free + unallocated:
        return round(unallocated, 2)
    return None

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
                           r"(?:sbatch|salloc): (?:error|fatal):|\[shardctl\] |"
                           r".{0,80}?NVRM: Xid ")  # the GPU driver's line, after a kernel log's timestamp


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
    node_failed: bool = False  # outside evidence: the cluster says a node of the allocation failed (Slurm NODE_FAIL)
    hung: str | None = None  # outside evidence: its executor stopped it as hung (what it saw: the last step, how long)


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
    for _, exc, end in final:
        out["exceptions"].append(lines[exc])
        out["continuations"].append(tuple(lines[exc + 1:end + 1]))
    # death notices near the end (a requeued Slurm run's log holds the previous run's too), with or without a
    # traceback: a C++ abort's `what()` is followed by its own stack of frames, longer than FINAL_LINES
    tail_start = len(lines) - FINAL_LINES if not final else len(lines)
    near_end = [i for i in range(len(lines)) if i not in inside and loose_after[i] <= SETTLED_LINES]
    for i in near_end:
        if _DEATH_NOTICE.match(lines[i]) and i < tail_start:
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


def _first_match(lines: tuple[str, ...], tier: int) -> Failure | None:
    """The first pattern of `tier` that matches one of `lines`: its kind and meaning, the line as the evidence."""
    for kind, pattern, meaning in PATTERNS:
        if _tier(kind) != tier:
            continue
        for line in lines:
            if pattern.search(line):
                whole, line = line, line.strip()[:300]
                if kind is K.REFUSED:  # the cluster's own words are the reason
                    return Failure(kind, f"{meaning}: {line}", line)
                if kind is K.CUDA_OOM and (gib := fragmented_gib(whole)) is not None:  # the numbers are past 300
                    return Failure(kind, f"{meaning}; fragmentation: {gib:.2f} GiB reserved but unallocated", line)
                return Failure(kind, meaning, line)
    return None


def _cause(found: Evidence) -> Failure | None:
    """The first tier with a match anywhere in the final words (OOMs, node faults, the rest, the network: a root
    cause before its symptoms); within a tier the exception lines (with their continuations when needed) before
    the other lines."""
    messages: list[str] = []
    for line, rest in zip(found.exceptions, found.continuations, strict=True):
        messages.append(line)
        # a line that names only a symptom (NCCL's "remote process exited or there was a network error") is read
        # with its message's continuation, which may name the cause ("Last error: Cuda failure 'out of memory'")
        if not any(pattern.search(line) for kind, pattern, _ in PATTERNS if kind is not K.NETWORK):
            messages += rest
    groups = (tuple(messages), found.final_lines)
    for tier in (_TIER_OOM, _TIER_NODE, _TIER_OTHER, _TIER_NETWORK):
        for group in groups:
            if matched := _first_match(group, tier):
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
    if outcome.hung:  # stopped by its watchdog: a cause in its final words (a dead GPU, a lost peer) comes first
        if matched and matched.kind in (K.NODE_FAULT, K.NETWORK):
            return matched
        return Failure(K.HANG, f"hung: {outcome.hung}", matched.evidence if matched else "")
    if outcome.no_space:  # what the run died of could not even be written to its log
        return Failure(K.DISK_FULL, f"no space left on device ({outcome.no_space})",
                       matched.evidence if matched and matched.kind is K.DISK_FULL else "")
    if outcome.timed_out:
        return Failure(K.TIMEOUT, "time limit reached")
    if matched and matched.kind is K.NODE_FAULT:  # the log's own words say more than the cluster's state
        return matched
    if outcome.node_failed:
        return Failure(K.NODE_FAULT, "the cluster reports a node of the allocation failed", "NODE_FAIL")
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


# Where a failure happened, when the log says: torchrun's failure block names the host of the first failure, and
# srun names the node that failed.
_ROOT_CAUSE_HOST = re.compile(r"Root Cause \(first observed failure\):[\s\S]{0,2000}?host\s*:\s*"
                              r"([A-Za-z0-9._-]{1,253})")
_SRUN_NODE_FAILURE = re.compile(r"^srun: error: Node failure on ([A-Za-z0-9._-]{1,253})\s*$", re.MULTILINE)


def failed_node(tail: str, nodes: tuple[str, ...] = ()) -> str | None:
    """The node of `nodes` (the attempt's, as its target names them) that the failure points at: the one srun
    says failed, the only one, or the host of torchrun's first failure when it is one of them (its short name
    too: torchrun says `node1.cluster.local` where Slurm says `node1`). None when that cannot be told: a
    guess would send a restart away from a good node. Only the end of the log is read."""
    tail = tail[-TAIL_BYTES:]
    said = _SRUN_NODE_FAILURE.findall(tail)
    if said and (not nodes or said[-1] in nodes):
        return str(said[-1])
    if len(nodes) == 1:
        return nodes[0]
    for host in reversed(_ROOT_CAUSE_HOST.findall(tail)):
        for name in (host, host.split(".")[0]):
            if name in nodes:
                return name
    return None


def _last_error_line(tail: str) -> str:
    for line in reversed(tail.split("\n")):
        if re.search(r"(Error|Exception)\b", line) and "ChildFailedError" not in line:
            return line.strip()[:300]
    return ""
