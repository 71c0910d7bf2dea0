"""Every Slurm command of ours, and every job it submits, starts from a clean Slurm environment."""

from __future__ import annotations

import pytest

from orchestrator.targets.slurm.accounting import run_once
from orchestrator.targets.slurm.env import clean_environment, dropped

# What a judge job's own allocation and a site's login profile put in the environment of the process that
# runs sbatch (names from sbatch(1) and srun(1), INPUT and OUTPUT ENVIRONMENT VARIABLES).
SUBMITTERS_OWN = {
    "SLURM_MEM_PER_NODE": "512", "SLURM_JOB_ID": "41", "SLURM_CPUS_PER_TASK": "1", "SLURM_EXPORT_ENV": "NONE",
    "SBATCH_EXPORT": "NONE", "SBATCH_ACCOUNT": "other", "SRUN_CPUS_PER_TASK": "1", "SALLOC_PARTITION": "x",
    "SLURMD_NODENAME": "node1", "PMI_RANK": "0", "PMIX_RANK": "0", "MASTER_ADDR": "node9", "RANK": "3",
    "WORLD_SIZE": "8", "SQUEUE_FORMAT": "%i", "SACCT_FORMAT": "jobid",
}
KEPT = {"SLURM_CONF": "/etc/slurm/slurm.conf", "PATH": "/usr/bin:/bin", "HOME": "/home/u", "HF_TOKEN": "x",
        "SLURMISH": "not a Slurm variable", "SHARDCTL_HOME": "/shared/state"}


def test_the_submitters_allocation_and_login_profile_are_removed_and_the_rest_kept() -> None:
    cleaned = clean_environment({**SUBMITTERS_OWN, **KEPT})
    assert cleaned == KEPT
    assert all(dropped(name) for name in SUBMITTERS_OWN) and not any(dropped(name) for name in KEPT)


@pytest.mark.timeout(30)
def test_a_slurm_command_runs_without_the_callers_slurm_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_once is how sbatch, srun, sacct and scancel run: a real child process sees the clean environment
    (with sbatch's default --export=ALL, that is also what a job it submits starts from)."""
    for name, value in {**SUBMITTERS_OWN, **KEPT}.items():
        monkeypatch.setenv(name, value)
    proc = run_once(["env"])
    assert proc.returncode == 0
    seen = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert not set(SUBMITTERS_OWN) & set(seen), sorted(set(SUBMITTERS_OWN) & set(seen))
    assert {k: seen.get(k) for k in KEPT} == KEPT
