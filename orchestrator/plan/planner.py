"""Which config to start from: the spec as written, the fallback ladder walked from it, and their
neighbours, each estimated (plan/memory.py), judged against the GPU with a safety margin, and
ranked by expected slowdown. The cheapest config predicted to fit is chosen. Pure and torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.compile import rules
from orchestrator.compile.rungs import ALLOC_CONF, RUNG_FUNCTIONS, config_key
from orchestrator.compile.rungs import expandable_segments as job_expandable_segments
from orchestrator.compile.rungs import ladder as ladder_of
from orchestrator.plan.memory import CUDA, Estimate, estimate
from orchestrator.plan.size import ModelShape, model_shape
from orchestrator.spec.models import TrainingJob
from orchestrator.spec.quantity import parse_bytes
from orchestrator.spec.states import FailureKind

# Keep this share of the GPU free. From the measured error (benchmarks/memory_report.py, margin()): on the H100
# 4.3% of the GPU stayed cached and could not be given back when an allocation failed, and the worst
# under-estimate of a measured case is 2.0%; 1 - (1 - 0.043) / (1 + 0.020) = 6.1%, rounded up. Kept whatever the
# allocator setting: with expandable segments no run has been measured, so the share the allocator kept at an OOM
# stays the allowance for its slack. Without them the verdict also counts the estimate's fragmentation term
# (memory.py), which for that OOM case is the same 3.41 GiB: counted twice there, on the safe side.
MARGIN = 0.07
DEFAULT_SEQ_LEN = 2048
MAX_MICRO_BATCH = 1 << 16  # the search for the largest micro-batch that fits stops here
FORMAT = 1
# Relative step time against the plain config (provisional, to be fitted with the step times measured
# alongside memory): recomputation costs about one more forward; offload is bound by PCIe.
COST = {"activation_checkpointing": 1.33, "offload_optimizer": 1.6, "offload_params": 2.5, "nvme": 4.0,
        "full": 1.1, "hybrid": 1.05, "grad_op": 1.03, "optimizer": 1.0, "none": 1.0, "halved_micro_batch": 1.1}
_PROBE = FailureKind.CUDA_OOM  # plan as the fallback would move after a CUDA OOM


@dataclass
class Candidate:
    job: TrainingJob
    origin: str  # "spec", or the rung that produced it
    estimate: Estimate
    fits: bool
    cost: float
    max_micro_batch: int = 0  # the largest micro-batch this config is predicted to fit (0: none)
    fits_without_expandable: bool | None = None  # the verdict without expandable segments (None: same as fits)

    @property
    def verdict_without_expandable(self) -> bool:
        return self.fits if self.fits_without_expandable is None else self.fits_without_expandable

    def as_json(self) -> dict[str, Any]:
        s = self.job.spec
        return {
            "origin": self.origin, "backend": s.backend, "sharding": s.sharding,
            "zero_stage": rules.zero_stage(s) if s.backend == "deepspeed" else None,
            "offload": {"optimizer": s.offload.optimizer, "params": s.offload.params},
            "micro_batch": s.batch.micro, "grad_accum": rules.grad_accum(s),
            "activation_checkpointing": s.activation_checkpointing,
            "estimated_peak_bytes_per_gpu": self.estimate.total, "breakdown": dict(self.estimate.terms),
            "host_bytes_per_node": self.estimate.host_bytes_per_node, "peak_phase": self.estimate.peak_phase,
            "allocator_cache_bytes": self.estimate.cache_bytes,
            "fragmentation_bytes": self.estimate.fragmentation_bytes,
            "fragmentation_bytes_without_expandable_segments": self.estimate.fragmentation_bytes_without_expandable,
            "max_micro_batch": self.max_micro_batch,
            "verdict": "fits" if self.fits else "does not fit", "relative_cost": round(self.cost, 2),
            "verdict_without_expandable_segments": "fits" if self.verdict_without_expandable else "does not fit",
        }


@dataclass
class Plan:
    shape: ModelShape
    gpu_memory: int
    seq_len: int
    target_len: int | None = None
    candidates: list[Candidate] = field(default_factory=list)
    chosen: int | None = None
    notes: list[str] = field(default_factory=list)
    expandable_segments: bool = True  # the allocator setting the verdicts assume
    allocator_source: str = "default"  # where that setting comes from

    def as_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "model": {"parameters": self.shape.params, "method": self.shape.method,
                                            "source": self.shape.source,
                                            "layers": self.shape.layers, "hidden": self.shape.hidden},
                "gpu_memory_bytes": self.gpu_memory, "margin": MARGIN, "seq_len": self.seq_len,
                "target_len": self.target_len, "profile": {"name": CUDA.name, "source": CUDA.source},
                "allocator": {"expandable_segments": self.expandable_segments, "source": self.allocator_source},
                "candidates": [c.as_json() for c in self.candidates], "chosen": self.chosen, "notes": self.notes}


def relative_cost(job: TrainingJob, original_micro: int) -> float:
    s = job.spec
    cost = COST[s.sharding]
    if s.activation_checkpointing:
        cost *= COST["activation_checkpointing"]
    if s.offload.optimizer == "cpu":
        cost *= COST["offload_optimizer"]
    if s.offload.params == "cpu":
        cost *= COST["offload_params"]
    if "nvme" in (s.offload.optimizer, s.offload.params):
        cost *= COST["nvme"]
    micro = s.batch.micro
    while micro < original_micro:
        cost *= COST["halved_micro_batch"]
        micro *= 2
    return cost


def candidates(job: TrainingJob, limit: int = 16) -> list[tuple[TrainingJob, str]]:
    """The spec, then each step of its ladder as the fallback would take it after a CUDA OOM, and the
    neighbours one rung away from every step (a rung skipped, not only taken in order)."""
    ladder = ladder_of(job)
    out: list[tuple[TrainingJob, str]] = [(job, "spec")]
    seen = {config_key(job)}
    frontier = [(job, "spec")]
    while frontier and len(out) < limit:
        current, _ = frontier.pop(0)
        for rung in ladder:
            proposal = RUNG_FUNCTIONS[rung](current, _PROBE)
            if proposal is None:
                continue
            nxt = proposal[0]
            if config_key(nxt) in seen or rules.errors(rules.check(nxt)):
                continue
            seen.add(config_key(nxt))
            out.append((nxt, rung))
            frontier.append((nxt, rung))
            if len(out) >= limit:
                break
    return out


def check_gpu_memory_flag(text: str) -> int:
    """`--gpu-memory`: a size with its unit. A bare number is refused rather than read as bytes (80 bytes
    is never what was meant, and 80 could be GB or GiB)."""
    value = text.strip()
    if value.replace(".", "", 1).isdigit():
        raise ValueError(f"--gpu-memory {value}: give a unit, e.g. {value}GiB (2^30 bytes) or {value}GB (10^9 bytes)")
    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise ValueError(f"--gpu-memory: {exc}") from None


def gpu_memory_of(job: TrainingJob, override: str | None = None) -> int:
    text = override or job.spec.resources.gpu_memory
    if not text:
        raise ValueError("the planner needs the GPU memory: spec.resources.gpu_memory or --gpu-memory")
    return parse_bytes(text)


def allocator_setting(job: TrainingJob, expandable_segments: bool | None = None) -> tuple[bool, str]:
    """(expandable segments on, where that comes from): the argument, else the job's PYTORCH_CUDA_ALLOC_CONF,
    else shardctl's default for CUDA attempts (on)."""
    if expandable_segments is not None:
        return expandable_segments, "argument"
    conf = job.spec.entrypoint.env.get(ALLOC_CONF)
    if conf is None:
        return True, "default"
    return job_expandable_segments(job), f"spec.entrypoint.env {ALLOC_CONF}={conf}"


