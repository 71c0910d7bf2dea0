"""An attempt's progress history read from its log (orchestrator/views/history.py): bounded, thinned, cached, and
never raising on what a script printed."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from orchestrator.views import history
from orchestrator.views.history import MAX_POINTS, Point, parse_history, read_history, thin


@pytest.mark.timeout(30)
def test_steps_losses_and_step_times_are_read_from_the_formats_status_reads(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text("step 1/10 loss 2.5 seq 64 time 0.5s\n"
                   "step 2/10 loss 2.25 seq 64 time 0.25s\n"
                   " 30%|###       | 3/10 [00:03<00:07, 2.00it/s, loss=2.1]\r 40%|####      | 4/10 [00:04<00:06, "
                   "4.00it/s, loss=2.0]\n"
                   "shardctl: step=5 total=10 loss=1.9\n"
                   "{'loss': 1.8, 'epoch': 0.6}\n")
    points = read_history(str(log)).points
    assert [p.step for p in points] == [1, 2, 3, 4, 5]
    assert [p.loss for p in points] == [2.5, 2.25, 2.1, 2.0, 1.8]  # the Trainer's dict belongs to step 5
    assert [p.rate for p in points] == [2.0, 4.0, 2.0, 4.0, None]


@pytest.mark.timeout(30)
def test_non_finite_and_absurd_values_are_left_out_and_a_repeated_step_keeps_the_last(tmp_path: Path) -> None:
    points = parse_history(["step 1/4 loss nan", "step 2/4 loss inf", "step 3/4 loss 1e308", "step 4/4 loss 1.5",
                            "step 3/4 loss 1.7", f"step {'9' * 30}/4 loss 1"])
    assert points == [Point(1, None, None), Point(2, None, None), Point(3, 1.7, None), Point(4, 1.5, None)]


@pytest.mark.timeout(30)
def test_thinning_keeps_the_first_and_the_last_and_spreads_the_rest_evenly() -> None:
    points = [Point(i, float(i), None) for i in range(10_001)]
    kept = thin(points)
    assert len(kept) == MAX_POINTS and kept[0].step == 0 and kept[-1].step == 10_000
    gaps = {b.step - a.step for a, b in zip(kept, kept[1:], strict=False)}
    assert gaps <= {20, 21}
    assert thin(points[:3]) == points[:3]


@pytest.mark.timeout(60)
def test_a_long_log_is_read_only_at_its_start_and_end_and_cached_until_it_changes(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    log = tmp_path / "output.log"
    with log.open("w") as f:
        for step in range(1, 200_001):
            f.write(f"step {step}/200000 loss {1 + 1 / step:.6f}\n")
    size = log.stat().st_size
    found = read_history(str(log), head=64 * 1024, tail=64 * 1024)
    assert size > 1024 * 1024 and found.truncated and found.thinned
    assert found.points[0].step == 1 and found.points[-1].step == 200_000 and len(found.points) <= MAX_POINTS
    assert all(p.loss is not None and math.isfinite(p.loss) for p in found.points)
    reads: list[str] = []
    real = history._read
    monkeypatch.setattr(history, "_read", lambda *a: reads.append(a[0]) or real(*a))
    assert read_history(str(log), head=64 * 1024, tail=64 * 1024) == found and reads == []  # cached
    with log.open("a") as f:
        f.write("step 200001/200001 loss 0.5\n")
    assert read_history(str(log), head=64 * 1024, tail=64 * 1024).points[-1].step == 200_001 and reads


@pytest.mark.timeout(30)
def test_what_is_no_regular_file_reads_as_no_history(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (None, "", str(tmp_path), str(fifo), str(tmp_path / "missing"), "bad\0path"):
        assert read_history(path).points == ()
    garbage = tmp_path / "garbage.log"
    garbage.write_bytes(bytes(range(256)) * 100 + b"\xff\xfe step 2/3 loss 1.0\n")
    assert [p.step for p in read_history(str(garbage)).points] == [2]
