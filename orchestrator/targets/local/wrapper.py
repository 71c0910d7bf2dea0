"""Runs one local attempt and leaves its result on disk, whoever is (or is not) watching.

    python -m orchestrator.targets.local.wrapper RUN_DIR

The supervisor starts this in a new session, so it leads the attempt's process group. It puts
the run under the memory limit (memlimit), starts RUN_DIR's command with output to the log,
waits, and writes `exit.json` atomically: exit code, signal, OOM kills, peak memory. A supervisor
that dies mid-run loses nothing: the next one reads `wrapper.json` (is it still running?) and
`exit.json` (how did it end?). Both carry the launch nonce of the request, so a record of an earlier
launch of the same attempt is never taken for this one's. SIGTERM (cancel, shutdown) stops the whole
process tree: torchrun starts its workers in sessions of their own, so a process-group kill alone
would miss them; `terminated_by` is recorded only when the run was really stopped (not when it had
already ended by itself). Secrets named by entrypoint.env_from are added to the run's environment
here, at launch, and never written anywhere.
SIGUSR2 means "hung: dump the stacks, then stop" (the supervisor's hang watchdog, `LocalTarget.stop_hung`):
every process of the run is frozen (SIGSTOP), then each rank in turn gets SIGABRT and SIGCONT, so that its
faulthandler (every attempt runs with PYTHONFAULTHANDLER=1) prints every thread's traceback to the log while
its peers cannot yet notice it is gone; the dumps are copied to `stacks.txt`, the innermost frame of each
rank's main thread is recorded in exit.json (`hung`), and the rest of the tree is stopped as on SIGTERM.
A full disk does not lose the result: `exit.reserve` holds room for `exit.json` from the start and is
given back just before it is written (on a full disk exit.json is written into it instead, keeping all of it),
and a filesystem the run writes that is full when it ends is recorded (`no_space`), since what the run died
of could not reach its log then.
Stdlib only, so the gap between two attempts stays short.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from orchestrator.intake.secrets import SecretSourceError, environment
from orchestrator.procfiles import free_bytes, open_log, write_json
from orchestrator.targets.local import memlimit

ATTEMPT_FILE = "attempt.json"
WRAPPER_FILE = "wrapper.json"
EXIT_FILE = "exit.json"
RESERVE_FILE = "exit.reserve"
RESERVE_BYTES = 64 * 1024  # far more than exit.json takes, on any block size
FULL_BELOW_BYTES = 1024 * 1024  # less free than this (for this user) when the run ends: that filesystem was full
TERM_GRACE_S = 10.0
HUNG_SIGNAL = signal.SIGUSR2  # from the supervisor: the run is hung, dump its ranks' stacks and stop it
STACKS_FILE = "stacks.txt"
DUMP_WAIT_S = 10.0  # how long one rank may take to print its stacks and die of its SIGABRT
DUMP_MAX_BYTES = 256 * 1024  # what is read of the log per rank: faulthandler prints at most 100 threads x 100 frames


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process forever."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_alive(pid: int, ticks: int | None) -> bool:
    now = start_ticks(pid)
    if now is None or (ticks is not None and now != ticks):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def descendants(root: int) -> list[int]:
    """Every live process below `root` by parent links (zombies are already dead)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                state, ppid = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:2]
            except (OSError, IndexError, ValueError):
                continue
            if state != "Z":
                children.setdefault(int(ppid), []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_tree(limit: memlimit.MemoryLimit, grace: float = TERM_GRACE_S) -> set[int]:
    """SIGTERM everything below us (torchrun forwards it and closes its workers), then SIGKILL what
    is left. The tree is snapshotted first: a worker whose parent died is re-parented out of it.
    Returns the processes that were alive when the SIGTERM went out (an ended one is not among them)."""
    me = os.getpid()
    known = {pid: start_ticks(pid) for pid in descendants(me)}
    signalled = set(known)
    for pid in known:
        _kill(pid, signal.SIGTERM)

    def left() -> list[int]:
        for pid in descendants(me):
            known.setdefault(pid, start_ticks(pid))
        return [p for p, t in known.items() if is_alive(p, t)] + [p for p in limit.pids() if p != me]

    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and left():
        time.sleep(0.1)
    for pid in left():
        _kill(pid, signal.SIGKILL)
    limit.kill_all()
    return signalled


def _environ_rank(pid: int) -> int | None:
    """The RANK a process was started with (torchrun gives each worker its own), else None."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in env.split(b"\0"):
        if item.startswith(b"RANK="):
            value = item[5:].decode(errors="replace")
            return int(value) if value.isdigit() and len(value) < 9 else None
    return None


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def rank_processes(tree: list[int]) -> list[tuple[int, int]]:
    """(rank, pid) of each worker of the run: the topmost process of each chain that has a RANK (a data loader's
    workers, forked from a rank, inherit its RANK and are not ranks themselves), by rank."""
    ranks = {pid: r for pid in tree if (r := _environ_rank(pid)) is not None}
    return sorted((r, pid) for pid, r in ranks.items() if _parent(pid) not in ranks)


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (faulthandler's, for SIGABRT): otherwise SIGABRT would only
    kill it (and write a core file), printing nothing."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


_THREAD = re.compile(r"^(Thread|Current thread) 0x[0-9a-fA-F]+ \(most recent call first\):$", re.MULTILINE)
_FRAME = re.compile(r'^  File "(?P<file>[^"\n]*)", line (?P<line>\d+) in (?P<func>[^\n]+)$', re.MULTILINE)


def faulthandler_dump(text: str) -> str:
    """faulthandler's report in `text` ("Fatal Python error: Aborted", then each thread's frames), without the list
    of extension modules that follows it; '' when there is none."""
    start = text.find("Fatal Python error:")
    if start < 0:
        return ""
    end = text.find("\nExtension modules:", start)
    return text[start:end if end >= 0 else len(text)].rstrip() + "\n"


def _short(path: str) -> str:
    """A frame's file as people read it: from the package down (site-packages/torch/... -> torch/...)."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    return "/".join(path.rsplit("/", 2)[-2:]) if path.count("/") > 2 else path


