"""The hang watchdog a Slurm attempt runs beside its step (supervise/watch.py), on real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.supervise.watch import watch

pytestmark = pytest.mark.timeout(60)


def test_a_quiet_step_is_recorded_as_hung_and_stopped(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_text("step 1/10 loss 2.0\nstep 2/10 loss 1.9\n")
    step = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.monotonic()
    reason = watch(tmp_path, log, step.pid, hang_after=2, every_s=0.2)
    assert reason is not None and "last step seen: 2" in reason and "limit 2 s" in reason
    assert step.wait(10) == -15  # SIGTERM: srun forwards it to every task
    assert 2 <= time.monotonic() - t0 < 10
    assert json.loads((tmp_path / "hung.json").read_text())["reason"] == reason
    # outside an allocation (no SLURM_JOB_ID) no stacks step is started: the line says what follows, nothing else
    assert log.read_text().endswith(f"[shardctl] hung: {reason}: each rank's stacks, then stopping the run\n")


def test_a_step_that_keeps_printing_is_not_hung_and_the_watch_ends_with_it(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    code = (f"import time\nfor i in range(1, 16):\n    open({str(log)!r}, 'a').write(f'step {{i}}/15\\n')\n"
            "    time.sleep(0.2)\n")
    step = subprocess.Popen([sys.executable, "-c", code])
    assert watch(tmp_path, log, step.pid, hang_after=2, every_s=0.2) is None
    assert step.wait(10) == 0 and not (tmp_path / "hung.json").exists()
