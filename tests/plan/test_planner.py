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


def blenderbot(**spec) -> object:
    base = {"model": {"name_or_path": str(DATA / "blenderbot-400M-distill")},
            "batch": {"micro": 1, "seq_len": 128, "target_len": 64},
            "resources": {"nodes": 1, "gpus_per_node": 2, "gpu_memory": "24GiB"}}
    base.update(spec)
    return job(**base)


def test_blenderbot_max_batch_doubles_from_ddp_to_zero2_on_two_24gb_gpus() -> None:
    """Seeds (deepspeed-zero-with-accelerate.md, Table 2): on 2 x 24 GB, max batch 100 with DDP and
    200 with ZeRO-2 (source 128, target 64 tokens). The ZeRO-2 run's JSON enables fp16; the DDP
    run shows no mixed precision, i.e. fp32 (with fp16 DDP the planner predicts ~1.05x, not 2x:
    ZeRO-2 frees ~2.5 GB of model states, activations cost ~70 MB a sample). The DDP baseline is
    modelled as unsharded data parallel in fp32 (FSDP NO_SHARD; DeepSpeed stage 0 gives the same)."""
    ddp = plan(blenderbot(backend="fsdp", sharding="none", precision={"mixed": "no", "params": "fp32"}))
    zero2 = plan(blenderbot(backend="deepspeed", sharding="grad_op", precision={"mixed": "fp16", "params": "fp32"},
                            deepspeed={"reduce_bucket_size": 200_000_000}))  # the seeds' JSON
    ddp_max, zero2_max = ddp.candidates[0].max_micro_batch, zero2.candidates[0].max_micro_batch
    assert 100 <= ddp_max < 200 <= zero2_max  # both published batches fit; DDP cannot take ZeRO-2's
    assert 1.7 <= zero2_max / ddp_max <= 2.4, (ddp_max, zero2_max)


def test_an_encoder_decoder_decoder_length_changes_the_estimate() -> None:
    short = plan(blenderbot(backend="fsdp", sharding="none", batch={"micro": 8, "seq_len": 128, "target_len": 16}))
    long = plan(blenderbot(backend="fsdp", sharding="none", batch={"micro": 8, "seq_len": 128, "target_len": 512}))
    terms = short.candidates[0].estimate.phases["backward"], long.candidates[0].estimate.phases["backward"]
    assert terms[1]["activations"] > terms[0]["activations"]
    assert abs(terms[1]["logits"] - 32 * terms[0]["logits"]) <= 32  # 32 times the tokens (to the byte: rounding)
    unset = plan(blenderbot(backend="fsdp", sharding="none", batch={"micro": 8, "seq_len": 128}))
    assert any("target_len" in n for n in unset.notes)


def test_max_micro_batch_is_the_boundary_of_the_verdict() -> None:
    result = plan(gpt2_xl(sharding="full", offload={"optimizer": "cpu", "params": "cpu"}))
    c = result.candidates[0]
    assert c.max_micro_batch > 1
    fits = plan(gpt2_xl(sharding="full", offload={"optimizer": "cpu", "params": "cpu"},
                        batch={"micro": c.max_micro_batch, "seq_len": 128}))
    over = plan(gpt2_xl(sharding="full", offload={"optimizer": "cpu", "params": "cpu"},
                        batch={"micro": c.max_micro_batch + 1, "seq_len": 128}))
    assert fits.candidates[0].fits and not over.candidates[0].fits
