"""The acceptance of hang detection on the local target: real `accelerate launch` processes on CPU.

Rank 1 of a 2-process DeepSpeed run blocks forever at step 5 of attempt 1 (train_tiny.py --hang-at-step), so
rank 0 waits in the step's collective. With `resilience.hang_after: 20s` the supervisor's watchdog must find it
within hang_after + 30 s of the last output, record it, have the wrapper dump both ranks' stacks (stacks.txt
names where each waited), and restart: attempt 2 resumes from the step-4 checkpoint and succeeds, and
`shardctl history` explains it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.store.jobstore import Store
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
SHARDCTL = [sys.executable, "-m", "orchestrator"]
HANG_AFTER_S = 20


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*SHARDCTL, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def hang_spec(tmp: Path) -> Path:
    text = (ROOT / "examples/quickstart.yaml").read_text()
    text = text.replace('"--steps", "20"', '"--steps", "8", "--hang-at-step", "5", "--hang-rank", "1", '
                                           '"--hang-on-attempt", "1"')
    text = text.replace("every_steps: 5", "every_steps: 4")
    assert "--hang-at-step" in text and "every_steps: 4" in text
    path = tmp / "hang.yaml"
    path.write_text(text + f"  resilience:\n    hang_after: {HANG_AFTER_S}s\n")
    return path


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_hung_rank_is_found_its_stacks_kept_and_the_run_resumes(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "state"
    monkeypatch.setenv("SHARDCTL_HOME", str(home))
    monkeypatch.setenv("SHARDCTL_FORCE_CPU", "1")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    r = cli("submit", str(hang_spec(tmp_path)), "--json")
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["id"]
    store = Store(home)
    first = store.attempts(job_id)[0]
    log = Path(first.log_path)

    # until the hang is recorded: the log's last change before it (the last output) and when it was recorded
    wait_for(lambda: "simulating a hang at step 5" in (log.read_text(errors="replace") if log.exists() else ""),
             240, "rank 1 to hang")
    last_output = log.stat().st_mtime
    deadline = time.monotonic() + HANG_AFTER_S + 120
    while (hung := store.attempts(job_id)[0].hung) is None:
        assert time.monotonic() < deadline, "the hang was never detected"
        last_output = max(last_output, log.stat().st_mtime)
        time.sleep(0.2)
    detected_after = time.time() - last_output
    print(f"hang detected {detected_after:.1f} s after the last output (hang_after {HANG_AFTER_S} s): {hung}")
    assert HANG_AFTER_S <= detected_after + 1 <= HANG_AFTER_S + 30 + 1, detected_after
    assert "last step seen: 4" in hung

    wait_for(lambda: store.get_job(job_id).terminal, 300, "the job to end")
    final = json.loads(cli("history", job_id, "--json").stdout)
    assert final["state"] == "succeeded", final
    a1, a2 = final["attempts"]
    assert a1["failure"]["kind"] == "hang", a1
    assert a1["failure"]["reason"].startswith("hung: no output and no progress for ")
    assert "rank 0 in " in a1["failure"]["reason"] and "rank 1 in examples/train_tiny.py:" in a1["failure"]["reason"]
    stacks = (Path(a1["run_dir"]) / "stacks.txt").read_text()
    rank0, rank1 = stacks.split("=== rank 0 ", 1)[1].split("=== rank 1 ", 1)
    assert "hang_here" in rank1.splitlines()[0]  # rank 1's innermost Python frame: the sleep in hang_here
    assert "train_tiny.py" in rank1 and "in hang_here" in rank1
    assert "torch/distributed/" in rank0.splitlines()[0], rank0  # rank 0 waits in the step's collective
    assert "Fatal Python error: Aborted" in rank0 and "Fatal Python error: Aborted" in rank1

    assert a2["resume_from"].startswith("step_4"), a2
    assert "restart 1 of 3" in a2["reason"], a2["reason"]
    log2 = Path(a2["log"]).read_text()
    assert "at step 4 (model, optimizer and RNG state)" in log2 and "training complete" in log2
    assert "simulating a hang" not in log2

    text = cli("history", job_id).stdout
    assert "hang: hung: no output and no progress" in text and "last step seen: 4" in text
    assert "restart 1 of 3" in text
