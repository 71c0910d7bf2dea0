"""procfiles: the one writer of files (atomic, private, never through a symlink) and the bounded reads."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orchestrator.procfiles import UnsafeDirectoryError, write_files, write_json, write_text_atomically


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_symlink_at_the_target_name_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    victim.chmod(0o600)
    out = tmp_path / "out"
    out.mkdir()
    (out / "launch.sh").symlink_to(victim)
    write_files(out, {"launch.sh": "echo rendered\n"}, executable=("launch.sh",))
    assert victim.read_text() == "mine\n" and _mode(victim) == 0o600  # neither written nor made executable
    assert not (out / "launch.sh").is_symlink() and (out / "launch.sh").read_text() == "echo rendered\n"
    assert _mode(out / "launch.sh") == 0o700


def test_a_symlink_at_the_old_fixed_temporary_name_is_never_used(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    victim.chmod(0o600)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".launch.sh.tmp").symlink_to(victim)  # where the old writer wrote, then chmod'ed 0755, by path
    write_files(out, {"launch.sh": "echo rendered\n"}, executable=("launch.sh",))
    assert victim.read_text() == "mine\n" and _mode(victim) == 0o600
    assert (out / ".launch.sh.tmp").is_symlink()  # left alone
    assert sorted(p.name for p in out.iterdir()) == [".launch.sh.tmp", "launch.sh"]  # no temporary left behind


def test_render_into_a_directory_of_planted_symlinks_changes_nothing_else(tmp_path: Path) -> None:
    """`render --out DIR` where someone planted symlinks at every name it writes: nothing else changes."""
    from click.testing import CliRunner

    from orchestrator.cli import main

    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    victim.chmod(0o600)
    out = tmp_path / "shared"
    out.mkdir()
    names = ("accelerate_config.yaml", "ds_config.json", "launch.sh", "attempt.json")
    for name in names:
        (out / name).symlink_to(victim)
        (out / f".{name}.tmp").symlink_to(victim)
    spec = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
    r = CliRunner().invoke(main, ["render", str(spec), "--out", str(out)], env={"SHARDCTL_FORCE_CPU": "1"})
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "mine\n" and _mode(victim) == 0o600
    for name in names:
        assert (out / name).is_file() and not (out / name).is_symlink()
        assert _mode(out / name) == (0o700 if name == "launch.sh" else 0o600)


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        write_files(tmp_path / "new", {"a.txt": "a", "run.sh": "b"}, executable=("run.sh",))
        write_json(tmp_path / "new" / "exit.json", {"exit_code": 0})
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new") == 0o700
    assert (_mode(tmp_path / "new/a.txt"), _mode(tmp_path / "new/run.sh")) == (0o600, 0o700)
    assert _mode(tmp_path / "new/exit.json") == 0o600


def test_write_files_writes_all_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old a\n")
    (out / "b.txt").mkdir()  # b cannot be replaced: a must not be either
    with pytest.raises(IsADirectoryError):
        write_files(out, {"a.txt": "new a\n", "b.txt": "new b\n"})
    assert (out / "a.txt").read_text() == "old a\n"
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]
    with pytest.raises(ValueError):
        write_files(out, {"../escape.txt": "x"})


def test_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit: anyone could replace what we write
    with pytest.raises(UnsafeDirectoryError, match="may be written by every user"):
        write_text_atomically(shared / "launch.sh", "x")
    assert list(shared.iterdir()) == []
    shared.chmod(0o1777)  # like /tmp: others cannot remove or replace our files
    write_text_atomically(shared / "launch.sh", "x")
    assert (shared / "launch.sh").read_text() == "x"


def test_a_symlink_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").symlink_to(elsewhere)
    with pytest.raises(OSError):
        write_files(tmp_path / "out", {"a.txt": "x"})
    assert list(elsewhere.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_another_users_directory_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 54321, 54321)
    with pytest.raises(UnsafeDirectoryError, match="belongs to another user"):
        write_files(theirs, {"launch.sh": "x"})
    assert list(theirs.iterdir()) == []


def test_logs_are_private_and_never_opened_through_a_symlink(tmp_path: Path) -> None:
    from orchestrator.procfiles import open_log

    with open_log(tmp_path / "supervisor.log") as log:
        log.write(b"one\n")
    with open_log(tmp_path / "supervisor.log") as log:
        log.write(b"two\n")
    assert (tmp_path / "supervisor.log").read_bytes() == b"one\ntwo\n"
    assert _mode(tmp_path / "supervisor.log") == 0o600
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    (tmp_path / "wrapper.log").symlink_to(victim)
    with pytest.raises(OSError):
        open_log(tmp_path / "wrapper.log")
    assert victim.read_text() == "mine\n"


def test_directories_on_the_way_are_private_whatever_the_umask(tmp_path) -> None:
    """`mkdir -p` gives the parents the umask's mode (0755 under 022): a job's directory under
    SHARDCTL_HOME would be listable by everyone. Each missing one is created 0700, even under umask 0377."""
    from orchestrator.procfiles import make_private_dirs

    for umask, leaf in ((0o022, "a/b/c"), (0o377, "x/y")):
        old = os.umask(umask)
        try:
            write_files(tmp_path / leaf, {"f": "secret"})
        finally:
            os.umask(old)
        top = tmp_path / leaf.split("/")[0]
        for d in [top, *[p for p in top.rglob("*") if p.is_dir()]]:
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, (umask, d)
        assert stat.S_IMODE((tmp_path / leaf / "f").stat().st_mode) == 0o600
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    make_private_dirs(shared / "mine")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # an existing directory is left as it is
