"""Per-device memory of one training config, term by term (pure, torch-free).

A step has two memory peaks, and the estimate is the larger:
- backward: the resident state plus what the forward kept for backward (activations, the loss's
  logits), the communication buckets and the gathered parameters;
- optimizer step: the resident state plus the gradients and their fp32 copies the step reads.

Resident state follows the ZeRO paper and accelerate's precision rules, down to what DeepSpeed
0.19 really allocates (read from its source, checked against measurements): 16-bit working
weights, fp32 master weights and Adam moments partitioned by stage; at the step the 16-bit
gradients are upcast to fp32 (stage 0 also flattens them first). FSDP keeps parameters,
gradients and Adam states in the load dtype (accelerate's FSDP-vs-DeepSpeed guide).

Activations per layer and token are coefficients times the hidden and MLP widths (Korthikanti et
al. 2022, for SDPA attention: no s x s scores, unless the config pins eager attention), with only
each layer's input kept under activation checkpointing. The coefficients are tensor bytes, the same
on any device: they are fitted on measured runs (benchmarks/data/, docs/design.md "Memory planner").
What differs by device is in a DeviceProfile: the CUDA profile's context, communicator and
allocator-slack constants are still provisional (no GPU measurement yet); the CPU profile's are fitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.compile import rules
from orchestrator.plan.size import ModelShape
from orchestrator.spec.models import TrainingJob

GIB = 1 << 30
DS_DEFAULT_REDUCE_BUCKET = int(5e8)  # DeepSpeed defaults (elements)
DS_DEFAULT_PREFETCH_BUCKET = int(5e7)
DS_DEFAULT_MAX_LIVE = int(1e9)
DS_DEFAULT_SUB_GROUP = int(1e9)

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
    """What one process costs beyond its tensors, on one kind of device."""

    name: str
    context_bytes: int  # before any tensor: CUDA context and library workspaces
    comm_bytes: int  # communicator buffers, when world > 1
    slack: float  # allocator fragmentation, on the transient terms
    touched_only: bool  # memory counts once written (host RSS): an unfilled bucket costs its fill
    source: str  # where the constants come from
    # Measured but not attributed to an allocation: bytes per parameter, by config kind ("zero3",
    # "zero3_offload"), fitted as the median residual per parameter of the fit cases.
    unattributed_per_param: dict[str, float] = field(default_factory=dict)


CUDA = DeviceProfile("cuda", context_bytes=int(0.55 * GIB), comm_bytes=int(0.25 * GIB), slack=0.08,
                     touched_only=False, source="provisional: textbook values, not yet fitted on GPU measurements")
CPU = DeviceProfile("cpu", context_bytes=165 << 20, comm_bytes=0, slack=0.0, touched_only=True,
                    source="fitted on benchmarks/data/memory-cpu.jsonl (peak RSS over the pre-model baseline)",
                    unattributed_per_param={"zero3": 2.79, "zero3_offload": 6.32})
PROFILES = {p.name: p for p in (CUDA, CPU)}


@dataclass
class Estimate:
    terms: dict[str, int] = field(default_factory=dict)  # name -> bytes per device, of the peak phase
    host_bytes_per_node: int = 0  # host memory for offloaded state
    peak_phase: str = "backward"  # "backward" or "optimizer_step": which of the two is the peak
    other_phase_bytes: int = 0  # the smaller peak's total, for the curious
    phases: dict[str, dict[str, int]] = field(default_factory=dict)  # both phases, term by term
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.terms.values())


def _per_token_layer(shape: ModelShape, seq: int) -> float:
    a = ACTIVATION
    kv = shape.kv_heads * (shape.hidden // max(1, shape.heads))
    mlp = (a["per_ffn_gated"] if shape.gated_mlp else a["per_ffn"]) * shape.ffn
    scores = a["eager_scores"] * shape.heads * seq if shape.eager_attention else 0.0
    return a["per_hidden"] * shape.hidden + a["per_kv"] * kv + mlp + scores


def activation_bytes(shape: ModelShape, job: TrainingJob, seq: int, target_len: int | None = None) -> tuple[int, int]:
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
        kept = sum(n * b * s * ACTIVATION["checkpointed_input"] * shape.hidden for n, s, _ in groups)
        kept += max(b * s * per for n, s, per in groups if n)  # one layer recomputed at a time
    else:
        kept = sum(n * b * s * per for n, s, per in groups)
    # 16-bit logits are upcast to fp32 for the loss; fp32 logits are not, so they cost the same bytes.
    logits = b * dec_len * shape.vocab * ACTIVATION["logits"]
    return int(kept * scale), int(logits)


def _deepspeed(shape: ModelShape, job: TrainingJob, profile: DeviceProfile, est: Estimate,
               resident: dict[str, int], backward: dict[str, int], step: dict[str, int]) -> None:
    spec = job.spec
    n, g, p = spec.world_size, spec.resources.gpus_per_node, shape.params
    stage = rules.zero_stage(spec)
    mixed = spec.precision.mixed != "no"
    w = 2 if mixed else 4  # working weights and gradients
    opt_shards = n if stage >= 1 else 1
    grad_shards = n if stage >= 2 else 1
    offload_opt = spec.offload.optimizer != "none"
    offload_params = spec.offload.params != "none" and stage == 3
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
        fp32_grads = 0
    else:
        resident["optimizer_states"] = master
    step["gradients"] = w * p // grad_shards
    if fp32_grads:
        step["fp32_gradients"] = fp32_grads
    if stage == 0 and mixed:
        step["flattened_gradients"] = w * p  # stage 0 flattens the 16-bit gradients before the upcast
    ds = spec.deepspeed
    bucket = ds.reduce_bucket_size or DS_DEFAULT_REDUCE_BUCKET
    if profile.touched_only:
        bucket = min(bucket, p)  # allocated whole, but only what gradients fill is ever written
    if stage in (1, 2):
        backward["communication_buckets"] = bucket * w * (2 if ds.overlap_comm else 1)
    if stage == 3:
        live = min(ds.stage3_max_live_parameters or DS_DEFAULT_MAX_LIVE, 2 * shape.largest_layer_params)
        prefetch = min(ds.stage3_prefetch_bucket_size or DS_DEFAULT_PREFETCH_BUCKET, p)
        backward["gathered_parameters"] = (live + prefetch) * w
        backward["communication_buckets"] = bucket * w


def _fsdp(shape: ModelShape, job: TrainingJob, est: Estimate, resident: dict[str, int],
          backward: dict[str, int], step: dict[str, int]) -> None:
    spec = job.spec
    n, g, p = spec.world_size, spec.resources.gpus_per_node, shape.params
    level = spec.sharding
    compute = 2 if spec.precision.mixed != "no" else 4
    pb = 4 if spec.precision.params == "fp32" else 2
    shards = {"full": n, "grad_op": n, "hybrid": g, "none": 1, "optimizer": n}[level]
    offload = spec.offload.params != "none" or spec.offload.optimizer != "none"
    state = pb * p // shards
    if offload:
        est.host_bytes_per_node += 4 * state * g
    resident["parameters"] = 0 if offload else state
    resident["optimizer_states"] = 0 if offload else 2 * state  # Adam m, v in the load dtype (accelerate's guide)
    step["gradients"] = 0 if offload else state
    if level in ("full", "hybrid") or offload:
        backward["gathered_parameters"] = 2 * shape.largest_layer_params * compute  # this unit + the prefetched
    elif level == "grad_op":
        backward["gathered_parameters"] = p * compute  # unsharded from forward until backward
    elif pb != compute:
        backward["gathered_parameters"] = 2 * shape.largest_layer_params * compute  # the per-unit cast


def unattributed_kind(job: TrainingJob) -> str | None:
    spec = job.spec
    if spec.backend == "deepspeed" and rules.zero_stage(spec) == 3:
        return "zero3_offload" if spec.offload.params != "none" else "zero3"
    return None


def estimate(shape: ModelShape, job: TrainingJob, seq_len: int, profile: DeviceProfile = CUDA,
             target_len: int | None = None) -> Estimate:
    spec = job.spec
    est = Estimate()
    resident: dict[str, int] = {}
    backward: dict[str, int] = {}
    step: dict[str, int] = {}
    if spec.backend == "deepspeed":
        _deepspeed(shape, job, profile, est, resident, backward, step)
    else:
        _fsdp(shape, job, est, resident, backward, step)
    activations, logits = activation_bytes(shape, job, seq_len, target_len)
    backward["activations"] = activations
    backward["logits"] = logits
    kind = unattributed_kind(job)
    if kind and profile.unattributed_per_param.get(kind):
        resident["unattributed"] = int(profile.unattributed_per_param[kind] * shape.params)
    fixed = {"context": profile.context_bytes}
    if spec.world_size > 1:
        fixed["communicators"] = profile.comm_bytes
    phases = {}
    for name, dynamic in (("backward", backward), ("optimizer_step", step)):
        terms = {**resident, **dynamic}
        terms["allocator_slack"] = int(profile.slack * sum(dynamic.values()))
        phases[name] = {**terms, **fixed}
    peak = max(phases, key=lambda k: sum(phases[k].values()))
    est.phases = phases
    est.terms = dict(phases[peak])
    est.peak_phase = peak
    est.other_phase_bytes = sum(phases["optimizer_step" if peak == "backward" else "backward"].values())
    return est
