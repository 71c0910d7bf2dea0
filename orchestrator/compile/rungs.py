"""The rungs of the fallback ladder: pure transforms that make a job's config more frugal.

Each rung returns (the changed job, why) or None when it changes nothing for this job (or would
not help against this kind of failure). The fallback policy (lifecycle.fallback) walks them after
an OOM; the planner (plan.planner) walks them to list candidates before launch.

The default ladder goes cheapest slowdown first: more sharding; activation checkpointing; half the
micro-batch with twice the accumulation (global batch kept; only when the script takes
{micro_batch}); DeepSpeed -> the equivalent FSDP level (fragmentation can make ZeRO-2 OOM where
FSDP fits, so this comes before paying for offload); optimizer offload to CPU; parameter offload to
CPU; NVMe offload (DeepSpeed only: an FSDP job moves to DeepSpeed, with the precision warning of
accelerate's FSDP-vs-DeepSpeed guide). A host OOM never climbs to CPU offload, which would only move
more into host memory.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.compile import passthrough, rules
from orchestrator.compile.launch import ALLOC_CONF, EXPANDABLE
from orchestrator.spec.models import Offload, OffloadDevice, TrainingJob
from orchestrator.spec.states import FailureKind

AUTO_LADDER = ("shard_more", "activation_checkpointing", "halve_micro_batch", "switch_backend",
               "offload_optimizer_cpu", "offload_params_cpu", "offload_nvme")

Rung = Callable[[TrainingJob, FailureKind], "tuple[TrainingJob, str] | None"]
# Rungs whose point is not a lower memory estimate: switch_backend trades ZeRO's fragmentation, which the planner
# does not model, for FSDP's layout, whose estimate is often higher (FSDP keeps parameters, gradients and Adam
# states in the load dtype and steps them all at once). The fallback judges them by the fit alone.
NOT_ABOUT_THE_ESTIMATE = frozenset({"switch_backend"})


def config_key(job: TrainingJob) -> tuple:
    """What distinguishes one attempt's config from another (for 'never try the same thing twice')."""
    s = job.spec
    return (s.backend, s.sharding, s.offload.optimizer, s.offload.params, s.activation_checkpointing, s.batch.micro,
            s.entrypoint.env.get(ALLOC_CONF))


def expandable_segments(job: TrainingJob) -> bool:
    """Whether the job's CUDA attempts run with PyTorch's expandable segments: always, unless its entrypoint.env
    sets PYTORCH_CUDA_ALLOC_CONF without them (compile/launch.py sets it otherwise)."""
    conf = job.spec.entrypoint.env.get(ALLOC_CONF)
    return conf is None or "expandable_segments:true" in conf.replace(" ", "").lower()


def with_expandable_segments(job: TrainingJob) -> TrainingJob:
    """The job with expandable segments added to the allocator settings it names."""
    conf = job.spec.entrypoint.env.get(ALLOC_CONF, "")
    env = {**job.spec.entrypoint.env, ALLOC_CONF: f"{conf},{EXPANDABLE}" if conf else EXPANDABLE}
    entrypoint = job.spec.entrypoint.model_copy(update={"env": env})
    return job.model_copy(update={"spec": job.spec.model_copy(update={"entrypoint": entrypoint})})


def config_line(job: TrainingJob) -> str:
    """A config in one line, e.g. 'deepspeed ZeRO-3, micro 4 x accum 2, activation checkpointing'."""
    s = job.spec
    level = f"ZeRO-{rules.zero_stage(s)}" if s.backend == "deepspeed" else rules.fsdp_strategy(s)
    parts = [f"{s.backend} {level}", f"micro {s.batch.micro} x accum {rules.grad_accum(s)}"]
    if s.activation_checkpointing:
        parts.append("activation checkpointing")
    if s.offload.optimizer != "none" or s.offload.params != "none":
        parts.append(f"offload optimizer={s.offload.optimizer} params={s.offload.params}")
    return ", ".join(parts)


