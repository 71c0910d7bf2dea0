"""The planner: the seeds' published outcomes as sanity cases, the JSON contract, speed, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from orchestrator.plan.planner import plan
from tests.helpers import job

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[2]


def gpt2_xl(**spec) -> object:
    base = {"model": {"name_or_path": str(DATA / "gpt2-xl")}, "backend": "deepspeed", "sharding": "none",
            "precision": {"mixed": "fp16", "params": "fp32"}, "batch": {"micro": 1, "seq_len": 128},
            "resources": {"nodes": 1, "gpus_per_node": 1, "gpu_memory": "24GB"}}
    base.update(spec)
    return job(**base)


def test_gpt2_xl_does_not_fit_plain_data_parallel_on_24gb() -> None:
    """Seeds (deepspeed-zero-with-accelerate.md, Table 3): DDP runs out of memory even at batch 1."""
    for backend in ("deepspeed", "fsdp"):
        result = plan(gpt2_xl(backend=backend))
        assert result.candidates[0].origin == "spec" and not result.candidates[0].fits, backend


def test_gpt2_xl_fits_zero3_with_cpu_offload_at_batch_16() -> None:
    """Seeds, Table 3: ZeRO-3 with optimizer and parameters offloaded to CPU trains at batch 16."""
    result = plan(gpt2_xl(sharding="full", offload={"optimizer": "cpu", "params": "cpu"},
                          batch={"micro": 16, "seq_len": 128}))
    spec_candidate = result.candidates[0]
    assert spec_candidate.fits and result.chosen == 0
    assert spec_candidate.estimate.terms["optimizer_states"] == 0 and spec_candidate.estimate.terms["parameters"] == 0
    assert spec_candidate.estimate.host_bytes_per_node >= 12 * 1_557_611_200  # fp32 master + Adam, pinned on host


def test_the_plan_starts_from_the_cheapest_config_that_fits() -> None:
    result = plan(gpt2_xl())
    chosen = result.candidates[result.chosen]
    assert chosen.fits and all(c.cost >= chosen.cost for c in result.candidates if c.fits)
    assert not result.candidates[0].fits  # the spec as written is not it


def test_the_json_contract() -> None:
    out = subprocess.run([sys.executable, "-m", "orchestrator", "plan", "--json", "--gpu-memory", "24GiB",
                          "/dev/stdin"], input=json.dumps(gpt2_xl().model_dump(mode="json", by_alias=True)),
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["format"] == 1 and data["gpu_memory_bytes"] == 24 << 30 and data["chosen"] is not None
    first = data["candidates"][0]
    for key in ("backend", "sharding", "offload", "micro_batch", "activation_checkpointing",
                "estimated_peak_bytes_per_gpu", "breakdown", "verdict", "relative_cost"):
        assert key in first
    assert sum(first["breakdown"].values()) == first["estimated_peak_bytes_per_gpu"]


def test_fast_and_torch_free_for_a_7b_spec() -> None:
    code = ("import sys, time; from tests.helpers import job; from orchestrator.plan.planner import plan\n"
            "j = job(model={'name_or_path': 'm', 'parameters': 6.7e9}, backend='fsdp', sharding='grad_op',"
            " batch={'micro': 4, 'seq_len': 4096}, resources={'nodes': 1, 'gpus_per_node': 8,"
            " 'gpu_memory': '80GiB'})\n"
            "plan(j); t = time.perf_counter(); [plan(j) for _ in range(10)]\n"
            "print((time.perf_counter() - t) / 10, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    seconds, torch_loaded = out.stdout.split()
    assert float(seconds) < 0.1 and torch_loaded == "False"
