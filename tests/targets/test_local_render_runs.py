"""The rendered launch.sh really trains with `accelerate launch` (CPU, 2 processes) and resumes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from orchestrator.spec import parse_spec_text
from orchestrator.targets import local

pytest.importorskip("accelerate")
pytest.importorskip("deepspeed")
ROOT = Path(__file__).resolve().parents[2]

SPEC = """
apiVersion: shardctl.dev/v1alpha1
kind: TrainingJob
metadata: {name: render-runs}
spec:
  entrypoint:
    script: examples/train_tiny.py
    args: ["--micro-batch", "{micro_batch}", "--grad-accum", "{grad_accum}", "--steps", "STEPS",
           "--save-every", "2", "--dim", "32", "--layers", "2", "--checkpoint-dir", "{checkpoint_dir}"]
  model: {name_or_path: tiny}
  backend: deepspeed
  sharding: full
  precision: {mixed: "no"}
  batch: {micro: 2, global: 8}
  resources: {gpus_per_node: 2}
"""


def run(tmp: Path, steps: int, port: int) -> str:
    job = parse_spec_text(SPEC.replace("STEPS", str(steps))).job
    run_dir = tmp / f"run{steps}"
    dry = local.render(job, str(run_dir), checkpoint_dir=str(tmp / "ckpt"), cpu=True, port=port, workdir=str(ROOT),
                       bin_dir=str(Path(__import__("sys").executable).parent))
    run_dir.mkdir()
    for name, text in dry.files.items():
        (run_dir / name).write_text(text)
    r = subprocess.run(dry.command, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


@pytest.mark.slow
def test_rendered_zero3_job_trains_on_cpu_and_resumes(tmp_path: Path) -> None:
    first = run(tmp_path, 4, 29611)
    assert "distributed_type=DistributedType.DEEPSPEED" in first and "world_size=2" in first
    assert "training complete" in first
    shards = sorted(p.name for p in (tmp_path / "ckpt/step_4/pytorch_model").glob("*optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    second = run(tmp_path, 6, 29612)
    assert "at step 4 (model, optimizer and RNG state)" in second
    assert "step 5/6" in second and "step 1/6" not in second
