"""The FSDP/DeepSpeed mapping table and restrictions, in one place.

Sources: accelerate's guides "Moving between FSDP and DeepSpeed" and "Fully Sharded Data
Parallel", and its "DeepSpeed" guide (ZeRO stages, offload). Every rule here has a test in
tests/compile/test_rules.py that fails if the rule changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from orchestrator.spec.models import CONTAINER_TARGETS, ENV_SOURCE_KINDS, TrainingJob, TrainingJobSpec

Level = Literal["error", "warning", "note"]

# Backend-neutral level -> (FSDP sharding strategy, DeepSpeed ZeRO stage).
# FULL_SHARD = ZeRO-3, SHARD_GRAD_OP = ZeRO-2, NO_SHARD = ZeRO-0,
# HYBRID_SHARD = ZeRO++ stage 3 with zero_hpz_partition_size = GPUs per node.
# ZeRO-1 (optimizer-state sharding) has no FSDP twin.
SHARDING_TABLE: dict[str, tuple[str | None, int]] = {
    "none": ("NO_SHARD", 0),
    "optimizer": (None, 1),
    "grad_op": ("SHARD_GRAD_OP", 2),
    "full": ("FULL_SHARD", 3),
    "hybrid": ("HYBRID_SHARD", 3),
}
SHARDING_ORDER = ("none", "optimizer", "grad_op", "full")  # least to most sharded (hybrid sits beside full)

FSDP_STRATEGY_TO_LEVEL = {strategy: level for level, (strategy, _) in SHARDING_TABLE.items() if strategy}
ZERO_STAGE_TO_LEVEL = {0: "none", 1: "optimizer", 2: "grad_op", 3: "full"}

PRECISION_WARNING = (
    "DeepSpeed keeps fp32 master weights and upcasts parameters and optimizer state to fp32 whatever the load "
    "dtype; FSDP with a bf16 load keeps them in bf16. Memory and numerics differ between the backends: load in "
    "fp32 with bf16 mixed precision on both for equivalent runs (accelerate's guide 'Moving between FSDP and "
    "DeepSpeed', 'On Data Precision')."
)

_UNREACHABLE = {"secret": "a Kubernetes Secret exists only in its cluster",
                "env": "the submitting shell's variables do not reach pods",
                "file": "this machine's files do not reach pods"}
_SOURCE_FORMS = {"secret": "`secret: NAME` (e.g. kubectl create secret generic NAME --from-env-file=FILE)",
                 "env": "`env: NAME` (a variable of the submitting shell)", "file": "`file: PATH` (a private file)"}


@dataclass(frozen=True)
class Finding:
    """A rule's verdict on one field: an error stops compilation; warnings and notes are always printed,
    except advice: a note that is not about this job (it holds for any model of its kind, whatever the spec
    set), which the CLI prints only with -v/--verbose."""

    level: Level
    field: str
    message: str
    advice: bool = False

    def __str__(self) -> str:
        return f"{self.level}: {self.field}: {self.message}"


def zero_stage(spec: TrainingJobSpec) -> int:
    return SHARDING_TABLE[spec.sharding][1]


def fsdp_strategy(spec: TrainingJobSpec) -> str | None:
    return SHARDING_TABLE[spec.sharding][0]


def effective_fsdp_flags(spec: TrainingJobSpec) -> dict[str, bool]:
    """FSDP booleans after the seeds' recommendations and forced pairings."""
    f = spec.fsdp
    cpu_ram_efficient = True if f.cpu_ram_efficient_loading is None else f.cpu_ram_efficient_loading
    sync = True if f.sync_module_states is None else f.sync_module_states
    if cpu_ram_efficient:
        sync = True  # otherwise every rank but 0 trains on random weights
    orig = True if f.use_orig_params is None else f.use_orig_params
    if spec.torch_compile:
        orig = True
    return {
        "offload": spec.offload.optimizer != "none" or spec.offload.params != "none",
        "cpu_ram_efficient_loading": cpu_ram_efficient,
        "sync_module_states": sync,
        "use_orig_params": orig,
    }


def effective_ds_flags(spec: TrainingJobSpec) -> dict[str, bool]:
    stage3 = zero_stage(spec) == 3
    d = spec.deepspeed
    return {
        # Off unless asked: zero.Init goes through transformers' HfDeepSpeedConfig, and accelerate raises
        # "When `zero3_init_flag` is set, it requires Transformers" for any other model (seen here).
        "zero3_init": bool(d.zero3_init),
        "save_16bit_model": stage3 if d.save_16bit_model is None else d.save_16bit_model,
    }


