"""The committed memory measurements (benchmarks/data/memory-*.jsonl) against the planner, and the
measuring harness itself on a real accelerate launch (so a session with a GPU can run it as is)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import calibrate_memory  # noqa: E402
import memory_report  # noqa: E402

DATA_FILES = sorted((ROOT / "benchmarks" / "data").glob("memory-*.jsonl"))
# Held-out cases the planner still misses, with why. Listed, not hidden: the test fails if one of
# them starts to pass (then take it off) or if any other case misses.
KNOWN_MISSES = {
    "llama-60m/deepspeed/grad_op/opt-none/par-none/b2/s1024/ckpt-False/g2/no-fp32":
        "fp32 ZeRO-2 (no mixed precision) is over by 14%: the fp32 path's buckets and gradient copies "
        "are not yet checked against DeepSpeed's source (one measured case)",
}


def records(path: Path) -> list[dict]:
    return memory_report.load([path])


def test_there_are_measurements_with_a_held_out_share() -> None:
    assert DATA_FILES, "no measurements committed"
    for path in DATA_FILES:
        rows = records(path)
        held = [r for r in rows if r["held_out"]]
        assert len(rows) >= 12 and len(held) >= 4, path.name
        for r in rows:  # provenance travels with every case
            assert r["versions"]["deepspeed"] and r["versions"]["torch"] and r["device"]
            assert r["held_out"] == calibrate_memory.held_out(r["case"]["id"])


@pytest.mark.parametrize("path", DATA_FILES, ids=[p.name for p in DATA_FILES])
def test_held_out_cases_are_predicted_within_10_percent(path: Path) -> None:
    bad, missed = [], set()
    for r in records(path):
        if not r["held_out"]:
            continue
        measured, predicted = memory_report.measured(r), memory_report.planned(r)
        if abs(predicted - measured) > 0.10 * measured:
            missed.add(r["case"]["id"])
            if r["case"]["id"] not in KNOWN_MISSES:
                bad.append(f"{r['case']['id']}: measured {measured / 2**20:.0f} MiB, "
                           f"planned {predicted / 2**20:.0f} MiB")
    assert not bad, "\n".join(bad)
    present = {r["case"]["id"] for r in records(path)}
    assert {k for k in KNOWN_MISSES if k in present} <= missed, "a known miss now passes: take it off the list"


@pytest.mark.parametrize("path", DATA_FILES, ids=[p.name for p in DATA_FILES])
def test_the_verdict_is_right_more_than_5_percent_from_capacity(path: Path) -> None:
    """For every held-out case, a device 6% larger than its measured peak must be judged big
    enough, and one 6% smaller too small (the raw estimate against capacity)."""
    for r in records(path):
        if not r["held_out"] or r["case"]["id"] in KNOWN_MISSES:
            continue
        measured, predicted = memory_report.measured(r), memory_report.planned(r)
        assert predicted <= measured * 1.06, r["case"]["id"]  # fits a device 6% over its peak
        assert predicted > measured * 0.94, r["case"]["id"]  # does not fit one 6% under


@pytest.mark.slow
def test_the_harness_measures_one_case_through_shardctls_own_launch(tmp_path: Path) -> None:
    case = calibrate_memory.case("llama-60m", "deepspeed", "grad_op", "none", "none", 1, 64, False, gpus=2)
    record = calibrate_memory.run_case(case, timeout=300)
    assert record["ok"], record.get("error_tail")
    assert record["launcher_rc"] == 0 and len(record["ranks"]) == 2
    assert record["parameters"] == 58_466_816  # the config's analytic count, built by transformers
    # More than the model states ZeRO-2 keeps (16-bit weights, fp32 master + Adam halves) and
    # far less than everything unpartitioned.
    states = 2 * 58_466_816 + 12 * 58_466_816 // 2
    assert states < record["peak_allocated_bytes"] < 3 * states
    assert all(r["step_seconds_median"] > 0 for r in record["ranks"])
