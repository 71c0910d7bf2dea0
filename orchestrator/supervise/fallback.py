"""The fallback policy: a pure function (job, attempts so far, failure) -> next job, or stop with a reason.

The default ladder goes cheapest slowdown first and skips rungs that change nothing for this job:
more sharding; activation checkpointing; half the micro-batch with twice the accumulation (global
batch kept; only when the script takes {micro_batch}); DeepSpeed -> the equivalent FSDP level
(fragmentation can make ZeRO-2 OOM where FSDP fits, so this comes before paying for offload);
optimizer offload to CPU; parameter offload to CPU; NVMe offload (DeepSpeed only: an FSDP job moves
to DeepSpeed, with the seeds' precision warning). A host OOM never climbs to CPU offload, which
would only move more into host memory. No target is imported here: one policy serves all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.compile import rules
from orchestrator.spec.models import Offload, TrainingJob
from orchestrator.supervise.classify import Failure

AUTO_LADDER = ("shard_more", "activation_checkpointing", "halve_micro_batch", "switch_backend",
               "offload_optimizer_cpu", "offload_params_cpu", "offload_nvme")
RETRY_SAME = ("timeout", "preempted")  # resume the same config


@dataclass(frozen=True)
class Next:
    job: TrainingJob
    rung: str | None  # None when the same config is retried
    reason: str


@dataclass(frozen=True)
class Stop:
    reason: str


def config_key(job: TrainingJob) -> tuple:
    """What distinguishes one attempt's config from another (for 'never try the same thing twice')."""
    s = job.spec
    return (s.backend, s.sharding, s.offload.optimizer, s.offload.params, s.activation_checkpointing, s.batch.micro)


def describe(job: TrainingJob) -> str:
    s = job.spec
    level = f"ZeRO-{rules.zero_stage(s)}" if s.backend == "deepspeed" else rules.fsdp_strategy(s)
    parts = [f"{s.backend} {level}", f"micro {s.batch.micro} x accum {rules.grad_accum(s)}"]
    if s.activation_checkpointing:
        parts.append("activation checkpointing")
    if s.offload.optimizer != "none" or s.offload.params != "none":
        parts.append(f"offload optimizer={s.offload.optimizer} params={s.offload.params}")
    return ", ".join(parts)


def _with(job: TrainingJob, **changes) -> TrainingJob:
    return job.with_spec(**changes)


def _shard_more(job: TrainingJob, failure: Failure) -> tuple[TrainingJob, str] | None:
    s = job.spec
    if s.sharding == "hybrid":
        return _with(job, sharding="full"), "hybrid -> full: shard across all nodes instead of within one"
    order = [lvl for lvl in rules.SHARDING_ORDER if s.backend == "deepspeed" or lvl != "optimizer"]
    if s.sharding not in order or order.index(s.sharding) == len(order) - 1:
        return None
    nxt = order[order.index(s.sharding) + 1]
    return _with(job, sharding=nxt), f"{s.sharding} -> {nxt}: shard more of the model state per GPU"


def _activation_checkpointing(job: TrainingJob, failure: Failure) -> tuple[TrainingJob, str] | None:
    if job.spec.activation_checkpointing:
        return None
    return _with(job, activation_checkpointing=True), "activation checkpointing on: recompute activations in backward"


def _halve_micro_batch(job: TrainingJob, failure: Failure) -> tuple[TrainingJob, str] | None:
    s = job.spec
    if s.batch.micro < 2 or not any("{micro_batch}" in a for a in s.entrypoint.args):
        return None
    global_batch = rules.global_batch(s)
    micro = s.batch.micro // 2
    if global_batch % (micro * s.world_size):
        return None
    batch = s.batch.model_copy(update={"micro": micro, "global_": global_batch})
    return (_with(job, batch=batch),
            f"micro-batch {s.batch.micro} -> {micro}, accumulation {rules.grad_accum(s)} -> "
            f"{global_batch // (micro * s.world_size)} (global batch {global_batch} kept)")


def _switch_backend(job: TrainingJob, failure: Failure) -> tuple[TrainingJob, str] | None:
    s = job.spec
    if s.backend != "deepspeed" or s.sharding == "optimizer" or "nvme" in (s.offload.optimizer, s.offload.params):
        return None
    if failure.kind != "cuda_oom":
        return None  # the fragmentation argument is about the GPU allocator
    return (_with(job, backend="fsdp"),
            f"deepspeed -> fsdp at the same level ({rules.SHARDING_TABLE[s.sharding][0]}): FSDP can fit where "
            "ZeRO fragments GPU memory; optimizer state restarts (only model weights carry over)")


