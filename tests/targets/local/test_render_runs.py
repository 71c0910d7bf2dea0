"""The rendered launch.sh really trains with `accelerate launch` (CPU, 2 processes) and resumes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from orchestrator.spec import parse_spec_text
from orchestrator.targets.local import target as local

ROOT = Path(__file__).resolve().parents[3]

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


def run_spec(text: str, run_dir: Path, checkpoint_dir: Path, port: int) -> str:
    """Render on CPU, write the files, run launch.sh; returns the output of a successful run."""
    job = parse_spec_text(text).job
    dry = local.render(job, str(run_dir), checkpoint_dir=str(checkpoint_dir), cpu=True, port=port,
                       workdir=str(ROOT), bin_dir=str(Path(__import__("sys").executable).parent))
    run_dir.mkdir()
    for name, content in dry.files.items():
        (run_dir / name).write_text(content)
    r = subprocess.run(dry.command, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def run(tmp: Path, steps: int, port: int) -> str:
    return run_spec(SPEC.replace("STEPS", str(steps)), tmp / f"run{steps}", tmp / "ckpt", port)


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


LLAMA = """
apiVersion: shardctl.dev/v1alpha1
kind: TrainingJob
metadata: {name: llama-tiny}
spec:
  entrypoint:
    script: examples/train_llama.py
    args: ["--preset", "tiny", "--micro-batch", "{micro_batch}", "--grad-accum", "{grad_accum}", "--seq-len", "32",
           "--steps", "2", "--save-every", "2", "--checkpoint-dir", "{checkpoint_dir}"]
  model: {name_or_path: llama-tiny, layer_class: LlamaDecoderLayer}
  backend: deepspeed
  sharding: grad_op
  precision: {mixed: "no"}
  batch: {micro: 1, global: 2}
  resources: {gpus_per_node: 2}
"""


@pytest.mark.slow
def test_gpu_example_script_runs_its_tiny_preset_on_cpu(tmp_path: Path) -> None:
    """examples/train_llama.py (the 7B GPU example's script) is exercised here at a tiny size."""
    out = run_spec(LLAMA, tmp_path / "llama", tmp_path / "ckpt", 29613)
    assert "llama tiny" in out and "step 2/2" in out and "training complete" in out
    assert (tmp_path / "ckpt/latest.json").exists()
