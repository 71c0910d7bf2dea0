"""The store's file operations: publish once, private modes, who owns a claim, names as path components."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.store import files as store_files
from orchestrator.store.files import Owner, event_name, make_dir, name_key, publish, read_record


def test_publish_links_once_and_the_first_content_stands(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        assert publish(tmp_path / "d", "x.json", {"v": 1})
        assert not publish(tmp_path / "d", "x.json", {"v": 2})
    finally:
        os.umask(old)
    assert read_record(tmp_path / "d" / "x.json") == {"v": 1}
    assert sorted(os.listdir(tmp_path / "d")) == ["x.json"]  # no temporary left behind
    assert stat.S_IMODE((tmp_path / "d" / "x.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700


def test_publish_never_follows_a_symlink_at_its_name(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "d").mkdir(mode=0o700)
    (tmp_path / "d" / "x.json").symlink_to(target)
    assert not publish(tmp_path / "d", "x.json", {"v": 1})
    assert target.read_text() == "keep"


def test_read_record_refuses_what_is_not_an_object(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("[1]")
    (tmp_path / "b").write_text("{")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_record(tmp_path / "a")
    with pytest.raises(ValueError):
        read_record(tmp_path / "b")
    with pytest.raises(FileNotFoundError):
        read_record(tmp_path / "c")


def test_make_dir_is_private_and_idempotent(tmp_path: Path) -> None:
    assert make_dir(tmp_path / "d") == make_dir(tmp_path / "d")
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700


def test_event_names_are_unique_and_sort_by_time() -> None:
    names = [event_name("3.event-") for _ in range(200)]
    assert len(set(names)) == 200 and names == sorted(names)
    assert all(n.startswith("3.event-") and n.endswith(".json") and "/" not in n for n in names)


@pytest.mark.parametrize("name", ["llm-7b", "a.b_c", "x" * 100])
def test_plain_names_are_their_own_key(name: str) -> None:
    assert name_key(name) == name


@pytest.mark.parametrize("name", [".", "..", "a/b", "", "x" * 101, ".hidden", "naïve", "a\0b"])
def test_other_names_become_one_safe_component(name: str) -> None:
    key = name_key(name)
    assert key.startswith("=") and len(key) == 41 and "/" not in key and key not in (".", "..")
    assert name_key(name + "!") != key


def test_an_owner_may_be_acting_only_while_it_can_be() -> None:
    me = Owner.me()
    assert me.is_me() and not me.may_be_acting(600)  # a process acts in sequence: never in flight for itself
    now = time.time()
    elsewhere = Owner("another-host", me.pid, None, now)
    assert elsewhere.may_be_acting(600)  # another host's process cannot be seen: trusted for the lease
    assert not Owner("another-host", me.pid, None, now - 601).may_be_acting(600)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ticks = store_files._start_ticks(child.pid)
        assert Owner(store_files.HOST, child.pid, ticks, now).may_be_acting(600)  # alive on this host
        assert not Owner(store_files.HOST, child.pid, (ticks or 0) + 1, now).may_be_acting(600)  # pid reused
    finally:
        child.kill()
        child.wait()
    assert not Owner(store_files.HOST, child.pid, ticks, now).may_be_acting(600)  # it died


def test_owner_round_trips_through_json() -> None:
    me = Owner.me()
    assert Owner.of(json.loads(json.dumps(me.as_json()))) == me
    assert Owner.of({"migrated": True}) is None and Owner.of(None) is None


def test_publish_reads_a_lost_reply_and_sshfs_refusals_right(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NFS: a retransmitted LINK answers EEXIST for the link it made (the temporary's link count says it
    was ours). sshfs: a link to a name this client had not seen yet answers EPERM (lost, not an error)."""
    from orchestrator import procfiles

    real_link = os.link

    def made_then_eexist(src, dst, **kw):
        real_link(src, dst, **kw)
        raise FileExistsError(17, "File exists")

    monkeypatch.setattr(procfiles.os, "link", made_then_eexist)
    assert publish(tmp_path, "a.json", {"v": 1})
    assert read_record(tmp_path / "a.json") == {"v": 1}

    def eperm(src, dst, **kw):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(procfiles.os, "link", eperm)
    assert not publish(tmp_path, "a.json", {"v": 2})  # the name exists: another writer won
    with pytest.raises(PermissionError):
        publish(tmp_path, "b.json", {"v": 1})  # no such name: a real refusal
    assert sorted(os.listdir(tmp_path)) == ["a.json"]
