"""A full disk under a running local job: one clear reason, no respawn loop, nothing lost.

The job store (and so the run's log and checkpoints) lives on a small tmpfs the test mounts. Mid-run
something else fills it and keeps it full (another job's checkpoints, as it happens on a shared
disk); the script's next checkpoint fails with ENOSPC and not a word of it reaches its log.
`submit --wait` must say once that the store has no space (no supervisor started again and again
meanwhile), and once space is freed the attempt is recorded as what it was: disk_full, not a
preemption, and not retried.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[3]
SIZE_MIB = 24

SCRIPT = """\
import os, time
os.makedirs(os.environ["SHARDCTL_CHECKPOINT_DIR"], exist_ok=True)
for step in range(1, 100000):
    print(f"step {step}/100000 loss 2.0", flush=True)
    with open(os.path.join(os.environ["SHARDCTL_CHECKPOINT_DIR"], f"step-{step}.pt"), "wb") as f:
        f.write(b"x" * 65536)  # OSError ENOSPC once the disk is full; its traceback cannot be written either
    time.sleep(0.2)
"""


class Filler(threading.Thread):
    """Keeps the disk full, as another writer would: whatever frees up is taken again at once."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.stop = path, threading.Event()

    def run(self) -> None:
        with open(self.path, "ab", buffering=0) as f:
            while not self.stop.is_set():
                try:
                    while True:
                        f.write(b"x" * 4096)
                except OSError:
                    time.sleep(0.02)


SPEC = """\
apiVersion: shardctl.dev/v1alpha1
kind: TrainingJob
metadata: {name: fills-the-disk}
spec:
  target: local
  entrypoint: {script: fill.py}
  model: {name_or_path: tiny-lm, parameters: 1.0e6}
  backend: fsdp
  sharding: none
  precision: {mixed: "no", params: fp32}
  batch: {micro: 1, global: 1}
  resources: {nodes: 1, gpus_per_node: 1}
  fallback: {max_attempts: 4}
"""


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MIB}m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


@pytest.mark.timeout(240)
def test_a_full_disk_is_said_once_ends_as_disk_full_and_starts_no_supervisor_loop(small_disk: Path,
                                                                                   tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "fill.py").write_text(SCRIPT)
    (work / "job.yaml").write_text(SPEC)
    home = small_disk / "state"
    env = {**os.environ, "SHARDCTL_HOME": str(home), "SHARDCTL_FORCE_CPU": "1"}
    waiter = subprocess.Popen([sys.executable, "-m", "orchestrator", "submit", "job.yaml", "--wait"], cwd=work,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    filler = Filler(small_disk / "ballast")
    try:
        wait_for(lambda: next(home.glob("jobs/*/checkpoints/step-1.pt"), None), 120, "the first checkpoint")
        filler.start()
        exit_file = wait_for(lambda: next(home.glob("jobs/*/attempt-1/exit.json"), None), 60,
                             "the attempt's result, written in the room kept for it")
        time.sleep(12)  # two of the CLI's looks (every 5 s): a respawn loop would start a supervisor at each
        assert waiter.poll() is None, waiter.communicate()[0]  # still waiting: nothing could be recorded
        job_dir = exit_file.parents[1]
        assert json.loads(exit_file.read_text())["no_space"], exit_file.read_text()
        filler.stop.set()
        filler.join(10)
        (small_disk / "ballast").unlink()  # space again: the waiting supervisor records the end
        out, _ = waiter.communicate(timeout=90)
    finally:
        filler.stop.set()
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 1, out
    assert "Traceback" not in out, out
    assert out.count("cannot move on until its store has space") == 1, out
    assert "had no supervisor" not in out, out
    supervisors = (job_dir / "supervisor.log").read_text().count("supervisor pid")
    assert supervisors == 1, (job_dir / "supervisor.log").read_text()
    status = subprocess.run([sys.executable, "-m", "orchestrator", "status", job_dir.name, "--json"], cwd=work,
                            env=env, capture_output=True, text=True, timeout=60)
    view = json.loads(status.stdout)
    assert view["state"] == "failed" and len(view["attempts"]) == 1, view  # not retried: it would fill up again
    failure = view["attempts"][0]["failure"]
    assert failure["kind"] == "disk_full" and "no space left on device" in failure["reason"], failure
    assert "free some space" in view["reason"], view["reason"]
