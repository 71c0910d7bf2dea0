"""Per-device memory of one training config, term by term (pure, torch-free).

A step passes through several peaks, and the estimate is the largest (`Estimate.peak_phase`):
- backward: the resident state, what the forward kept for backward (activations), the loss's
  logits at their largest (the backward of log-softmax) and the parameters gathered at that moment;
- gradient_reduction (DeepSpeed ZeRO-1/2): once the first gradient is ready, the logits are gone
  and the reduction buckets are allocated;
- optimizer_step: the resident state plus the gradients, their flattened and fp32 copies and the
  optimizer's temporaries, at the worst moment of the step.

Resident state is what DeepSpeed 0.19 and FSDP really allocate (read in their source, checked
against measurements, docs/design.md "Memory planner"): 16-bit working weights, fp32 master
weights and Adam moments partitioned by stage; ZeRO-3 also keeps a 16-bit gradient partition and
its reduction bucket for the whole run. At the step DeepSpeed flattens the gradients and upcasts
them to fp32, and torch's Adam materialises sqrt(v) before the update (4 bytes per parameter it
steps, at once where it runs the multi-tensor kernels). FSDP keeps parameters, gradients and Adam
states in the load dtype (accelerate's FSDP-vs-DeepSpeed guide).

Activations per layer and token are coefficients times the hidden and MLP widths (Korthikanti et
al. 2022, for SDPA attention: no s x s scores, unless the config pins eager attention), with only
each layer's input kept under activation checkpointing. The coefficients are tensor bytes, fitted
on CPU runs (benchmarks/data/memory-cpu.jsonl); what differs by device is in a DeviceProfile: the
context outside the allocator, how the device's kernels scale the activations and logits, and
what the allocator caches on top (the CUDA profile is fitted on benchmarks/data/memory-h100.jsonl).

Fragmentation: when the caching allocator raises an out-of-memory error it has already given back every whole
cached segment; what it still reserves but has not allocated is free space in segments split from larger blocks
partly in use (c10/cuda/CUDACachingAllocator.cpp), which no allocation bigger than those pieces can use. Without
expandable segments that stranded memory counts toward the verdict (`Estimate.fragmentation_bytes`): a share of
the step's largest transient, the block whose space later allocations split. With
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (shardctl's default for CUDA attempts) the allocator maps pages
into one growing segment, so a split does not strand a whole block, and the term is the profile's
`fragmentation_per_transient_expandable` (0: nothing measured with them yet).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.compile import rules
from orchestrator.compile.rungs import expandable_segments as job_expandable_segments
from orchestrator.plan.size import ModelShape
from orchestrator.spec.models import TrainingJob

GIB = 1 << 30
MIB = 1 << 20
DS_DEFAULT_REDUCE_BUCKET = int(5e8)  # DeepSpeed defaults (elements)
DS_DEFAULT_MAX_LIVE = int(1e9)
DS_DEFAULT_MAX_REUSE = int(1e9)  # stage3_max_reuse_distance: a parameter reused within this many is not released
DS_DEFAULT_SUB_GROUP = int(1e9)  # sub_group_size: ZeRO-3 steps the optimizer one sub-group at a time

# Bytes kept for backward per token and layer, per unit of width, for 16-bit compute; fp32 compute
# doubles them. Derived from HF Llama's saved tensors (28, 4, 8, 4, 5, 2, 10), then scaled by the fit
# on benchmarks/data/memory-cpu.jsonl (`benchmarks/memory_report.py --fit`: activations x0.95, logits x0.9).
ACTIVATION = {
    "per_hidden": 26.6,  # RMSNorm's fp32 internals, the q/k/v/o inputs and outputs, SDPA's output
    "per_kv": 3.8,  # k and v, as wide as the kv heads (grouped-query attention)
    "per_ffn_gated": 7.6,  # gate, act(gate), up, their product
    "per_ffn": 3.8,  # fc1 output, act(fc1)
    "eager_scores": 4.75,  # per head and key: scores, softmax, dropout mask (eager attention only)
    "checkpointed_input": 1.9,  # per hidden: the layer input kept under activation checkpointing
    "logits": 9.0,  # per vocab entry: 16-bit logits, their fp32 upcast, the loss's log-softmax
}


@dataclass(frozen=True)
class DeviceProfile:
    """What one process costs beyond the tensors it names, on one kind of device."""

    name: str
    context_bytes: int  # before any tensor: CUDA context and library workspaces (outside the allocator)
    comm_bytes: int  # communicator buffers, when world > 1
    touched_only: bool  # memory counts once written (host RSS): an unfilled bucket costs its fill
    source: str  # where the constants come from
    activation_scale: float = 1.0  # the device's kernels against the activation coefficients
    logits_scale: float = 1.0  # ... and against the logits coefficient
    foreach_optimizer: bool = False  # torch's Adam updates all tensors at once (CUDA) or one at a time
    # What the caching allocator holds on top of the live tensors at its high-water mark (reserved minus
    # allocated): cache_bytes plus cache_per_transient times the largest transient of the step. Not part
    # of the verdict: the allocator gives whole cached blocks back before it raises an out-of-memory error.
    cache_bytes: int = 0
    cache_per_transient: float = 0.0
    # What it cannot give back: reserved but unallocated space in blocks split from larger blocks partly in use
    # (fragmentation), as a share of the largest transient of the step. Part of the verdict. Without expandable
    # segments (PyTorch's default allocator), and with them (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True).
    fragmentation_per_transient: float = 0.0
    fragmentation_per_transient_expandable: float = 0.0
    # Measured but not attributed to an allocation: bytes per parameter, by config kind ("zero3",
    # "zero3_offload"), fitted as the median residual per parameter of the fit cases.
    unattributed_per_param: dict[str, float] = field(default_factory=dict)


# Fitted on the fit split of benchmarks/data/memory-h100.jsonl (one H100 80GB; `benchmarks/memory_report.py --fit`):
# activations x0.90 and logits x1.82 of the coefficients above, 1.295 GiB outside the allocator (measured: the
# out-of-memory messages) plus 784 MiB of per-process allocations no term names, and the allocator's cache.
# Fragmentation without expandable segments: 0.17 of the largest transient, from the fit split's out-of-memory case
# (2.7B FSDP, micro-batch 6: 3.41 GiB reserved but unallocated when a 162 MiB allocation failed, against a 20.13
# GiB transient). With expandable segments none has been measured (all 12 H100 runs went without them): 0.
CUDA = DeviceProfile("cuda", context_bytes=int(1.295 * GIB) + 784 * MIB, comm_bytes=int(0.25 * GIB),
                     touched_only=False,
                     source="fitted on H100 80GB measurements (benchmarks/data/memory-h100.jsonl); "
                            "communicator buffers (more than one GPU) not yet measured",
                     activation_scale=0.90, logits_scale=1.82, foreach_optimizer=True,
                     cache_bytes=1152 * MIB, cache_per_transient=1.24, fragmentation_per_transient=0.17,
                     fragmentation_per_transient_expandable=0.0)
# Refitted on benchmarks/data/memory-cpu.jsonl once ZeRO-3's gradient partitions and gathered parameters were
# named: activations x1.06, logits x1.26, a 195 MiB per-process constant; with parameter offload ZeRO-3 still
# holds 5.23 bytes per parameter more than the named allocations.
CPU = DeviceProfile("cpu", context_bytes=195 * MIB, comm_bytes=0, touched_only=True,
                    source="fitted on benchmarks/data/memory-cpu.jsonl (peak RSS over the pre-model baseline)",
                    activation_scale=1.06, logits_scale=1.26, unattributed_per_param={"zero3_offload": 5.23})
PHASES = ("backward", "gradient_reduction", "optimizer_step")


@dataclass
class Estimate:
    terms: dict[str, int] = field(default_factory=dict)  # name -> bytes per device, of the peak phase
    host_bytes_per_node: int = 0  # host memory for offloaded state
    peak_phase: str = "backward"  # one of PHASES: which moment of the step is the peak
    other_phase_bytes: int = 0  # the largest of the other phases' totals, for the curious
    phases: dict[str, dict[str, int]] = field(default_factory=dict)  # every phase, term by term
    largest_transient: int = 0  # the biggest allocation made and freed within a step (bytes)
    cache_bytes: int = 0  # what the caching allocator is predicted to hold on top, when nothing presses it
    expandable_segments: bool = True  # the allocator setting assumed (PYTORCH_CUDA_ALLOC_CONF)
    fragmentation_bytes: int = 0  # stranded by splitting under that setting: counted in the verdict
    fragmentation_bytes_without_expandable: int = 0  # the same without expandable segments
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    @property
    def verdict_bytes(self) -> int:
        """What the verdict weighs against the GPU: the allocated peak plus what fragmentation strands."""
        return self.total + self.fragmentation_bytes

    @property
    def verdict_bytes_without_expandable(self) -> int:
        return self.total + self.fragmentation_bytes_without_expandable

    @property
    def reserved_total(self) -> int:
        """What the device shows in use at the peak if the allocator keeps its cache (no memory pressure)."""
        return self.total + self.cache_bytes


def _per_token_layer(shape: ModelShape, seq: int) -> float:
    a = ACTIVATION
    kv = shape.kv_heads * (shape.hidden // max(1, shape.heads))
    mlp = (a["per_ffn_gated"] if shape.gated_mlp else a["per_ffn"]) * shape.ffn
    scores = a["eager_scores"] * shape.heads * seq if shape.eager_attention else 0.0
    return a["per_hidden"] * shape.hidden + a["per_kv"] * kv + mlp + scores


def activation_bytes(shape: ModelShape, job: TrainingJob, seq: int, target_len: int | None = None,
                     profile: DeviceProfile | None = None) -> tuple[int, int]:
    """(activations, logits) of one micro-batch. Encoder-decoder models: the encoder layers see `seq`
    tokens, the decoder layers (and the logits) `target_len`; cross-attention counts as a second
    attention block in the decoder."""
    spec = job.spec
    b = spec.batch.micro
    scale = 1.0 if spec.precision.mixed != "no" else 2.0
    enc = shape.encoder_layers
    dec = shape.layers - enc
    dec_len = target_len or seq
    cross = ACTIVATION["per_hidden"] * shape.hidden / 2 if enc else 0.0  # decoder's cross-attention
    groups = [(enc, seq, _per_token_layer(shape, seq)), (dec, dec_len, _per_token_layer(shape, dec_len) + cross)]
    if spec.activation_checkpointing:
        kept_input = ACTIVATION["checkpointed_input"] * shape.hidden
        kept = sum(n * b * s * kept_input for n, s, _ in groups)
        # One layer recomputed at a time; the recomputation reads its kept input (already counted), not a copy.
        kept += max(b * s * max(0.0, per - kept_input) for n, s, per in groups if n)
    else:
        kept = sum(n * b * s * per for n, s, per in groups)
    # 16-bit logits are upcast to fp32 for the loss; fp32 logits are not, so they cost the same bytes.
    logits = b * dec_len * shape.vocab * ACTIVATION["logits"]
    if profile is not None:
        kept, logits = kept * profile.activation_scale, logits * profile.logits_scale
    return int(kept * scale), int(logits)


def _deepspeed(shape: ModelShape, job: TrainingJob, profile: DeviceProfile, est: Estimate,
               resident: dict[str, int], phases: dict[str, dict[str, int]]) -> None:
    spec = job.spec
    n, g, p = spec.world_size, spec.resources.gpus_per_node, shape.params
    stage = rules.zero_stage(spec)
    mixed = spec.precision.mixed != "no"
    w = 2 if mixed else 4  # working weights and gradients
    opt_shards = n if stage >= 1 else 1
    grad_shards = n if stage >= 2 else 1
    offload_opt = spec.offload.optimizer != "none"
    offload_params = spec.offload.params != "none" and stage == 3
    ds = spec.deepspeed
    bucket = ds.reduce_bucket_size or DS_DEFAULT_REDUCE_BUCKET
    if profile.touched_only:
        bucket = min(bucket, p)  # allocated whole, but only what gradients fill is ever written
    if offload_params:
        resident["parameters"] = 0
        est.host_bytes_per_node += w * p // n * g
    elif stage == 3:
        resident["parameters"] = w * p // n + (w * p // g if spec.sharding == "hybrid" else 0)  # hpZ: node copy
    else:
        resident["parameters"] = w * p
    master = (12 if mixed else 8) * p // opt_shards  # fp32 master (mixed only) + Adam m, v
    fp32_grads = 4 * p // opt_shards if mixed else 0  # the step reads fp32 gradients
    if offload_opt:
        resident["optimizer_states"] = 0
        est.host_bytes_per_node += (master + fp32_grads) * g
    else:
        resident["optimizer_states"] = master
    backward, step = phases["backward"], phases["optimizer_step"]
    if stage == 3:
        # stage3.py: the 16-bit gradient partitions are one flat buffer for the whole run (pinned host memory
        # when the optimizer is offloaded), and so is the reduction bucket (contiguous_gradients).
        if offload_opt:
            est.host_bytes_per_node += w * p // n * g
        else:
            resident["gradient_partitions"] = w * p // n
        resident["communication_buckets"] = bucket * w
        # partitioned_param_coordinator.py: a parameter used again within stage3_max_reuse_distance is not
        # released, so the last layers of the forward are still gathered when the backward starts.
        live = ds.stage3_max_live_parameters or DS_DEFAULT_MAX_LIVE
        backward["gathered_parameters"] = min(p, DS_DEFAULT_MAX_REUSE // 2, live) * w
        if not offload_opt:
            # The step runs one sub-group at a time: its gradients flattened to fp32, then Adam's sqrt(v).
            sub = min(-(-p // n), DS_DEFAULT_SUB_GROUP)
            step["fp32_gradients"] = 4 * sub
            step["optimizer_temporaries"] = 4 * sub
        return
    if stage == 0:
        step["gradients"] = w * p
        if mixed:
            step["flattened_gradients"] = w * p  # stage 0 flattens the 16-bit gradients before the upcast
            step["fp32_gradients"] = fp32_grads
    elif offload_opt:
        step["gradients"] = w * p // grad_shards
    else:
        # stage_1_and_2.py step(): the gradients as backward left them (stage 1: all of them, until those of
        # other partitions are freed), then the partition flattened and upcast (the Adam update that follows
        # holds as much: fp32 gradients and sqrt(v)).
        moments: list[dict[str, int]] = [{"gradients": w * p // grad_shards},
                                         {"gradients": w * p // opt_shards,
                                          "flattened_gradients": w * p // opt_shards, "fp32_gradients": fp32_grads}]
        worst: dict[str, int] = max(moments, key=lambda m: sum(m.values()))
        step.update(worst)
    if stage in (1, 2):
        # The buckets are allocated at the first gradient hook, once the logits' backward is over.
        phases["gradient_reduction"]["communication_buckets"] = bucket * w * (2 if ds.overlap_comm else 1)


def _fsdp(shape: ModelShape, job: TrainingJob, profile: DeviceProfile, est: Estimate, resident: dict[str, int],
          phases: dict[str, dict[str, int]]) -> None:
    spec = job.spec
    n, g, p = spec.world_size, spec.resources.gpus_per_node, shape.params
    # On one process FSDP runs NO_SHARD whatever was asked (torch/distributed/fsdp/_init_utils.py).
    level = "none" if n == 1 else spec.sharding
    pb = 4 if spec.precision.params == "fp32" else 2
    # Without mixed precision FSDP computes in the load dtype (bf16 params: accelerate's memory-constrained mode).
    compute = 2 if spec.precision.mixed != "no" else pb
    shards = {"full": n, "grad_op": n, "hybrid": g, "none": 1, "optimizer": n}[level]
    offload = spec.offload.params != "none" or spec.offload.optimizer != "none"
    state = pb * p // shards
    if offload:
        est.host_bytes_per_node += 4 * state * g
    resident["parameters"] = 0 if offload else state
    resident["optimizer_states"] = 0 if offload else 2 * state  # Adam m, v in the load dtype (accelerate's guide)
    backward, step = phases["backward"], phases["optimizer_step"]
    if not offload:
        step["gradients"] = state
        # torch's multi-tensor Adam takes sqrt(v) of every parameter at once; one at a time elsewhere.
        largest = pb * min(p, shape.largest_layer_params) // shards
        step["optimizer_temporaries"] = state if profile.foreach_optimizer else largest
    two_units = min(p, 2 * shape.largest_layer_params)  # never more than the whole model
    if level in ("full", "hybrid") or offload:
        backward["gathered_parameters"] = two_units * compute  # this unit + the prefetched
    elif level == "grad_op" and shards > 1:
        backward["gathered_parameters"] = p * compute  # unsharded from forward until backward
    elif pb != compute:
        backward["gathered_parameters"] = two_units * compute  # the per-unit cast


def unattributed_kind(job: TrainingJob) -> str | None:
    spec = job.spec
    if spec.backend == "deepspeed" and rules.zero_stage(spec) == 3:
        return "zero3_offload" if spec.offload.params != "none" else "zero3"
    return None


def estimate(shape: ModelShape, job: TrainingJob, seq_len: int, profile: DeviceProfile = CUDA,
             target_len: int | None = None, expandable_segments: bool | None = None) -> Estimate:
    """`expandable_segments`: the allocator setting to assume; None: the job's own (on unless its entrypoint.env
    sets PYTORCH_CUDA_ALLOC_CONF without them)."""
    spec = job.spec
    if expandable_segments is None:
        expandable_segments = job_expandable_segments(job)
    est = Estimate(expandable_segments=expandable_segments)
    resident: dict[str, int] = {}
    dynamic: dict[str, dict[str, int]] = {name: {} for name in PHASES}
    if spec.backend == "deepspeed":
        _deepspeed(shape, job, profile, est, resident, dynamic)
    else:
        _fsdp(shape, job, profile, est, resident, dynamic)
    activations, logits = activation_bytes(shape, job, seq_len, target_len, profile)
    dynamic["backward"]["activations"] = activations
    dynamic["backward"]["logits"] = logits
    if dynamic["gradient_reduction"]:
        dynamic["gradient_reduction"] = {"activations": activations, **dynamic["gradient_reduction"]}
    kind = unattributed_kind(job)
    if kind and profile.unattributed_per_param.get(kind):
        resident["unattributed"] = int(profile.unattributed_per_param[kind] * shape.params)
    fixed = {"context": profile.context_bytes}
    if spec.world_size > 1:
        fixed["communicators"] = profile.comm_bytes
    phases = {name: {**resident, **terms, **fixed} for name, terms in dynamic.items()
              if terms or name == "optimizer_step"}
    peak = max(phases, key=lambda k: sum(phases[k].values()))
    est.phases = phases
    est.terms = dict(phases[peak])
    est.peak_phase = peak
    est.other_phase_bytes = max((sum(t.values()) for k, t in phases.items() if k != peak), default=0)
    # The biggest allocation made and freed within a step: the fp32 logits of the loss, or the step's burst.
    fp32_logits = 4 * spec.batch.micro * (target_len or seq_len) * shape.vocab
    est.largest_transient = max(fp32_logits, sum(dynamic["optimizer_step"].values()))
    est.cache_bytes = int(profile.cache_bytes + profile.cache_per_transient * est.largest_transient)
    est.fragmentation_bytes_without_expandable = int(profile.fragmentation_per_transient * est.largest_transient)
    est.fragmentation_bytes = (int(profile.fragmentation_per_transient_expandable * est.largest_transient)
                               if expandable_segments else est.fragmentation_bytes_without_expandable)
    return est
