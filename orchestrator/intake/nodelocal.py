"""Whether a path lives on a filesystem only this machine sees, for jobs whose attempts run on other nodes.

A Slurm job's nodes read the job store (the judge jobs write it) and start in the job's working
directory, so both must be on a filesystem every node mounts at the same path. What a site shares
cannot be read from here (the login node that exports /home over NFS sees ext4), so the rule only
refuses what is node-local on every site:

- a memory filesystem (tmpfs, ramfs, devtmpfs) or a container's own root (overlay);
- anything under /tmp, /var/tmp, /dev/shm or /run, whatever their filesystem: per machine by
  convention, and often cleaned at boot or at the end of each Slurm job.

`SHARDCTL_ALLOW_NODE_LOCAL=1` turns the check off where every node is this machine (the development
Slurm cluster, tests). Stdlib only: the mount table is /proc/self/mountinfo.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import NodeLocalPath

ALLOW_ENV = "SHARDCTL_ALLOW_NODE_LOCAL"
NODE_LOCAL_TYPES = frozenset({"tmpfs", "ramfs", "devtmpfs", "overlay"})
NODE_LOCAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")
MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str


def mounts(table: str = MOUNTINFO) -> list[Mount]:
    """The mount table (mount point, filesystem type); empty when it cannot be read (not Linux)."""
    try:
        text = Path(table).read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if sep and len(fields) >= 5 and rest:  # field 5 is the mount point, the first after " - " the type
            found.append(Mount(_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[4]), rest[0]))
    return found


def mount_of(path: str | Path, table: list[Mount] | None = None) -> Mount | None:
    """The mount holding `path` (resolved: symlinks followed, a missing tail allowed)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in mounts() if table is None else table:  # a later mount over the same point hides the earlier one
        if _under(real, m.point) and (best is None or len(m.point) >= len(best.point)):
            best = m
    return best


def _under(path: str, directory: str) -> bool:
    return directory == "/" or path == directory or path.startswith(directory.rstrip("/") + "/")


def node_local(path: str | Path, table: list[Mount] | None = None) -> str | None:
    """Why `path` is node-local ("under /tmp", "on tmpfs"), or None when it may be shared."""
    real = os.path.realpath(path)
    for d in NODE_LOCAL_DIRS:
        if _under(real, d):
            return f"under {d}"
    m = mount_of(real, table)
    if m is not None and m.fstype in NODE_LOCAL_TYPES:
        return f"on {m.fstype} ({m.point})"
    return None


def refuse_node_local(paths: Mapping[str, str | Path], why: str, env: Mapping[str, str] | None = None,
                      table: list[Mount] | None = None) -> None:
    """Raise NodeLocalPath naming the first of `paths` (what it is -> path) that is node-local, unless
    SHARDCTL_ALLOW_NODE_LOCAL=1. `why` says who must read it ("the Slurm job's nodes")."""
    if (os.environ if env is None else env).get(ALLOW_ENV) == "1":
        return
    for what, path in paths.items():
        if (where := node_local(path, table)) is not None:
            raise NodeLocalPath(
                f"{what}: {path} is {where}, on this machine only, and {why} must read it: use a directory on a "
                f"filesystem every node mounts (NFS, Lustre, GPFS, ...), or set {ALLOW_ENV}=1 if every node is "
                "this machine")
