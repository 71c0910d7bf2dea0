"""FileLog: complete lines of a growing file, with bounded memory whatever the file does."""

from __future__ import annotations

from orchestrator.targets import filelog
from orchestrator.targets.filelog import FileLog


def test_lines_arrive_complete_and_in_order(tmp_path):
    path = tmp_path / "out.log"
    log = FileLog(str(path))
    assert log.lines() == []  # not there yet
    path.write_bytes(b"one\ntw")
    assert log.lines() == ["one"]
    with path.open("ab") as f:
        f.write(b"o\nthree")
    assert log.lines() == ["two"]
    assert log.rest() == ["three"]


def test_a_huge_growth_is_read_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(filelog, "READ_CHUNK", 1000)
    path = tmp_path / "out.log"
    path.write_bytes(b"".join(b"line %05d\n" % i for i in range(1000)))  # 11,000 bytes
    log = FileLog(str(path))
    first = log.lines()
    assert 0 < len(first) < 100  # one chunk's worth, not the whole file
    seen = list(first)
    while chunk := log.lines():
        seen += chunk
    assert seen == [f"line {i:05d}" for i in range(1000)]


def test_a_progress_bar_redrawn_forever_keeps_only_its_latest_redraw(tmp_path, monkeypatch):
    monkeypatch.setattr(filelog, "MAX_PARTIAL", 200)
    path = tmp_path / "out.log"
    path.write_bytes(b"".join(b"\r%3d%%|bar| %d/1000" % (i // 10, i) for i in range(1000)))
    log = FileLog(str(path))
    while log.lines():
        pass
    assert len(log.partial) <= 200
    assert log.partial.endswith(b"999/1000")
    with path.open("ab") as f:
        f.write(b"\n")
    assert log.lines()[-1].endswith("999/1000")


def test_a_line_without_end_is_passed_on_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(filelog, "MAX_PARTIAL", 100)
    path = tmp_path / "out.log"
    path.write_bytes(b"x" * 1000)
    log = FileLog(str(path))
    pieces = log.lines()
    assert pieces and "".join(pieces) == "x" * 1000
    assert log.partial == b""


def test_a_symlink_at_the_log_name_reads_as_nothing_but_a_note(tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$hash:19000::::::\n")
    attempt = tmp_path / "attempt-1"
    attempt.mkdir()
    (attempt / "output.log").symlink_to(secret)
    log = FileLog(str(attempt / "output.log"))
    first = log.lines()
    assert len(first) == 1 and "symbolic link" in first[0] and "$6$hash" not in first[0]
    assert log.lines() == [] and log.rest() == []  # the note once, never the target's content
    assert filelog.read_tail(str(attempt / "output.log"), 1000) == ""


def test_a_fifo_at_the_log_name_never_blocks(tmp_path):
    import os
    path = tmp_path / "output.log"
    os.mkfifo(path)
    lines = FileLog(str(path)).rest()
    assert len(lines) == 1 and "not a regular file" in lines[0]
