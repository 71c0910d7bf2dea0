"""Fixtures shared across the suite: the development Slurm cluster (slurm/dev/cluster)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DEV_CONF = Path(os.environ.get("SHARDCTL_SLURM_DIR", "/tmp/sdev")) / "etc" / "slurm.conf"


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "Slurm's client commands are not installed (run slurm/dev/cluster up)"
    conf = os.environ.get("SLURM_CONF") or (str(DEV_CONF) if DEV_CONF.exists() else None)
    if conf is None:
        return "no Slurm cluster configured (SLURM_CONF unset; run slurm/dev/cluster up)"
    os.environ["SLURM_CONF"] = conf  # the CLI subprocesses and the jobs inherit it
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld is not answering"
    if out.returncode != 0 or not any(s in out.stdout for s in ("idle", "mix", "alloc")):
        return f"the Slurm cluster is not up: {out.stderr.strip() or out.stdout.strip()}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """SLURM_CONF of a running cluster. Skips without one, unless SHARDCTL_REQUIRE_SLURM=1 (CI): then it fails."""
    problem = _cluster_problem()
    if problem:
        if os.environ.get("SHARDCTL_REQUIRE_SLURM") == "1":
            pytest.fail(f"SHARDCTL_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)
    os.environ["SHARDCTL_ALLOW_NODE_LOCAL"] = "1"  # both nodes are this machine: its /tmp is theirs (fs_local.py)
    return os.environ["SLURM_CONF"]
