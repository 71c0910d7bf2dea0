"""Per-GPU memory of one training config, term by term (pure, torch-free).

Model states follow the ZeRO paper (16 bytes/param for mixed-precision Adam, partitioned by stage)
and the seeds' precision rules: DeepSpeed always keeps fp32 master weights and Adam states; FSDP
keeps parameters, gradients and optimizer states in the load dtype. Activations follow
Korthikanti et al. 2022 (per layer: 11sbh + 5as^2b attention, MLP from its width), with only
each layer's input kept under activation checkpointing. Buffers: DeepSpeed's buckets at their
configured or default sizes, the gathered units of ZeRO-3/FSDP. Overheads (CUDA context,
allocator slack, NCCL) are constants in OVERHEAD, provisional until fitted on GPU measurements
(benchmarks/data/): docs/design.md, "Memory planner".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.compile import rules
from orchestrator.plan.size import ModelShape
from orchestrator.spec.models import TrainingJob

GIB = 1 << 30
# Provisional constants (not yet fitted on GPU measurements).
OVERHEAD = {
    "cuda_context_bytes": int(0.55 * GIB),  # CUDA context + cuBLAS/cuDNN workspaces of one process
    "nccl_bytes": int(0.25 * GIB),  # NCCL communicators and their buffers, when world > 1
    "allocator_slack": 0.08,  # fragmentation / reserved-but-unallocated, on the dynamic terms
}
DS_DEFAULT_REDUCE_BUCKET = int(5e8)  # DeepSpeed defaults (elements)
DS_DEFAULT_PREFETCH_BUCKET = int(5e7)
DS_DEFAULT_MAX_LIVE = int(1e9)


@dataclass
class Estimate:
    terms: dict[str, int] = field(default_factory=dict)  # name -> bytes per GPU
    host_bytes_per_node: int = 0  # pinned host memory for offloaded state
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.terms.values())


def _activations(shape: ModelShape, job: TrainingJob, seq: int, compute_bytes: int) -> tuple[int, int]:
    """(activation bytes, logits bytes) for one micro-batch on one GPU."""
    spec = job.spec
    b, s, h, a, f = spec.batch.micro, seq, shape.hidden, shape.heads, shape.ffn
    scale = compute_bytes / 2  # the coefficients below are for 2-byte activations
    attention = 11 * s * b * h + 5 * a * s * s * b
    gated = shape.method.startswith("config.json (llama") or "shape guessed" in shape.method
    mlp = 2 * s * b * h + (6 if gated else 4.75) * s * b * f
    per_layer = (attention + mlp + 4 * s * b * h) * scale
    if spec.activation_checkpointing:
        kept = 2 * s * b * h * scale * shape.layers + per_layer  # layer inputs, plus one layer recomputed
    else:
        kept = per_layer * shape.layers
    logits = b * s * shape.vocab * (compute_bytes + 4 + 4)  # logits, their fp32 upcast for the loss, its grad
    return int(kept), int(logits)


def estimate(shape: ModelShape, job: TrainingJob, seq_len: int) -> Estimate:
    spec = job.spec
    res = spec.resources
    n, g = spec.world_size, res.gpus_per_node
    p = shape.params
    mixed = spec.precision.mixed != "no"
    compute_bytes = 2 if mixed else 4
    est = Estimate()
    t = est.terms
    if spec.backend == "deepspeed":
        stage = rules.zero_stage(spec)
        hybrid = spec.sharding == "hybrid"
        master = 12 if mixed else 8  # fp32 master + Adam m, v; without mixed precision the params are the master
        weights = 2 if mixed else 4
        opt_shards = n if stage >= 1 else 1
        offload_opt = spec.offload.optimizer != "none"
        offload_params = spec.offload.params != "none"
        if offload_params and stage == 3:
            t["parameters"] = 0
        elif stage == 3:
            t["parameters"] = weights * p // n + (weights * p // g if hybrid else 0)  # hpZ: a copy within the node
        else:
            t["parameters"] = weights * p
        t["gradients"] = weights * p // (n if stage >= 2 else 1)
        t["optimizer_states"] = 0 if offload_opt else master * p // opt_shards
        if offload_opt:
            est.host_bytes_per_node += master * p // opt_shards * g
        if offload_params:
            est.host_bytes_per_node += weights * p // n * g
        ds = spec.deepspeed
        reduce_bucket = min(ds.reduce_bucket_size or DS_DEFAULT_REDUCE_BUCKET, p)
        t["communication_buckets"] = reduce_bucket * compute_bytes * (2 if ds.overlap_comm else 1)
        if stage == 3:
            live = min(ds.stage3_max_live_parameters or DS_DEFAULT_MAX_LIVE, 2 * shape.largest_layer_params)
            prefetch = min(ds.stage3_prefetch_bucket_size or DS_DEFAULT_PREFETCH_BUCKET, p)
            t["gathered_parameters"] = (live + prefetch) * weights
    else:
        level = spec.sharding
        pb = 4 if spec.precision.params == "fp32" else 2
        shards = {"full": n, "grad_op": n, "hybrid": g, "none": 1, "optimizer": n}[level]
        offload = spec.offload.params != "none" or spec.offload.optimizer != "none"
        state = pb * p // shards
        t["parameters"] = 0 if offload else state
        t["gradients"] = 0 if offload else state
        t["optimizer_states"] = 0 if offload else 2 * state  # Adam m, v in the load dtype (the seeds)
        if offload:
            est.host_bytes_per_node += 4 * state * g
        if level in ("full", "hybrid") or offload:
            t["gathered_parameters"] = 2 * shape.largest_layer_params * compute_bytes  # this unit + the prefetched
        elif level == "grad_op":
            t["gathered_parameters"] = p * compute_bytes  # unsharded from forward until backward
        elif mixed and pb != compute_bytes:
            t["gathered_parameters"] = 2 * shape.largest_layer_params * compute_bytes  # the per-unit cast
    activations, logits = _activations(shape, job, seq_len, compute_bytes)
    t["activations"] = activations
    t["logits"] = logits
    dynamic = activations + logits + t.get("communication_buckets", 0) + t.get("gathered_parameters", 0)
    t["allocator_slack"] = int(OVERHEAD["allocator_slack"] * dynamic)
    t["cuda_context"] = OVERHEAD["cuda_context_bytes"]
    if n > 1:
        t["nccl"] = OVERHEAD["nccl_bytes"]
    return est