def _offload(device: str, what: str) -> Callable[[TrainingJob, Failure], tuple[TrainingJob, str] | None]:
    def rung(job: TrainingJob, failure: Failure) -> tuple[TrainingJob, str] | None:
        s = job.spec
        if failure.kind == "host_oom" and device == "cpu":
            return None  # would put more into the memory that ran out
        current = s.offload.optimizer if what == "optimizer" else s.offload.params
        if current == device or (device == "cpu" and current == "nvme"):
            return None
        changes: dict = {}
        notes = []
        if device == "nvme":
            if not s.offload.nvme_path:
                return None  # cannot invent a local NVMe path
            if s.backend == "fsdp":
                changes["backend"] = "deepspeed"
                notes.append("fsdp -> deepspeed: only DeepSpeed offloads to NVMe; " + rules.PRECISION_WARNING)
            offload = Offload(optimizer="nvme", params="nvme", nvme_path=s.offload.nvme_path)
            changes["sharding"] = "full"
        else:
            opt = device if what == "optimizer" else s.offload.optimizer
            par = device if what == "params" else s.offload.params
            if s.backend == "fsdp" and (s.offload.optimizer != "none" or s.offload.params != "none"):
                return None  # FSDP offload is all or nothing: nothing more to move
            offload = Offload(optimizer=opt, params=par, nvme_path=s.offload.nvme_path)
            if s.backend == "deepspeed" and what == "params" and rules.zero_stage(s) != 3:
                changes["sharding"] = "full"
                notes.append("parameter offload needs ZeRO-3")
            if s.backend == "deepspeed" and rules.zero_stage(s) == 0:
                changes["sharding"] = "grad_op"
                notes.append("optimizer offload needs a ZeRO stage")
        changes["offload"] = offload
        reason = f"offload {what if device != 'nvme' else 'optimizer and parameters'} to {device}"
        return _with(job, **changes), "; ".join([reason, *notes])
    return rung


RUNG_FUNCTIONS: dict[str, Callable[[TrainingJob, Failure], tuple[TrainingJob, str] | None]] = {
    "shard_more": _shard_more,
    "activation_checkpointing": _activation_checkpointing,
    "halve_micro_batch": _halve_micro_batch,
    "switch_backend": _switch_backend,
    "offload_optimizer_cpu": _offload("cpu", "optimizer"),
    "offload_params_cpu": _offload("cpu", "params"),
    "offload_nvme": _offload("nvme", "optimizer"),
}


def next_step(original: TrainingJob, tried: Sequence[TrainingJob], failure: Failure,
              fits: Callable[[TrainingJob], bool] | None = None) -> Next | Stop:
    """Decide what follows a failed attempt. `tried` holds every attempt's job so far, the last one last.
    `fits` (the memory planner's prediction, when it applies) skips rungs predicted not to fit."""
    current = tried[-1] if tried else original
    spec = original.spec
    if failure.kind == "succeeded":
        return Stop("succeeded")
    if failure.kind == "cancelled":
        return Stop("cancelled by the user")
    if len(tried) >= spec.fallback.max_attempts:
        return Stop(f"stopped after {len(tried)} attempts (fallback.max_attempts): last failure was {failure.kind}: "
                    f"{failure.reason}")
    if failure.kind in RETRY_SAME:
        return Next(current, None, f"{failure.reason}: resume the same config from the last checkpoint")
    if not failure.is_oom:
        why = "user errors are never retried" if failure.kind == "user_error" else "not an out-of-memory failure"
        return Stop(f"{failure.kind}: {failure.reason}; {why}")
    if not spec.fallback.enabled:
        return Stop(f"{failure.kind}: {failure.reason}; fallback is disabled (spec.fallback.enabled: false)")
    ladder = AUTO_LADDER if spec.fallback.ladder == "auto" else tuple(spec.fallback.ladder)
    seen = {config_key(j) for j in tried}
    skipped: list[str] = []
    for rung in ladder:
        proposal = RUNG_FUNCTIONS[rung](current, failure)
        if proposal is None:
            continue
        candidate, why = proposal
        if config_key(candidate) in seen or rules.errors(rules.check(candidate)):
            continue
        if fits is not None and not fits(candidate):
            skipped.append(rung)
            continue
        note = f" (skipped, predicted not to fit: {', '.join(skipped)})" if skipped else ""
        return Next(candidate, rung,
                    f"{failure.kind} ({failure.reason}) on {describe(current)} -> {rung}: {why}{note}")
    if skipped:
        return Stop(f"{failure.kind} on {describe(current)}: every remaining rung is predicted not to fit "
                    f"({', '.join(skipped)})")
    return Stop(f"{failure.kind} on {describe(current)} and no rung of the ladder can go further")