def grad_accum(spec: TrainingJobSpec) -> int:
    """Accumulation steps; exact division is checked by `check`."""
    if spec.batch.global_ is None:
        return 1
    return max(1, spec.batch.global_ // (spec.batch.micro * spec.world_size))


def global_batch(spec: TrainingJobSpec) -> int:
    return spec.batch.micro * grad_accum(spec) * spec.world_size


def check(job: TrainingJob) -> list[Finding]:
    """Every cross-field rule, as findings. Pure: the same spec always gives the same list."""
    spec = job.spec
    out: list[Finding] = []
    err = lambda f, m: out.append(Finding("error", f, m))  # noqa: E731
    warn = lambda f, m: out.append(Finding("warning", f, m))  # noqa: E731
    note = lambda f, m: out.append(Finding("note", f, m))  # noqa: E731
    advise = lambda f, m: out.append(Finding("note", f, m, advice=True))  # noqa: E731
    fsdp = spec.backend == "fsdp"
    stage = zero_stage(spec)
    off = spec.offload

    # Sharding.
    if fsdp and spec.sharding == "optimizer":
        err("spec.sharding", "ZeRO stage 1 (optimizer-state sharding) has no FSDP equivalent; use backend: deepspeed, "
                             "or sharding: grad_op (SHARD_GRAD_OP = ZeRO-2)")
    if spec.sharding == "hybrid" and spec.resources.nodes < 2:
        err("spec.sharding", "hybrid shards within a node and replicates across nodes: it needs resources.nodes > 1 "
                             "(use full on one node)")
    if fsdp and spec.fsdp.version == 2 and spec.sharding in ("none", "hybrid"):
        err("spec.fsdp.version", f"FSDP2 through accelerate supports full and grad_op only, not {spec.sharding}; "
                                 "use fsdp.version: 1")

    # Offload.
    for name in ("optimizer", "params"):
        if fsdp and getattr(off, name) == "nvme":
            err(f"spec.offload.{name}",
                "NVMe offload exists only in DeepSpeed (ZeRO-Infinity); set backend: deepspeed, or offload to cpu")
    if "nvme" in (off.optimizer, off.params) and not off.nvme_path:
        err("spec.offload.nvme_path", "nvme offload needs nvme_path, a directory on a local NVMe drive")
    if off.nvme_path and "nvme" not in (off.optimizer, off.params):
        warn("spec.offload.nvme_path", "set but unused: no offload is set to nvme")
    if fsdp and (off.optimizer == "none") != (off.params == "none"):
        which = "optimizer" if off.optimizer != "none" else "params"
        warn(f"spec.offload.{which}", "FSDP offload is all or nothing: this becomes fsdp_offload_params: true, which "
                                      "offloads parameters, gradients and optimizer state to CPU")
    if not fsdp and off.params != "none" and stage != 3:
        err("spec.offload.params", f"parameter offload needs ZeRO-3 (sharding: full), not ZeRO-{stage}")
    if not fsdp and off.optimizer != "none" and stage == 0:
        err("spec.offload.optimizer",
            "optimizer offload needs ZeRO stage 1, 2 or 3 (sharding: optimizer, grad_op or full)")

    # Model loading and checkpointing (ZeRO-3 only).
    if not fsdp:
        if spec.deepspeed.zero3_init and stage != 3:
            err("spec.deepspeed.zero3_init", f"zero3_init_flag only applies to ZeRO-3, not ZeRO-{stage}")
        if stage == 3 and spec.deepspeed.zero3_init is None:
            advise("spec.deepspeed.zero3_init",
                   "off: for a Transformers model set zero3_init: true (zero3_init_flag, the "
                   "twin of fsdp_cpu_ram_efficient_loading) so it is built already partitioned")
        if spec.deepspeed.save_16bit_model and stage != 3:
            err("spec.deepspeed.save_16bit_model", f"zero3_save_16bit_model only applies to ZeRO-3, not ZeRO-{stage}")
    else:
        f = spec.fsdp
        if f.cpu_ram_efficient_loading is not False and f.sync_module_states is False:
            warn("spec.fsdp.sync_module_states",
                 "forced to true: fsdp_cpu_ram_efficient_loading needs "
                 "fsdp_sync_module_states, or ranks other than 0 train on random weights")
        if spec.torch_compile and f.use_orig_params is False:
            warn("spec.fsdp.use_orig_params", "forced to true: torch.compile needs fsdp_use_orig_params")
        if spec.model.layer_class is None:
            advise("spec.model.layer_class", "unset: TRANSFORMER_BASED_WRAP wraps the model's _no_split_modules "
                                             "(accelerate's FSDP guide: recommended for recent transformers)")

    # Precision (accelerate's 'On Data Precision').
    if not fsdp and spec.precision.params == "bf16":
        warn("spec.precision.params", PRECISION_WARNING)
    if fsdp and spec.precision.params == "bf16" and spec.precision.mixed == "no":
        note("spec.precision", "FSDP memory-constrained mode: parameters, gradients and optimizer all in bf16")

    # Activation checkpointing under DeepSpeed is the script's job.
    if not fsdp and spec.activation_checkpointing:
        note("spec.activation_checkpointing",
             "DeepSpeed has no accelerate switch for it: the script must enable it "
             "(SHARDCTL_ACTIVATION_CHECKPOINTING=1, e.g. gradient_checkpointing_enable())")

    # Batch.
    b = spec.batch
    if b.global_ is not None and b.global_ % (b.micro * spec.world_size) != 0:
        err("spec.batch.global", f"{b.global_} is not a multiple of micro ({b.micro}) x world size "
                                 f"({spec.world_size}) = {b.micro * spec.world_size}")

    # Fallback.
    ladder = spec.fallback.ladder
    takes_batch = any("{micro_batch}" in a for a in spec.entrypoint.args)
    if isinstance(ladder, list) and "halve_micro_batch" in ladder and not takes_batch:
        warn("spec.fallback.ladder", "halve_micro_batch will be skipped: entrypoint.args has no {micro_batch} "
                                     "placeholder, so the script cannot be told the new micro-batch")

    _check_passthrough(spec, out)

    # Targets.
    if spec.target in CONTAINER_TARGETS and not spec.kubernetes.image:
        err("spec.kubernetes.image", f"target {spec.target} runs containers: it needs an image")
    for i, source in enumerate(spec.entrypoint.env_from):  # secrets by reference: what each target can honour
        if source.kind not in ENV_SOURCE_KINDS[spec.target]:
            err(f"spec.entrypoint.env_from.{i}.{source.kind}",
                f"cannot reach a {spec.target} run ({_UNREACHABLE[source.kind]}); use "
                + " or ".join(_SOURCE_FORMS[k] for k in sorted(ENV_SOURCE_KINDS[spec.target])))
    for i, hook in enumerate(spec.notify):  # sent by the supervisor, the Slurm judge, or the controller (its Secrets)
        for name, ref in (("url", hook.url), ("signing_secret", hook.signing_secret)):
            if ref is not None and ref.kind not in ENV_SOURCE_KINDS[spec.target]:
                who = "the controller" if spec.target in CONTAINER_TARGETS else f"a {spec.target} supervisor"
                err(f"spec.notify.{i}.{name}.{ref.kind}",
                    f"cannot reach {who} ({_UNREACHABLE[ref.kind]}); use "
                    + " or ".join(_SOURCE_FORMS[k] for k in sorted(ENV_SOURCE_KINDS[spec.target])))
    ns_a, ns_b = job.metadata.namespace, spec.kubernetes.namespace
    if ns_a and ns_b and ns_a != ns_b:
        err("spec.kubernetes.namespace", f"conflicts with metadata.namespace ({ns_a})")
    return out


def _check_passthrough(spec: TrainingJobSpec, out: list[Finding]) -> None:
    """Backend pass-through keys: known to the backend, and never contradicting what the spec renders."""
    from orchestrator.compile import configs, passthrough  # configs imports this module

    def report(level: str, field: str, message: str) -> None:
        out.append(Finding(cast(Level, level), field, message))

    if spec.backend == "fsdp":
        passthrough.check_fsdp(spec, configs.fsdp_config_base(spec), report)
        idle, keys = "spec.deepspeed.config", [path for path, _ in passthrough.leaves(spec.deepspeed.config)]
    else:
        passthrough.check_deepspeed(spec, configs.deepspeed_json_base(spec), report)
        idle, keys = "spec.fsdp.config", list(spec.fsdp.config)
    if keys:
        report("warning", idle, f"not used with backend {spec.backend}: {', '.join(keys)}")


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "error"]
