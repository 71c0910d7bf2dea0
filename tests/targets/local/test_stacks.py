"""A hung local attempt: the wrapper dumps each rank's Python stacks (faulthandler), then stops the tree.

Real processes, no torch: two "ranks" started as torchrun starts them (each in a session of its own, with RANK in
its environment), one without faulthandler. The acceptance with real accelerate ranks is
tests/supervise/test_hang_local.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from orchestrator.lifecycle.classify import classify
from orchestrator.procfiles import read_json
from orchestrator.spec.states import FailureKind
from orchestrator.targets.local.target import LocalTarget
from orchestrator.targets.local.wrapper import faulthandler_dump, innermost_frame, is_alive, start_ticks
from tests.targets.local.test_wrapper import finish, start

LAUNCHER = """
import os, subprocess, sys, time
RANK = '''
import os, time
def wait_for_peer():
    time.sleep(300)
def main():
    print("rank", os.environ["RANK"], "ready", flush=True)
    wait_for_peer()
main()
'''
procs = []
for rank, fault in (("0", "1"), ("1", "1"), ("2", "")):
    env = {**os.environ, "RANK": rank, "PYTHONFAULTHANDLER": fault}
    procs.append(subprocess.Popen([sys.executable, "-c", RANK], env=env, start_new_session=True))
open("ranks.pid", "w").write(" ".join(str(p.pid) for p in procs))
for p in procs:
    p.wait()
"""


def test_stop_hung_dumps_each_ranks_stacks_then_stops_the_tree(tmp_path: Path) -> None:
    proc, ref = start(tmp_path / "h", LAUNCHER)
    log = Path(ref.log_path)
    deadline = time.monotonic() + 30
    while log.read_text(errors="replace").count("ready") < 3 if log.exists() else True:
        assert time.monotonic() < deadline, "the ranks never started"
        time.sleep(0.05)
    ranks = [int(p) for p in (Path(ref.run_dir) / "ranks.pid").read_text().split()]
    ticks = [start_ticks(p) for p in ranks]
    target = LocalTarget(cpu=True)
    external_id = f"{proc.pid}:{start_ticks(proc.pid)}"
    target.stop_hung(external_id, ref)
    target.stop_hung(external_id, ref)  # asked again (a restarted supervisor): no harm
    state = finish(proc, ref, timeout=60)
    assert not any(is_alive(p, t) for p, t in zip(ranks, ticks, strict=True))
    where = read_json(Path(ref.run_dir) / "exit.json")["hung"]
    assert where["0"].endswith(" wait_for_peer") and where["1"].endswith(" wait_for_peer"), where
    assert where["2"].startswith("no stack (no faulthandler"), where
    stacks = (Path(ref.run_dir) / "stacks.txt").read_text()
    assert stacks.count("Fatal Python error: Aborted") == 2 and "=== rank 0 " in stacks and "=== rank 1 " in stacks
    assert "Extension modules" not in stacks
    assert state.outcome.hung is not None and "rank 0 in " in state.outcome.hung and "stacks.txt" in state.outcome.hung
    failure = classify(state.outcome)
    assert failure is not None and failure.kind is FailureKind.HANG


DUMP = """\
Fatal Python error: Aborted

Thread 0x00007f00000000aa (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 320 in wait
  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap

Current thread 0x00007f00000000bb (most recent call first):
  File "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py", line 3252 in all_reduce
  File "/work/train.py", line 12 in main
  File "/work/train.py", line 20 in <module>

Extension modules: numpy._core._multiarray_umath, torch._C (total: 2)
"""


def test_the_main_threads_innermost_frame_names_where_a_rank_waited() -> None:
    dump = faulthandler_dump("step 4/8\n" + DUMP + "more output\n")
    assert dump.startswith("Fatal Python error: Aborted") and "Extension modules" not in dump
    assert innermost_frame(dump) == "torch/distributed/distributed_c10d.py:3252 all_reduce"
    other_first = DUMP.replace("Current thread 0x00007f00000000bb", "Thread 0x00007f00000000bb")
    assert innermost_frame(other_first) == "torch/distributed/distributed_c10d.py:3252 all_reduce"  # by <module>
    assert faulthandler_dump("no dump here") == "" and innermost_frame("") is None
