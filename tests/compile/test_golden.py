"""Golden renders of the readable examples: a change to any artifact shows up as a reviewed diff.

Regenerate with SHARDCTL_UPDATE_GOLDEN=1 and read the diff before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.spec import load_spec
from orchestrator.targets.local import target as local
from orchestrator.targets.slurm import render as slurm_render

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def rendered(example: Path) -> dict[str, str]:
    job = load_spec(example).job
    checkpoint = job.spec.checkpoint.dir or "/ckpt"
    dry = local.render(job, f"/run/{job.metadata.name}", checkpoint_dir=checkpoint, cpu=False, workdir="/work")
    files = dict(dry.files)
    if job.spec.target == "slurm":  # the sbatch scripts too: what a Slurm admin reviews
        req = slurm_render.SlurmRequest(
            job_id="0123abcd", attempt=1, run_dir=f"/run/{job.metadata.name}", checkpoint_dir=checkpoint,
            workdir="/work", log_path=f"/run/{job.metadata.name}/output.log", state_dir="/state",
            python="/venv/bin/python", package_root="/opt/shardctl", bin_dir="/venv/bin")
        slurm_files = slurm_render.render(job, req).files
        files.update({name: slurm_files[name] for name in (slurm_render.JOB_SCRIPT, slurm_render.JUDGE_SCRIPT)})
    return files


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_golden(example: Path) -> None:
    files = rendered(example)
    folder = GOLDEN / example.stem
    if os.environ.get("SHARDCTL_UPDATE_GOLDEN") == "1":
        if os.environ.get("SHARDCTL_STRICT_SKIPS") == "1":  # CI: a rewrite would compare the renders with themselves
            pytest.fail("SHARDCTL_UPDATE_GOLDEN=1 in a strict run: the golden files would be rewritten, not checked")
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for name, text in files.items():
            (folder / name).write_text(text)
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    for name, text in files.items():
        assert text == (folder / name).read_text(), f"{example.stem}/{name} changed"
