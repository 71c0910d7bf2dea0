"""The planner on paper at 8 and 64 GPUs, next to the ZeRO paper's model-state figures (Rajbhandari et al.,
"ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", 2020, Figure 1: 7.5B parameters,
64 GPUs, Adam in mixed precision, 2 + 2 + 12 bytes per parameter: 120 GB per GPU for plain data
parallelism, 31.4 GB with optimizer-state partitioning, 16.6 GB adding gradient partitioning, 1.9 GB
with all three).

    python benchmarks/scale_out.py             # markdown table (docs/benchmarks.md)

Same fitted terms as every plan (the CUDA profile of orchestrator/plan/memory.py), DeepSpeed ZeRO-0..3
and FSDP FULL_SHARD, bf16, a 7.5B Llama-like model (shape guessed from the count), micro-batch 1,
2,048 tokens, no activation checkpointing, 8 GPUs a node. Columns:
- model states: the planner's parameters + gradients + optimizer states, the paper's three terms;
- state peak: the largest phase without activations, logits, context and communicators: model states
  plus what DeepSpeed (or FSDP) really allocates around them (`extras`, by term);
- per GPU: the whole estimate (activations, logits, context included), what the verdict uses.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.plan import memory  # noqa: E402
from orchestrator.plan.size import from_parameters  # noqa: E402
from orchestrator.spec.models import TrainingJob  # noqa: E402

PARAMS = 7.5e9
PAPER_64 = {"none": 120.0, "optimizer": 31.4, "grad_op": 16.6, "full": 1.9}  # GB per GPU, Figure 1
STATES = ("parameters", "gradients", "gradient_partitions", "optimizer_states")
NOT_STATE = ("activations", "logits", "context", "communicators")
CONFIGS = [("deepspeed", "none"), ("deepspeed", "optimizer"), ("deepspeed", "grad_op"), ("deepspeed", "full"),
           ("fsdp", "full")]


def paper(sharding: str, gpus: int, params: float = PARAMS) -> float:
    """The paper's formula (K = 12): bytes per parameter by what is partitioned, in GB."""
    per = {"none": 16, "optimizer": 4 + 12 / gpus, "grad_op": 2 + 14 / gpus, "full": 16 / gpus}[sharding]
    return per * params / 1e9


def job(backend: str, sharding: str, gpus: int) -> TrainingJob:
    return TrainingJob.model_validate({
        "apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "zero-paper"},
        "spec": {"entrypoint": {"script": "train.py"}, "model": {"name_or_path": "7.5b", "parameters": PARAMS},
                 "backend": backend, "sharding": sharding, "precision": {"mixed": "bf16", "params": "fp32"},
                 "batch": {"micro": 1, "seq_len": 2048},
                 "resources": {"nodes": max(1, gpus // 8), "gpus_per_node": min(8, gpus)}}})


def row(backend: str, sharding: str, gpus: int) -> dict[str, Any]:
    shape = from_parameters(PARAMS)
    est = memory.estimate(shape, job(backend, sharding, gpus), 2048)
    step = est.phases["optimizer_step"]
    states = sum(step.get(k, 0) for k in STATES)
    peaks = {name: {k: v for k, v in terms.items() if k not in NOT_STATE} for name, terms in est.phases.items()}
    phase = max(peaks, key=lambda k: sum(peaks[k].values()))
    extras = {k: v for k, v in peaks[phase].items() if k not in STATES}
    return {"backend": backend, "sharding": sharding, "gpus": gpus, "paper_gb": round(paper(sharding, gpus), 2),
            "model_states_gb": round(states / 1e9, 2), "state_peak_gb": round(sum(peaks[phase].values()) / 1e9, 2),
            "state_peak_phase": phase, "extras_gb": {k: round(v / 1e9, 2) for k, v in extras.items()},
            "per_gpu_gb": round(est.total / 1e9, 2), "peak_phase": est.peak_phase}


def rows() -> list[dict[str, Any]]:
    return [row(b, s, g) for g in (8, 64) for b, s in CONFIGS]


def main() -> None:
    label = {"none": "plain data parallel (ZeRO-0)", "optimizer": "ZeRO-1: optimizer states",
             "grad_op": "ZeRO-2: + gradients", "full": "ZeRO-3: + parameters"}
    print("| GPUs | config | paper | planner: model states | state peak | what else, GB | per GPU (phase) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows():
        name = label[r["sharding"]] if r["backend"] == "deepspeed" else "FSDP FULL_SHARD"
        extras = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r["extras_gb"].items()) or "none"
        print(f"| {r['gpus']} | {name} | {r['paper_gb']} | {r['model_states_gb']} | {r['state_peak_gb']} "
              f"({r['state_peak_phase'].replace('_', ' ')}) | {extras} | {r['per_gpu_gb']} "
              f"({r['peak_phase'].replace('_', ' ')}) |")


if __name__ == "__main__":
    main()
