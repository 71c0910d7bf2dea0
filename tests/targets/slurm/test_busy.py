"""sbatch against a busy slurmctld (a sweep submitted at once): tried again with backoff, never twice for one job.

Real processes: stand-ins for sbatch, squeue and sacct on PATH that say what a busy slurmctld makes them say,
and count their calls."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orchestrator.errors import SlurmRefused
from orchestrator.targets.slurm import target as slurm_target

pytestmark = pytest.mark.timeout(60)

BUSY = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"


def fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture()
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(slurm_target, "SBATCH_BACKOFF_S", 0.01)
    return bin_dir


def calls(bin_dir: Path, name: str) -> int:
    log = bin_dir / f"{name}.calls"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_busy_controller_is_tried_again_until_it_takes_the_job(slurm: Path) -> None:
    fake(slurm, "sbatch", f'echo x >> "{slurm}/sbatch.calls"\n'
                          f'[ $(wc -l < "{slurm}/sbatch.calls") -le 2 ] && {{ echo "{BUSY}" >&2; exit 1; }}\n'
                          'echo 4242\n')
    fake(slurm, "squeue", f'echo x >> "{slurm}/squeue.calls"\n')  # not submitted: no job of that name
    fake(slurm, "sacct", "")
    assert slurm_target.sbatch(["job.sbatch"], name="sweep.abc.1") == "4242"
    assert calls(slurm, "sbatch") == 3 and calls(slurm, "squeue") == 2


def test_a_submission_whose_answer_was_lost_is_found_by_name_not_submitted_again(slurm: Path) -> None:
    fake(slurm, "sbatch", f'echo x >> "{slurm}/sbatch.calls"\necho "{BUSY}" >&2\nexit 1\n')
    fake(slurm, "squeue", '[ "$3" = "sweep.abc.1" ] && echo 777\n')  # slurmctld took it after all
    assert slurm_target.sbatch(["job.sbatch"], name="sweep.abc.1") == "777"
    assert calls(slurm, "sbatch") == 1


def test_a_refusal_is_not_tried_again_and_a_busy_controller_is_given_up_on_in_the_end(slurm: Path) -> None:
    fake(slurm, "sbatch", f'echo x >> "{slurm}/sbatch.calls"\n'
                          'echo "sbatch: error: Batch job submission failed: Invalid account" >&2\nexit 1\n')
    with pytest.raises(SlurmRefused, match="Invalid account"):
        slurm_target.sbatch(["job.sbatch"], name="a.b.1")
    assert calls(slurm, "sbatch") == 1
    (slurm / "sbatch.calls").unlink()
    fake(slurm, "sbatch", f'echo x >> "{slurm}/sbatch.calls"\n'
                          'echo "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying" >&2\n'
                          'echo "sbatch: error: Batch job submission failed: Resource temporarily unavailable" >&2\n'
                          'exit 1\n')
    fake(slurm, "squeue", "")
    fake(slurm, "sacct", "")
    with pytest.raises(SlurmRefused, match="Resource temporarily unavailable"):
        slurm_target.sbatch(["job.sbatch"], name="a.b.1")
    assert calls(slurm, "sbatch") == slurm_target.SBATCH_TRIES


def test_a_check_that_submits_nothing_is_asked_again_while_slurm_is_busy(slurm: Path) -> None:
    """`sbatch --test-only` (submit's preflight) when slurmctld is busy: asked again, then its answer stands."""
    fake(slurm, "sbatch", f'echo x >> "{slurm}/sbatch.calls"\n'
                          f'[ $(wc -l < "{slurm}/sbatch.calls") -le 1 ] && '
                          '{ echo "sbatch: error: allocation failure: Socket timed out on send/recv operation" >&2; '
                          'exit 1; }\n'
                          'echo "sbatch: Job 3 to start at 2026-12-07T01:00:00 on nodes node1" >&2\n')
    assert "to start at" in slurm_target.test_only("job.sbatch")
    assert calls(slurm, "sbatch") == 2
