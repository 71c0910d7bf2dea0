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
A full disk does not lose the result: `exit.reserve` holds room for `exit.json` from the start and is
given back just before it is written, and a filesystem the run writes that is full when it ends is
recorded (`no_space`), since what the run died of could not reach its log then.
Stdlib only, so the gap between two attempts stays short.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
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
    fills the disk meanwhile can take it) and renamed. The reserve is given back either way."""
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
        if len(data) > os.fstat(fd).st_size:
            return False
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
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
                                 env={**os.environ, **secrets} if secrets else None)
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
    while True:
        try:
            rc = child.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if terminated and not stopping:
                stopping = True
                if child.poll() is not None:  # it ended by itself just before the signal came: nothing to stop
                    continue
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