def plan(job: TrainingJob, gpu_memory: str | None = None, shape: ModelShape | None = None,
         hub: bool = True, expandable_segments: bool | None = None) -> Plan:
    """`hub`: a config.json neither local nor cached may be fetched from the Hugging Face Hub
    (`shardctl plan`; executors pass False: they never wait on the network). `expandable_segments`: the
    allocator setting the verdicts assume; None: the job's (see allocator_setting)."""
    spec = job.spec
    shape = shape or model_shape(spec.model.name_or_path, spec.model.parameters, hub=hub)
    seq = spec.batch.seq_len or DEFAULT_SEQ_LEN
    target = spec.batch.target_len
    expandable, source = allocator_setting(job, expandable_segments)
    result = Plan(shape, gpu_memory_of(job, gpu_memory), seq, target, expandable_segments=expandable,
                  allocator_source=source)
    if shape.note:
        result.notes.append(shape.note)
    if not spec.batch.seq_len:
        result.notes.append(f"batch.seq_len is unset: activations estimated at {DEFAULT_SEQ_LEN} tokens")
    if spec.model.parameters and abs(shape.params - spec.model.parameters) > 0.05 * shape.params:
        result.notes.append(f"spec.model.parameters says {spec.model.parameters:.3g}; {shape.method} counts "
                            f"{shape.params:.4g} (used)")
    if shape.encoder_layers and not target:
        result.notes.append("batch.target_len is unset: the decoder is estimated at seq_len tokens")
    for cand, origin in candidates(job):
        est = estimate(shape, cand, seq, target_len=target, expandable_segments=expandable)
        fits = within(est.verdict_bytes, result.gpu_memory)
        plain = within(est.verdict_bytes_without_expandable, result.gpu_memory)
        result.candidates.append(Candidate(cand, origin, est, fits, relative_cost(cand, spec.batch.micro),
                                           max_micro_batch(cand, shape, result.gpu_memory, seq, target, expandable),
                                           None if plain == fits else plain))
    fitting = [i for i, c in enumerate(result.candidates) if c.fits]
    if expandable and any(c.fits_without_expandable is not None for c in result.candidates):
        result.notes.append(f"verdicts assume {ALLOC_CONF}=expandable_segments:True (shardctl's default for CUDA "
                            "attempts); without it the allocator's fragmentation is predicted to make some fitting "
                            "configs run out of memory (verdict_without_expandable_segments)")
    if fitting:
        # Equal costs keep the earlier candidate (the spec first). Rounded: the products differ in their last
        # bits by the order of the factors (1.6 x 2.5 against 4.0), which must not break a tie.
        result.chosen = min(fitting, key=lambda i: (round(result.candidates[i].cost, 9), i))
    else:
        result.notes.append("no candidate is predicted to fit: more GPUs, a smaller micro-batch or a shorter "
                            "sequence are the remaining levers")
    return result


