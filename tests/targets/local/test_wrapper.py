"""The attempt wrapper on real processes: exit status, the memory limit, stopping the whole tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.lifecycle.classify import classify
from orchestrator.procfiles import read_json, write_json
from orchestrator.targets.base import AttemptRef
from orchestrator.targets.local import memlimit
from orchestrator.targets.local.target import LocalTarget
from orchestrator.targets.local.wrapper import is_alive, start_ticks

ROOT = Path(__file__).resolve().parents[3]


HAVE_CGROUP = memlimit.cgroup_available()


def start(run_dir: Path, code: str, limit: int | None = None,
          mode: str = "auto") -> tuple[subprocess.Popen, AttemptRef]:
    run_dir.mkdir(parents=True)
    (run_dir / "job.py").write_text(textwrap.dedent(code))
    write_json(run_dir / "attempt.json", {"command": [sys.executable, str(run_dir / "job.py")], "cwd": str(run_dir),
                                          "log": "output.log", "memory_limit_bytes": limit, "memory_mode": mode,
                                          "cgroup_name": f"shardctl-test-{os.getpid()}-{run_dir.name}"})
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.targets.local.wrapper", str(run_dir)], cwd=ROOT,
                            start_new_session=True)
    ref = AttemptRef("t", 1, str(run_dir), str(run_dir / "ckpt"), str(run_dir), str(run_dir / "output.log"))
    return proc, ref


def finish(proc: subprocess.Popen, ref: AttemptRef, timeout: float = 60):
    proc.wait(timeout=timeout)
    state = LocalTarget(cpu=True).describe(f"{proc.pid}:None", ref)
    assert state.seen == "ended"
    return state


def test_exit_code_and_log_are_recorded(tmp_path: Path) -> None:
    proc, ref = start(tmp_path / "a", "print('hello from the run'); raise SystemExit(3)")
    state = finish(proc, ref)
    assert state.outcome.exit_code == 3 and state.outcome.signal is None
    assert "hello from the run" in state.outcome.log_tail
    result = read_json(Path(ref.run_dir) / "exit.json")
    assert result["ended_at"] >= read_json(Path(ref.run_dir) / "wrapper.json")["launched_at"]


def test_a_missing_command_still_leaves_a_result(tmp_path: Path) -> None:
    run_dir = tmp_path / "b"
    run_dir.mkdir()
    write_json(run_dir / "attempt.json", {"command": ["/nonexistent/launcher"], "cwd": str(run_dir), "log": "o.log",
                                          "memory_limit_bytes": None, "cgroup_name": "x"})
    subprocess.run([sys.executable, "-m", "orchestrator.targets.local.wrapper", str(run_dir)], cwd=ROOT, timeout=30)
    result = read_json(run_dir / "exit.json")
    assert result["exit_code"] == 127 and "could not start" in (run_dir / "o.log").read_text()


TREE = """
import os, subprocess, sys, time
# like torchrun: a worker in a session of its own, out of reach of a process-group kill
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
open("worker.pid", "w").write(str(worker.pid))
print("running", flush=True)
time.sleep(300)
"""


def test_sigterm_stops_the_whole_tree_even_workers_in_their_own_session(tmp_path: Path) -> None:
    proc, ref = start(tmp_path / "c", TREE)
    pid_file = Path(ref.run_dir) / "worker.pid"
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    ticks = start_ticks(worker)
    assert os.getsid(worker) != os.getsid(proc.pid)
    target = LocalTarget(cpu=True)
    target.cancel(f"{proc.pid}:{start_ticks(proc.pid)}", ref)
    state = finish(proc, ref, timeout=30)
    assert not is_alive(worker, ticks)
    assert state.outcome.preempted  # terminated from outside; the supervisor knows whether it was a cancel
    assert "signal 15 received: stopping the run" in state.outcome.log_tail


@pytest.mark.skipif(not HAVE_CGROUP, reason="no writable memory cgroup on this machine")
def test_cgroup_limit_kills_on_overuse_and_counts_it(tmp_path: Path) -> None:
    code = "x = bytearray(600 * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('survived')"
    proc, ref = start(tmp_path / "d", code, limit=200 * 2**20)
    state = finish(proc, ref)
    result = read_json(Path(ref.run_dir) / "exit.json")
    assert result["memory"]["mode"].startswith("cgroup") and result["oom_kills"] >= 1
    assert "survived" not in state.outcome.log_tail
    failure = classify(state.outcome)
    assert failure.kind == "host_oom" and "out-of-memory killer" in failure.reason
    assert not Path(result["memory"]["cgroup"]).exists()  # removed after the run


@pytest.mark.skipif(not HAVE_CGROUP, reason="no writable memory cgroup on this machine")
def test_cgroup_limit_leaves_a_run_that_fits_alone(tmp_path: Path) -> None:
    code = "x = bytearray(50 * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('fits')"
    proc, ref = start(tmp_path / "e", code, limit=300 * 2**20)
    state = finish(proc, ref)
    assert state.outcome.exit_code == 0 and "fits" in state.outcome.log_tail
    assert 50 * 2**20 < state.peak_memory_bytes <= 300 * 2**20


def test_rlimit_fallback_makes_allocation_fail_inside_the_process(tmp_path: Path) -> None:
    code = "x = bytearray(2 * 2**30)\nprint('survived')"
    proc, ref = start(tmp_path / "f", code, limit=1 * 2**30, mode="rlimit")
    state = finish(proc, ref)
    assert json.loads((Path(ref.run_dir) / "exit.json").read_text())["memory"]["mode"] == "rlimit"
    assert state.outcome.exit_code == 1 and "MemoryError" in state.outcome.log_tail
    assert classify(state.outcome).kind == "host_oom"


def test_a_vanished_wrapper_reads_as_lost_not_running(tmp_path: Path) -> None:
    proc, ref = start(tmp_path / "g", "import time; time.sleep(300)")
    deadline = time.monotonic() + 30
    while read_json(Path(ref.run_dir) / "wrapper.json") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ticks = start_ticks(proc.pid)
    assert LocalTarget(cpu=True).describe(f"{proc.pid}:{ticks}", ref).seen == "running"
    os.killpg(proc.pid, signal.SIGKILL)  # wrapper and run die together: no exit.json
    proc.wait(timeout=10)
    state = LocalTarget(cpu=True).describe(f"{proc.pid}:{ticks}", ref)
    assert state.seen == "ended" and state.outcome.preempted and "without an exit status" in state.detail


# The wrapper, with its wait made to lose the race deterministically: the run ends by itself just after the
# wrapper last looked, and the cancel's SIGTERM lands before the wrapper looks again.
RACING_WRAPPER = """
import os, signal, subprocess, sys
from pathlib import Path
from orchestrator.targets.local import wrapper

real_wait = subprocess.Popen.wait
raced = []

def racy_wait(self, timeout=None):
    if not raced:
        raced.append(True)
        os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped
        os.kill(os.getpid(), signal.SIGTERM)
        raise subprocess.TimeoutExpired(self.args, timeout)
    return real_wait(self, timeout)

subprocess.Popen.wait = racy_wait
sys.exit(wrapper.run(Path(sys.argv[1])))
"""


def test_a_cancel_just_after_the_run_ended_by_itself_records_no_termination(tmp_path: Path) -> None:
    run_dir = tmp_path / "d"
    run_dir.mkdir()
    write_json(run_dir / "attempt.json", {"command": [sys.executable, "-c", "print('done by itself')"],
                                          "cwd": str(run_dir), "log": "output.log", "memory_limit_bytes": None,
                                          "memory_mode": "none", "cgroup_name": "x"})
    subprocess.run([sys.executable, "-c", RACING_WRAPPER, str(run_dir)], cwd=ROOT, timeout=60, check=True)
    result = read_json(run_dir / "exit.json")
    assert result["exit_code"] == 0 and result["terminated_by"] is None, result
    assert "stopping the run" not in (run_dir / "output.log").read_text()
