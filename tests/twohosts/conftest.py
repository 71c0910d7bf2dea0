"""Two hosts on one shared filesystem (scripts/twohosts): the fixture every test here needs.

`scripts/twohosts up` mounts one directory twice through sshfs; `scripts/twohosts env` exports
SHARDCTL_TWOHOSTS_A and _B (the two clients' views) and _SERVER (the directory itself). Without them
these tests skip, unless SHARDCTL_REQUIRE_TWOHOSTS=1 (scripts/test sets it once the rig is up): then
they fail.

Host B's processes run in a mount namespace of their own where B's mount is bound over A's path,
so both "hosts" see the store under the same absolute path, as login and compute nodes do; the
paths a record holds (the job directory, where the supervisor's flock lives) then mean the same
file on both sides but reach it through different clients. That namespace also has its own host
name (HOST_B), so what the store records as "which host" differs between the sides too; the
process table is still shared (a pid of the other side can be seen, unlike on a real second host).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HOST_B = "twohosts-b"  # host B's name inside its namespace


@dataclass
class TwoHosts:
    a: Path  # host A's view of the shared directory
    b: Path  # host B's view of the same directory
    server: Path | None  # the directory itself, seen without either client's caches
    made: list[Path] = field(default_factory=list)  # what fresh_dir made, to remove afterwards

    def command(self, side: str, argv: Sequence[str]) -> list[str]:
        """argv as run on `side` ("A" or "B"): on B, inside a namespace where A's path is B's mount."""
        if side == "A":
            return list(argv)
        script = 'hostname "$3" && mount --bind "$1" "$2" && shift 3 && exec "$@"'
        return ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script, "sh",
                str(self.b), str(self.a), HOST_B, *argv]

    def fresh_dir(self, name: str) -> str:
        """A new directory on the shared filesystem, as an absolute path valid on both sides (removed
        at the end of the session)."""
        path = self.a / f"{name}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        self.made.append(path)
        return str(path)

    def server_view(self, path: str) -> Path | None:
        """The same directory as the file server sees it (no client cache), when known."""
        if self.server is None:
            return None
        return self.server / Path(path).relative_to(self.a)


def _problem() -> tuple[str | None, TwoHosts | None]:
    a, b = os.environ.get("SHARDCTL_TWOHOSTS_A"), os.environ.get("SHARDCTL_TWOHOSTS_B")
    if not a or not b:
        return "SHARDCTL_TWOHOSTS_A/B unset (run scripts/twohosts up, then eval \"$(scripts/twohosts env)\")", None
    hosts = TwoHosts(Path(a), Path(b), Path(os.environ["SHARDCTL_TWOHOSTS_SERVER"])
                     if os.environ.get("SHARDCTL_TWOHOSTS_SERVER") else None)
    for p in (hosts.a, hosts.b):
        if not os.path.ismount(p):
            return f"{p} is not a mount point (run scripts/twohosts up)", None
    probe = subprocess.run(hosts.command("B", ["stat", "-f", "-c", "%T", str(hosts.a)]),
                           capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        return f"cannot run host B's side in a mount namespace (unshare, as root): {probe.stderr.strip()}", None
    return None, hosts


@pytest.fixture(scope="session")
def two_hosts() -> Iterator[TwoHosts]:
    """The two views of the shared directory. Skips without them, unless SHARDCTL_REQUIRE_TWOHOSTS=1."""
    problem, hosts = _problem()
    if problem or hosts is None:
        if os.environ.get("SHARDCTL_REQUIRE_TWOHOSTS") == "1":
            pytest.fail(f"SHARDCTL_REQUIRE_TWOHOSTS=1 but {problem}")
        pytest.skip(problem or "no two hosts")
    yield hosts
    for path in hosts.made:  # from the server's side when known: quicker, and no client cache in the way
        shutil.rmtree(hosts.server_view(str(path)) or path, ignore_errors=True)
