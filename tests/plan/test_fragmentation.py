"""Fragmentation in the verdict: without expandable segments the allocator strands part of what it reserves (blocks
split from larger blocks partly in use, which it cannot give back before raising), so the verdict counts it; with
them (shardctl's default for CUDA attempts) it does not. The setting comes from an argument or the job's
PYTORCH_CUDA_ALLOC_CONF, and the plan's JSON says which it assumed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from orchestrator.compile.rungs import ALLOC_CONF
from orchestrator.plan.memory import CUDA, estimate
from orchestrator.plan.planner import MARGIN, max_micro_batch, plan, predicts_fit, within
from orchestrator.plan.report import plan_text
from orchestrator.plan.size import model_shape
from tests.helpers import job

ROOT = Path(__file__).resolve().parents[2]
LLAMA_13B = str(ROOT / "benchmarks" / "data" / "models" / "llama-1.3b")


def zero2(micro: int = 10, env: dict[str, str] | None = None, **spec) -> object:
    """1.35B ZeRO-2 without activation checkpointing on one H100 (79.18 GiB, as torch reports it): at micro-batch
    10 its allocated peak is under the margin, and with the fragmentation term over it."""
    base = {"model": {"name_or_path": LLAMA_13B}, "backend": "deepspeed", "sharding": "grad_op",
            "precision": {"mixed": "bf16", "params": "fp32"}, "batch": {"micro": micro, "seq_len": 2048},
            "resources": {"nodes": 1, "gpus_per_node": 1, "gpu_memory": "79.18GiB"}}
    if env is not None:
        base["entrypoint"] = {"script": "train.py", "env": env}
    base.update(spec)
    return job(**base)


def test_the_fragmentation_term_is_a_share_of_the_largest_transient_and_zero_with_expandable_segments() -> None:
    shape = model_shape(LLAMA_13B, None)
    plain = estimate(shape, zero2(), 2048, expandable_segments=False)
    expandable = estimate(shape, zero2(), 2048, expandable_segments=True)
    assert plain.fragmentation_bytes == int(CUDA.fragmentation_per_transient * plain.largest_transient) > 0
    assert plain.verdict_bytes == plain.total + plain.fragmentation_bytes
    assert expandable.fragmentation_bytes == 0 and expandable.verdict_bytes == expandable.total
    # Either way the estimate says what the other setting would strand.
    assert expandable.fragmentation_bytes_without_expandable == plain.fragmentation_bytes
    assert plain.total == expandable.total and plain.terms == expandable.terms


def test_zero2_without_checkpointing_near_the_limit_does_not_fit_without_expandable_segments() -> None:
    gpu = int(79.18 * (1 << 30))
    est = estimate(model_shape(LLAMA_13B, None), zero2(), 2048, expandable_segments=False)
    assert within(est.total, gpu) and not within(est.verdict_bytes, gpu)  # allocated alone would call it a fit
    assert plan(zero2()).candidates[0].fits
    assert not plan(zero2(), expandable_segments=False).candidates[0].fits


def test_the_allocator_setting_defaults_to_expandable_segments_and_follows_the_jobs_env() -> None:
    default = plan(zero2())
    assert default.expandable_segments and default.allocator_source == "default"
    off = plan(zero2(env={ALLOC_CONF: "max_split_size_mb:128"}))
    assert not off.expandable_segments
    assert off.allocator_source == f"spec.entrypoint.env {ALLOC_CONF}=max_split_size_mb:128"
    assert not off.candidates[0].fits
    on = plan(zero2(env={ALLOC_CONF: "expandable_segments:True"}))
    assert on.expandable_segments and on.candidates[0].fits
    assert plan(zero2(env={ALLOC_CONF: "max_split_size_mb:128"}), expandable_segments=True).candidates[0].fits


def test_the_plan_shows_the_verdict_without_expandable_segments_where_it_differs() -> None:
    result = plan(zero2())
    spec = result.candidates[0]
    assert spec.fits and spec.fits_without_expandable is False and not spec.verdict_without_expandable
    assert any("expandable_segments" in n for n in result.notes)
    text = " ".join(plan_text(result, width=160).split())  # rich wraps long lines
    assert "allocator: expandable segments (shardctl's default for CUDA attempts)" in text
    assert "fits*" in text and "predicted not to without them" in text
    far = plan(zero2(micro=1))  # far under the limit: both verdicts agree, nothing starred
    assert all(c.fits_without_expandable is None for c in far.candidates)
    assert "fits*" not in plan_text(far, width=160)


def test_the_fallback_predicate_and_max_micro_batch_use_the_jobs_allocator_setting() -> None:
    shape, gpu = model_shape(LLAMA_13B, None), int(79.18 * (1 << 30))
    assert predicts_fit(zero2(), shape, gpu, 2048)
    assert not predicts_fit(zero2(env={ALLOC_CONF: "max_split_size_mb:128"}), shape, gpu, 2048)
    with_them = max_micro_batch(zero2(), shape, gpu, 2048)
    without = max_micro_batch(zero2(), shape, gpu, 2048, expandable_segments=False)
    assert (with_them, without) == (10, 9)
    assert plan(zero2()).candidates[0].max_micro_batch == with_them
    assert plan(zero2(), expandable_segments=False).candidates[0].max_micro_batch == without


def test_plan_json_adds_the_fragmentation_term_and_the_allocator_setting() -> None:
    out = subprocess.run([sys.executable, "-m", "orchestrator", "plan", "--json", "/dev/stdin"],
                         input=json.dumps(zero2().model_dump(mode="json", by_alias=True)),
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["format"] == 1 and data["margin"] == MARGIN
    assert data["allocator"] == {"expandable_segments": True, "source": "default"}
    first = data["candidates"][0]
    # The keys format 1 had keep their meaning: the estimate is the allocated peak, its breakdown sums to it.
    assert sum(first["breakdown"].values()) == first["estimated_peak_bytes_per_gpu"]
    assert first["verdict"] == "fits" and first["fragmentation_bytes"] == 0
    assert first["fragmentation_bytes_without_expandable_segments"] > 0
    assert first["verdict_without_expandable_segments"] == "does not fit"
    for c in data["candidates"]:
        assert isinstance(c["fragmentation_bytes"], int) and c["verdict_without_expandable_segments"] in (
            "fits", "does not fit")
