"""The environment every Slurm command of ours runs in: what the submitter's own allocation set never
reaches an attempt.

sbatch, srun and salloc read options from the environment (`SBATCH_*`, `SRUN_*`, `SALLOC_*`, and
`SLURM_*`: inside an allocation `SLURM_MEM_PER_NODE`, `SLURM_CPUS_PER_TASK`, `SLURM_JOB_ID`, ...), and
with sbatch's default `--export=ALL` the job inherits the submitter's environment, those variables
included. A judge job (1 CPU, 512 MiB) that submits the next attempt from inside its own allocation
would hand its `SLURM_MEM_PER_NODE` to the attempt, where slurmctld adds the attempt's own
`SLURM_MEM_PER_CPU` (a site's `DefMemPerCPU`) and `srun` stops with "SLURM_MEM_PER_CPU, SLURM_MEM_PER_GPU,
and SLURM_MEM_PER_NODE are mutually exclusive". A login shell's `SBATCH_EXPORT=NONE` would likewise start
the job without the environment the render counts on. So every Slurm command runs with those families
removed, as submitit's `helpers.clean_env` does for a job submitted from a job; what the attempt asks
for is then exactly what `shardctl render` shows, plus the site's own defaults (slurm.conf, job_submit).

Kept: `SLURM_CONF`, which says where the site's configuration is (a login node without it, on a
configless site, finds slurmctld by DNS instead). Also removed: the launchers' rendezvous variables
(`MASTER_ADDR`, `RANK`, ...), which an attempt sets for itself, PMI's, and the output formats of the
commands whose output we parse (`SQUEUE_FORMAT`, `SACCT_FORMAT`, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DROPPED_PREFIXES = ("SLURM_", "SLURMD_", "SBATCH_", "SRUN_", "SALLOC_", "PMI_", "PMIX_",
                    "SQUEUE_", "SACCT_", "SINFO_", "SCONTROL_", "SCANCEL_")
DROPPED_NAMES = frozenset({"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                           "GROUP_RANK", "NODE_RANK"})
KEPT = frozenset({"SLURM_CONF"})


def dropped(name: str) -> bool:
    """Whether a variable of the submitter's environment is kept from every Slurm command and job of ours."""
    return name not in KEPT and (name.startswith(DROPPED_PREFIXES) or name in DROPPED_NAMES)


def clean_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to run sbatch, srun, sacct, ... with: `environ` (default: this process's) without the
    variables an allocation, a login profile or a launcher set for their own job."""
    source = os.environ if environ is None else environ
    return {name: value for name, value in source.items() if not dropped(name)}


__all__ = ["clean_environment", "dropped"]
