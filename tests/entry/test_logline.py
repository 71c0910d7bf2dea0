"""A function's outcome through rank 0's log (Kubernetes): the real runner prints it, the CLI's parser reads it.

The lines are produced by running `orchestrator.entry.run_pickled` as its own process, as a pod's rank
does, and read back with what `Job.result()` uses on a Kubernetes job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.entry import FUNCTION_FILE, FUNCTION_FILE_ENV, RESULT_FILE, RESULT_TO_ENV, pickle_call
from orchestrator.entry.logline import CHUNK, MARK, ResultTooBig, choose, lines, parse
from orchestrator.targets.kubernetes.function import outcome_from_log

ROOT = Path(__file__).resolve().parents[2]


def value(n: int) -> dict:
    """Importable by the runner (cwd is the repository root): pickled by reference."""
    return {"n": n, "blob": "x" * n, "rank": int(os.environ.get("RANK", "0"))}


def raises(message: str) -> None:
    raise ValueError(message)


def run_as_pod(tmp_path: Path, fn, *args, rank: int = 0) -> subprocess.CompletedProcess:
    """The runner as a pod runs it: the call in a read-only mount, the run directory read-only too."""
    mount = tmp_path / "function"
    mount.mkdir(exist_ok=True)
    (mount / FUNCTION_FILE).write_bytes(pickle_call(fn, args, {}))
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    config.chmod(0o555)
    env = {**os.environ, "SHARDCTL_RUN_DIR": str(config), "RANK": str(rank),
           FUNCTION_FILE_ENV: str(mount / FUNCTION_FILE), RESULT_TO_ENV: "log"}
    return subprocess.run([sys.executable, "-m", "orchestrator.entry.run_pickled"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_rank_0s_value_comes_back_from_its_log_in_lines_no_other_output_can_tear(tmp_path: Path) -> None:
    r = run_as_pod(tmp_path, value, 10_000)  # ~10 KB: several lines
    assert r.returncode == 0, r.stderr
    marked = [line for line in r.stdout.splitlines() if line.startswith(MARK)]
    assert len(marked) > 2 and all(len(line) < 4096 for line in marked)
    assert not (tmp_path / "config" / RESULT_FILE).exists()
    # the log as the kubelet serves it: other ranks' lines around and between ours
    log = "rank 1: step 3/3\n" + "\n".join(f"{line}\nrank 1: noise {i}" for i, line in enumerate(marked)) + "\n"
    assert outcome_from_log(log, "pod 0") == ("success", {"n": 10_000, "blob": "x" * 10_000, "rank": 0})


def test_a_failure_is_the_traceback_and_only_rank_0_prints_a_value(tmp_path: Path) -> None:
    r = run_as_pod(tmp_path, raises, "bad batch at step 7", rank=0)
    assert r.returncode == 1
    kind, text = outcome_from_log(r.stdout, "pod 0")
    assert kind == "error" and text.startswith("rank 0:") and "ValueError: bad batch at step 7" in text
    quiet = run_as_pod(tmp_path, value, 3, rank=1)
    assert quiet.returncode == 0 and MARK not in quiet.stdout


def test_a_value_over_the_cap_is_named_not_printed(tmp_path: Path) -> None:
    r = run_as_pod(tmp_path, value, 400_000)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) < 1000  # only the one line that says so
    with pytest.raises(ResultTooBig, match=r"over the 256 KiB a pod's log carries.*save it to a volume"):
        outcome_from_log(r.stdout, "pod 0")


def test_a_cut_or_altered_set_is_not_an_outcome() -> None:
    data = b"\x80\x05" + os.urandom(3 * CHUNK)
    whole = lines(0, data)
    assert choose(parse("\n".join(whole))).data == data
    assert parse("\n".join(whole[:-1])) == []  # the log ends before the last chunk
    tampered = whole[0][:-4] + ("AAAA" if not whole[0].endswith("AAAA") else "BBBB")
    assert parse("\n".join([tampered, *whole[1:]])) == []  # the digest no longer matches
    assert outcome_from_log("no marked line\n", "pod 0") is None
