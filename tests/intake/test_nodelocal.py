"""The node-local check (orchestrator/intake/nodelocal.py): what a job spanning nodes may not keep on this
machine only."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.intake.nodelocal import (
    ALLOW_ENV,
    Mount,
    NodeLocalPath,
    mount_of,
    mounts,
    node_local,
    refuse_node_local,
)

# A mount table as /proc/self/mountinfo writes it: an escaped space in a mount point, a mount over a mount.
MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /home rw,relatime shared:5 - nfs4 srv:/home rw,vers=4.2
31 22 0:41 / /scratch rw,relatime shared:6 - lustre 10.0.0.1@o2ib:/fs rw
32 22 0:42 / /local\\040ram rw shared:7 - tmpfs tmpfs rw,size=1g
33 30 0:43 / /home/u/cache rw shared:8 - tmpfs tmpfs rw
"""


@pytest.fixture()
def table(tmp_path: Path) -> list[Mount]:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    return mounts(str(path))


def test_the_mount_table_is_read_with_escapes(table: list[Mount]) -> None:
    assert Mount("/local ram", "tmpfs") in table and Mount("/scratch", "lustre") in table
    assert mount_of("/home/u/project", table) == Mount("/home", "nfs4")
    assert mount_of("/home/u/cache/x", table) == Mount("/home/u/cache", "tmpfs")  # the deepest mount holds it
    assert mount_of("/homework", table) == Mount("/", "ext4")  # a prefix of a name is not a parent


@pytest.mark.parametrize(("path", "why"), [
    ("/home/u/project", None), ("/scratch/u/state", None), ("/srv/data", None),  # ext4 may be exported: allowed
    ("/tmp/state", "under /tmp"), ("/var/tmp/x", "under /var/tmp"), ("/dev/shm/x", "under /dev/shm"),
    ("/run/user/1000/x", "under /run"), ("/local ram/x", "on tmpfs (/local ram)"),
    ("/home/u/cache/x", "on tmpfs (/home/u/cache)"),
])
def test_what_is_node_local(table: list[Mount], path: str, why: str | None) -> None:
    assert node_local(path, table) == why


def test_a_symlink_into_tmp_is_node_local(tmp_path: Path) -> None:
    link = tmp_path / "state"
    link.symlink_to("/dev/shm")
    assert node_local(link, []) == "under /dev/shm"


def test_the_refusal_names_the_path_and_both_ways_out(table: list[Mount]) -> None:
    with pytest.raises(NodeLocalPath) as caught:
        refuse_node_local({"the job store (SHARDCTL_HOME)": "/home/u/ok", "the working directory": "/tmp/w"},
                          "the slurm job's nodes", env={}, table=table)
    (line,) = caught.value.lines()
    assert line.startswith("the working directory: /tmp/w is under /tmp, on this machine only, and the slurm job's")
    assert ALLOW_ENV + "=1" in line and "NFS" in line
    assert caught.value.exit_code == 2


def test_the_escape_hatch_and_shared_paths_pass(table: list[Mount]) -> None:
    refuse_node_local({"x": "/tmp/w"}, "nodes", env={ALLOW_ENV: "1"}, table=table)
    refuse_node_local({"x": "/scratch/w"}, "nodes", env={}, table=table)
    with pytest.raises(NodeLocalPath):
        refuse_node_local({"x": "/tmp/w"}, "nodes", env={ALLOW_ENV: "yes"}, table=table)  # only 1 opens it