def within(total: int, gpu_memory: int) -> bool:
    """The verdict: the estimate (Estimate.verdict_bytes: allocated peak plus fragmentation) leaves MARGIN of the
    GPU free."""
    return total <= gpu_memory * (1 - MARGIN)


def predicts_fit(job: TrainingJob, shape: ModelShape, gpu_memory: int, seq_len: int,
                 target_len: int | None = None, expandable_segments: bool | None = None) -> bool:
    """For the fallback: False only when the estimate is over the GPU, margin and fragmentation included (under
    the job's own allocator setting unless `expandable_segments` says)."""
    est = estimate(shape, job, seq_len, target_len=target_len, expandable_segments=expandable_segments)
    return within(est.verdict_bytes, gpu_memory)


def max_micro_batch(job: TrainingJob, shape: ModelShape, gpu_memory: int, seq_len: int,
                    target_len: int | None = None, expandable_segments: bool | None = None) -> int:
    """The largest micro-batch predicted to fit with everything else as in `job` (0: not even 1).
    Memory grows with the micro-batch, so a binary search is exact."""
    def fits(micro: int) -> bool:
        batch = job.spec.batch.model_copy(update={"micro": micro, "global_": None})
        return predicts_fit(job.with_spec(batch=batch), shape, gpu_memory, seq_len, target_len, expandable_segments)

    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= MAX_MICRO_BATCH and fits(high):
        low, high = high, high * 2
    high = min(high, MAX_MICRO_BATCH + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low
