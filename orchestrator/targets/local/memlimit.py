"""A real memory limit on a whole local run, the way a node has one.

Preferred: a memory cgroup made for the attempt under the caller's own cgroup (v1 `memory`
hierarchy, or v2 where the memory controller is delegated to us); every process of the run
joins it, the kernel's OOM killer acts inside it, and the `oom_kill` counter is the outside
evidence that tells an OOM kill from any other SIGKILL. Where no cgroup can be made, the
fallback is RLIMIT_AS on every process: allocations then fail inside the process
("DefaultCPUAllocator: can't allocate memory"), which the classifier also reads as a host OOM.
Stdlib only: the attempt wrapper imports this before anything else.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path(os.environ.get("SHARDCTL_CGROUP_ROOT", "/sys/fs/cgroup"))


@dataclass
class MemoryLimit:
    mode: str  # "cgroup-v1", "cgroup-v2", "rlimit" or "none"
    limit_bytes: int | None
    path: Path | None = None  # the cgroup directory
    note: str = ""

    def join(self, pid: int) -> None:
        """Move a process (and so all its future children) into the cgroup."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(pid))

    def apply_rlimit(self) -> None:
        """In the process about to exec the run: its children inherit the address-space limit."""
        if self.mode == "rlimit" and self.limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (self.limit_bytes, self.limit_bytes))

    def oom_kills(self) -> int:
        if self.path is None:
            return 0
        name = "memory.oom_control" if self.mode == "cgroup-v1" else "memory.events"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            pass
        return 0

    def peak_bytes(self) -> int | None:
        if self.path is None:
            return None
        name = "memory.max_usage_in_bytes" if self.mode == "cgroup-v1" else "memory.peak"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def pids(self) -> list[int]:
        if self.path is None:
            return []
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill_all(self) -> None:
        """SIGKILL everything left in the cgroup: torchrun starts workers in their own sessions, so a
        process-group kill misses them; the cgroup does not."""
        me = os.getpid()
        for pid in self.pids():
            if pid != me:
                _signal(pid, signal.SIGKILL)

    def remove(self, parent: Path | None = None) -> None:
        """Leave the cgroup (moving ourselves out) and delete it; best effort."""
        if self.path is None:
            return
        if parent is not None:
            try:
                (parent / "cgroup.procs").write_text(str(os.getpid()))
            except OSError:
                pass
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.02)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def own_cgroup(root: Path = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> tuple[str, Path] | None:
    """('cgroup-v1' | 'cgroup-v2', our cgroup dir) for the memory controller, if one is mounted."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            candidate = root / "memory" / path.lstrip("/")
            if candidate.is_dir():
                return "cgroup-v1", candidate
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and controllers == "":
            for base in (root, root / "unified"):
                candidate = base / path.lstrip("/")
                if (candidate / "cgroup.controllers").exists() and \
                        "memory" in (candidate / "cgroup.subtree_control").read_text().split():
                    return "cgroup-v2", candidate
    return None


def create(name: str, limit_bytes: int | None, mode: str = "auto") -> tuple[MemoryLimit, Path | None]:
    """The limit for one attempt; returns it and the parent cgroup (to move back into on cleanup)."""
    if limit_bytes is None or mode == "none":
        return MemoryLimit("none", None, note="no memory limit (resources.memory_per_node unset)"), None
    if mode in ("auto", "cgroup"):
        found = own_cgroup()
        reason = "no writable memory cgroup"
        if found is not None:
            kind, parent = found
            path = parent / name
            try:
                path.mkdir(exist_ok=True)
                if kind == "cgroup-v1":
                    (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                    memsw = path / "memory.memsw.limit_in_bytes"
                    if memsw.exists():  # no escape into swap: the limit is the node's RAM
                        memsw.write_text(str(limit_bytes))
                else:
                    (path / "memory.max").write_text(str(limit_bytes))
                    if (path / "memory.swap.max").exists():
                        (path / "memory.swap.max").write_text("0")
                return MemoryLimit(kind, limit_bytes, path, note=f"{kind} {path}"), parent
            except OSError as exc:
                reason = f"cannot use cgroup {path}: {exc}"
                try:
                    path.rmdir()
                except OSError:
                    pass
        if mode == "cgroup":
            raise OSError(reason)
        return MemoryLimit("rlimit", limit_bytes, note=f"{reason}; RLIMIT_AS on every process instead"), None
    return MemoryLimit("rlimit", limit_bytes, note="RLIMIT_AS on every process"), None


def cgroup_available() -> bool:
    """Whether this process can make a memory cgroup with a limit (tests and docs ask)."""
    try:
        limit, parent = create(f"shardctl-probe-{os.getpid()}", 64 * 2**20, "cgroup")
    except OSError:
        return False
    limit.remove(parent)
    return True
