"""The file operations the job store is made of, each one atomic on NFS and Lustre as on a local disk.

Only four operations write the store, because they are the ones a network filesystem decides on
the server, for every client at once: mkdir (EEXIST when the directory exists), create with
O_EXCL (the temporary files, named at random), link (EEXIST when the name is taken: the claim)
and unlink of a temporary. A file is written in full and fsynced under a temporary name, then
linked to its name, and its directory fsynced (`procfiles.publish_once`): readers see the whole
file or none, and NFS close-to-open consistency means a reader that opens a file after its link
reads what was written. No flock, no fcntl lock, no shared memory: none of them holds across hosts
on every site's filesystem. A published name is never rewritten or removed, so a file once read
can be cached; only what is *not* there yet may be out of date (a client's cached directory
listing), and a stale view can at worst make a claim fail or a move wait, never duplicate one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.procfiles import publish_once

__all__ = ["HOST", "Owner", "event_name", "make_dir", "name_key", "publish", "read_record"]

HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def make_dir(path: Path) -> Path:
    """A private directory (0700 whatever the umask: the umask only removes bits); mkdir is atomic."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    return path


def publish(directory: Path, name: str, data: dict[str, Any], durable: bool = True) -> bool:
    """Link `name` into `directory` once: True when this call published it, False when it existed. A cache is
    published with `durable=False` (not fsynced: one a crash cut short fails its check and is written again)."""
    return publish_once(directory, name, json.dumps(data, sort_keys=True) + "\n", durable)


def read_record(path: Path) -> dict[str, Any]:
    """A published record. Raises FileNotFoundError when absent, ValueError when it is not a JSON object
    (edited by hand, a disk error: publishing never leaves a half-written file)."""
    data = json.loads(path.read_bytes())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def event_name(prefix: str = "") -> str:
    """A name no other writer on any host can draw: time, host, pid and randomness. Sorting the names
    orders the events by time (across hosts as far as their clocks agree)."""
    return f"{prefix}{time.time_ns():020d}-{HOST}-{os.getpid()}-{secrets.token_hex(4)}.json"


def name_key(name: str) -> str:
    """A job name as one directory name: itself when plain, else a hash (any name stays a single,
    safe path component)."""
    if _PLAIN_NAME.fullmatch(name):
        return name
    return "=" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _start_ticks(pid: int) -> int | None:
    """The process's start time since boot: with the pid it names one process (None off Linux, or when
    it is gone or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Owner:
    """Who made a claim, and when: enough to tell whether it may still be acting on it."""

    host: str
    pid: int
    ticks: int | None
    at: float

    @staticmethod
    def me() -> Owner:
        pid = os.getpid()
        return Owner(HOST, pid, _start_ticks(pid), time.time())

    def as_json(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "ticks": self.ticks, "at": self.at}

    @staticmethod
    def of(data: Any) -> Owner | None:
        if not isinstance(data, dict):
            return None
        try:
            ticks = data.get("ticks")
            return Owner(str(data["host"]), int(data["pid"]), None if ticks is None else int(ticks),
                         float(data["at"]))
        except (KeyError, TypeError, ValueError):
            return None

    def is_me(self) -> bool:
        return self.host == HOST and self.pid == os.getpid()

    def may_be_acting(self, lease_s: float) -> bool:
        """True while the owner may still be acting on its claim: never this process (it acts in
        sequence, so a claim of its own is not in flight when it looks), never after `lease_s`; on this
        host only while that process lives; on another host, whose processes cannot be seen, until the
        lease runs out (so it relies on the hosts' clocks agreeing to well within the lease)."""
        if self.is_me() or time.time() - self.at >= lease_s:
            return False
        if self.host != HOST:
            return True
        if self.ticks is None:  # recorded where /proc could not be read: the pid alone
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return _start_ticks(self.pid) == self.ticks