def _switched(job: TrainingJob, backend: str, changes: dict) -> tuple[TrainingJob, str]:
    """The job on the other backend. Pass-through keys belong to one backend: they are dropped, each named."""
    s = job.spec
    dropped = passthrough.dropped_on_switch(s)
    changes = {**changes, "backend": backend}
    if s.backend == "deepspeed":
        changes["deepspeed"] = s.deepspeed.model_copy(update={"config": {}})
    else:
        changes["fsdp"] = s.fsdp.model_copy(update={"config": {}})
    note = f"dropped {s.backend}-only pass-through keys: {', '.join(dropped)}" if dropped else ""
    return job.with_spec(**changes), note


def _shard_more(job: TrainingJob, kind: FailureKind) -> tuple[TrainingJob, str] | None:
    s = job.spec
    if s.sharding == "hybrid":
        return job.with_spec(sharding="full"), "hybrid -> full: shard across all nodes instead of within one"
    order = [lvl for lvl in rules.SHARDING_ORDER if s.backend == "deepspeed" or lvl != "optimizer"]
    if s.sharding not in order or order.index(s.sharding) == len(order) - 1:
        return None
    nxt = order[order.index(s.sharding) + 1]
    return job.with_spec(sharding=nxt), f"{s.sharding} -> {nxt}: shard more of the model state per GPU"


def _activation_checkpointing(job: TrainingJob, kind: FailureKind) -> tuple[TrainingJob, str] | None:
    if job.spec.activation_checkpointing:
        return None
    return (job.with_spec(activation_checkpointing=True),
            "activation checkpointing on: recompute activations in backward")


def _halve_micro_batch(job: TrainingJob, kind: FailureKind) -> tuple[TrainingJob, str] | None:
    s = job.spec
    if s.batch.micro < 2 or not any("{micro_batch}" in a for a in s.entrypoint.args):
        return None
    global_batch = rules.global_batch(s)
    micro = s.batch.micro // 2
    if global_batch % (micro * s.world_size):
        return None
    batch = s.batch.model_copy(update={"micro": micro, "global_": global_batch})
    return (job.with_spec(batch=batch),
            f"micro-batch {s.batch.micro} -> {micro}, accumulation {rules.grad_accum(s)} -> "
            f"{global_batch // (micro * s.world_size)} (global batch {global_batch} kept)")


def _switch_backend(job: TrainingJob, kind: FailureKind) -> tuple[TrainingJob, str] | None:
    s = job.spec
    if s.backend != "deepspeed" or s.sharding == "optimizer" or "nvme" in (s.offload.optimizer, s.offload.params):
        return None
    if kind is not FailureKind.CUDA_OOM:
        return None  # the fragmentation argument is about the GPU allocator
    switched, dropped = _switched(job, "fsdp", {})
    reason = (f"deepspeed -> fsdp at the same level ({rules.SHARDING_TABLE[s.sharding][0]}): FSDP can fit where "
              "ZeRO fragments GPU memory; optimizer state restarts (only model weights carry over)")
    return switched, "; ".join(filter(None, [reason, dropped]))


def _offload(device: OffloadDevice, what: str) -> Rung:
    def rung(job: TrainingJob, kind: FailureKind) -> tuple[TrainingJob, str] | None:
        s = job.spec
        if kind is FailureKind.HOST_OOM and device == "cpu":
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
                switched, dropped = _switched(job, "deepspeed", {})
                changes.update({k: v for k, v in switched.spec if k in ("backend", "fsdp")})
                notes.append("fsdp -> deepspeed: only DeepSpeed offloads to NVMe; " + rules.PRECISION_WARNING)
                if dropped:
                    notes.append(dropped)
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
        return job.with_spec(**changes), "; ".join([reason, *notes])
    return rung


RUNG_FUNCTIONS: dict[str, Rung] = {
    "shard_more": _shard_more,
    "activation_checkpointing": _activation_checkpointing,
    "halve_micro_batch": _halve_micro_batch,
    "switch_backend": _switch_backend,
    "offload_optimizer_cpu": _offload("cpu", "optimizer"),
    "offload_params_cpu": _offload("cpu", "params"),
    "offload_nvme": _offload("nvme", "optimizer"),
}


def ladder(job: TrainingJob) -> tuple[str, ...]:
    return AUTO_LADDER if job.spec.fallback.ladder == "auto" else tuple(job.spec.fallback.ladder)