def innermost_frame(dump: str) -> str | None:
    """Where the main thread of a dumped process waited: its innermost frame as `file:line function`. The main
    thread is the one whose outermost frame is `<module>` (a started thread's is threading's _bootstrap); else the
    thread that took the signal."""
    blocks = []
    marks = list(_THREAD.finditer(dump))
    for i, mark in enumerate(marks):
        body = dump[mark.end():marks[i + 1].start() if i + 1 < len(marks) else len(dump)]
        frames = list(_FRAME.finditer(body))
        if frames:
            blocks.append((mark.group(1) == "Current thread", frames))
    if not blocks:
        return None
    main = next((f for _, f in blocks if f[-1]["func"].strip() == "<module>"), None) or \
        next((f for current, f in blocks if current), blocks[0][1])
    top = main[0]
    return f"{_short(top['file'])}:{top['line']} {top['func'].strip()}"


def _log_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def capture_stacks(log: BinaryIO, log_path: Path, run_dir: Path, tree: list[int] | None = None,
                   out: str = STACKS_FILE, settle_s: float = 0.0) -> dict[str, str]:
    """Every rank's Python stacks, one rank at a time, while the rest of the run is frozen; returns rank -> where
    its main thread waited (`file:line function`, or why there is no stack). The dumps go to the log (where the
    ranks write) and, copied from it, to RUN_DIR/`out`. Ranks left alive (no faulthandler) are killed while
    still frozen, so no rank reports its peers' disappearance as a network error. `tree`: the run's processes
    (default: this process's descendants); `settle_s`: how long a dump may take to reach the log after its rank
    died (on Slurm it travels through slurmstepd and srun)."""
    tree = descendants(os.getpid()) if tree is None else tree
    ticks = {pid: start_ticks(pid) for pid in tree}
    ranks = rank_processes(tree)
    where: dict[str, str] = {}
    dumps: list[str] = []
    for pid in tree:
        _kill(pid, signal.SIGSTOP)
    try:
        for rank, pid in ranks:
            if not catches(pid, signal.SIGABRT):
                where[str(rank)] = "no stack (no faulthandler in that process: PYTHONFAULTHANDLER was unset)"
                continue
            _say(log, f"\n[shardctl] hung: rank {rank} (pid {pid}) prints its stacks (SIGABRT to its faulthandler)\n")
            offset = _log_size(log_path)
            _kill(pid, signal.SIGABRT)
            _kill(pid, signal.SIGCONT)
            deadline = time.monotonic() + DUMP_WAIT_S
            while time.monotonic() < deadline and is_alive(pid, ticks[pid]):
                time.sleep(0.05)
            dump = faulthandler_dump(_read_from(log_path, offset, DUMP_MAX_BYTES))
            settled = time.monotonic() + settle_s
            while not dump and time.monotonic() < settled:
                time.sleep(0.1)
                dump = faulthandler_dump(_read_from(log_path, offset, DUMP_MAX_BYTES))
            where[str(rank)] = innermost_frame(dump) or "no stack printed"
            dumps.append(f"=== rank {rank} (pid {pid}): {where[str(rank)]}\n{dump or '(nothing printed)'}\n")
        for _, pid in ranks:  # hung ranks that printed nothing: nothing to save, and none may wake up to their peers
            if is_alive(pid, ticks[pid]):
                _kill(pid, signal.SIGKILL)
    finally:
        for pid in tree:
            _kill(pid, signal.SIGCONT)
    header = ("shardctl: the attempt was found hung; each rank's Python stacks (faulthandler), most recent call "
              "first. The first line of each names where its main thread waited.\n\n")
    try:
        fd = os.open(run_dir / out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(header + "".join(dumps))
    except OSError:
        pass  # a full disk: the dumps are in the log, where they were printed
    return where


def child_environment(environ: Mapping[str, str], secrets: Mapping[str, str], drop: list[str]) -> dict[str, str]:
    """The run's environment: this process's, less what is the supervisor's alone (spec.notify's credentials),
    plus the secrets entrypoint.env_from gives it."""
    return {**{k: v for k, v in environ.items() if k not in set(drop)}, **secrets}


def reserve(run_dir: Path) -> None:
    """Room for exit.json, taken while there is some: written out (not sparse), so the blocks are ours."""
    try:
        fd = os.open(run_dir / RESERVE_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, bytes(RESERVE_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # full already: exit.json is written if it can be


def full_filesystem(paths: list[str]) -> str | None:
    """The first of `paths` whose filesystem had (almost) no space left for this user, else None."""
    for path in paths:
        free = free_bytes(path)
        if free is not None and free < FULL_BELOW_BYTES:
            return path
    return None


def write_result(run_dir: Path, result: dict) -> None:
    """exit.json; on a full disk, written into the room kept for it (no block is needed then, so nothing that
    fills the disk meanwhile can take it) and renamed, the room kept whole: the blocks it holds stay the run's
    result's, so nothing else (the supervisor's records) can slip into a disk that is full but for them, and the
    supervisor waits for space as it does for any full store. Otherwise the reserve is given back."""
    try:
        write_json(run_dir / EXIT_FILE, result)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not _into_reserve(run_dir, result):
            raise
    finally:
        (run_dir / RESERVE_FILE).unlink(missing_ok=True)


def _into_reserve(run_dir: Path, result: dict) -> bool:
    data = (json.dumps(result, indent=1) + "\n").encode()
    try:
        fd = os.open(run_dir / RESERVE_FILE, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if len(data) > size:
            return False
        os.pwrite(fd, data + b" " * (size - len(data)), 0)  # JSON allows trailing blanks: no block given back
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(run_dir / RESERVE_FILE, run_dir / EXIT_FILE)  # whole or absent, as write_json's
    return True


def _say(log: BinaryIO, text: str) -> None:
    """A line of shardctl's own in the run's log, if the disk has room for it."""
    try:
        log.write(text.encode())
    except OSError:
        pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(run_dir: Path) -> int:
    request = json.loads((run_dir / ATTEMPT_FILE).read_text())
    me = os.getpid()
    launch = request.get("launch")
    info: dict = {"pid": me, "start_ticks": start_ticks(me), "started_at": time.time(), "launch": launch}
    write_json(run_dir / WRAPPER_FILE, info)
    reserve(run_dir)

    limit, parent = memlimit.create(request["cgroup_name"], request.get("memory_limit_bytes"),
                                    request.get("memory_mode", "auto"))
    limit.join(me)
    info["memory"] = {"mode": limit.mode, "limit_bytes": limit.limit_bytes, "note": limit.note,
                      "cgroup": str(limit.path) if limit.path else None}

    terminated: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        terminated.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(HUNG_SIGNAL, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal is not a reason to stop

    log = open_log(run_dir / request["log"], buffering=0)  # held for the whole run; never through a symlink
    try:
        secrets = environment(request.get("env_from", []), os.environ, request["cwd"])
    except SecretSourceError as exc:  # the line names the variable or file, never a value
        _say(log, f"[shardctl] cannot start the run: entrypoint.env_from: {exc}\n")
        log.close()
        limit.remove(parent)
        write_result(run_dir, {"exit_code": 2, "signal": None, "oom_kills": 0, "peak_bytes": None,
                                         "memory": info["memory"], "terminated_by": None, "ended_at": time.time(),
                                         "error": f"entrypoint.env_from: {exc}", "launch": launch})
        return 1
    try:
        child = subprocess.Popen(request["command"], cwd=request["cwd"], stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, preexec_fn=limit.apply_rlimit, close_fds=True,
                                 env=child_environment(os.environ, secrets, request.get("env_drop", [])))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:  # still leave a result behind
        _say(log, f"[shardctl] could not start the run: {exc}\n")
        log.close()
        limit.remove(parent)
        write_result(run_dir, {"exit_code": 127, "signal": None, "oom_kills": 0, "peak_bytes": None,
                                         "memory": info["memory"], "terminated_by": None, "ended_at": time.time(),
                                         "error": str(exc), "launch": launch})
        return 1
    del secrets
    info.update(child_pid=child.pid, launched_at=time.time())
    try:
        write_json(run_dir / WRAPPER_FILE, info)
    except OSError:  # the disk filled up meanwhile: the run goes on, and its result has room kept for it
        pass

    stopping = stopped = False
    hung: dict[str, str] | None = None
    while True:
        try:
            rc = child.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if terminated and not stopping:
                stopping = True
                if child.poll() is not None:  # it ended by itself just before the signal came: nothing to stop
                    continue
                if terminated[0] == HUNG_SIGNAL:
                    _say(log, "\n[shardctl] the run is hung (no output, no progress): dumping each rank's stacks, "
                              "then stopping it\n")
                    hung = capture_stacks(log, run_dir / request["log"], run_dir)
                else:
                    _say(log, f"\n[shardctl] signal {terminated[0]} received: stopping the run\n")
                # the run was stopped only if it was still running when the signal reached it
                stopped = child.pid in stop_tree(limit)
    ended = time.time()
    if descendants(me) or [p for p in limit.pids() if p != me]:
        stop_tree(limit, grace=2.0)  # nothing of a finished attempt may outlive it
    result = {
        "exit_code": rc if rc >= 0 else None,
        "signal": -rc if rc < 0 else None,
        "oom_kills": limit.oom_kills(),
        "peak_bytes": limit.peak_bytes(),
        "memory": info["memory"],
        "terminated_by": terminated[0] if stopped else None,  # a signal after the run ended stopped nothing
        # stopped as hung: rank -> where its main thread waited (file:line function); the dumps are in stacks.txt
        "hung": hung if stopped and hung is not None else None,
        "ended_at": ended,
        "launch": launch,
        "no_space": full_filesystem(request.get("disk_paths", [])) if rc != 0 else None,
    }
    try:
        log.close()
    except OSError:  # the last of the run's output could not be written: the disk is full
        pass
    limit.remove(parent)
    write_result(run_dir, result)
    return 0


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m orchestrator.targets.local.wrapper RUN_DIR")
    sys.exit(run(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
