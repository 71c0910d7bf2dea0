"""The function runner (`orchestrator.entry.run_pickled`) as its own process, and the submit side's pickling."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import shardctl
from orchestrator.entry import FUNCTION_FILE, pickle_call, read_outcome
from orchestrator.lifecycle.classify import Outcome, classify

ROOT = Path(__file__).resolve().parents[2]


def returns_a_lock() -> threading.Lock:
    return threading.Lock()


def _run(run_dir: Path, rank: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHARDCTL_RUN_DIR": str(run_dir), "RANK": str(rank)}
    env.pop("SHARDCTL_RESULT_TO", None)
    return subprocess.run([sys.executable, "-m", "orchestrator.entry.run_pickled"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_an_unpicklable_return_value_is_the_functions_error_and_a_user_error(tmp_path: Path) -> None:
    (tmp_path / FUNCTION_FILE).write_bytes(pickle_call(returns_a_lock, (), {}))
    r = _run(tmp_path)
    assert r.returncode == 1
    kind, text = read_outcome(str(tmp_path))  # result() raises FunctionFailed with it, exception() returns it
    assert kind == "error" and text.startswith("rank 0:")
    assert "the function's return value cannot be pickled" in text and "cannot pickle '_thread.lock'" in text
    failure = classify(Outcome(exit_code=1, log_tail=r.stderr))  # not "exited 1 with no recognised cause"
    assert failure is not None and failure.kind.value == "user_error", failure


class Counted:
    """Counts how many of its kind the pickler reached."""

    reduced = 0

    def __reduce__(self) -> tuple:
        Counted.reduced += 1
        return (int, (Counted.reduced,))


def test_the_pickled_call_stops_at_the_cap_while_it_is_written() -> None:
    Counted.reduced = 0
    many = [Counted() for _ in range(200_000)]  # about 1.5 MB pickled
    with pytest.raises(shardctl.FunctionPickleError, match="over the 64 KiB cap: pass large data by path"):
        pickle_call(returns_a_lock, (many,), {}, limit=64 << 10)
    assert 0 < Counted.reduced < 100_000  # stopped at the first frame past the cap, not after the whole pickle


def test_a_call_under_the_cap_is_what_submitit_loads(tmp_path: Path) -> None:
    from orchestrator.entry import load_call

    (tmp_path / FUNCTION_FILE).write_bytes(pickle_call(divmod, (17, 5), {}))
    assert load_call(tmp_path / FUNCTION_FILE).result() == (3, 2)
