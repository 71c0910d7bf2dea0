"""Turn an existing accelerate config into the other backend (`shardctl convert`).

Reads what `accelerate config` writes: FSDP (`fsdp_config`), or DeepSpeed with
inline keys or a `deepspeed_config_file`, or a DeepSpeed JSON on its own. Settings with a
twin in accelerate's table are carried over, and so is every top-level key that belongs to
neither backend; a backend-only key is listed with the reason it has no counterpart, never
silently dropped. A config that is already the target backend is written back unchanged.
Pure: the caller reads the files and passes their parsed contents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.compile.rules import FSDP_STRATEGY_TO_LEVEL, PRECISION_WARNING, SHARDING_TABLE, ZERO_STAGE_TO_LEVEL
from orchestrator.errors import ConvertError

_FSDP_NUMERIC = {1: "FULL_SHARD", 2: "SHARD_GRAD_OP", 3: "NO_SHARD", 4: "HYBRID_SHARD", 5: "HYBRID_SHARD_ZERO2"}
# FSDP keys with a twin (handled) and without one (reported).
_FSDP_TWINS = {"fsdp_sharding_strategy", "fsdp_reshard_after_forward", "fsdp_offload_params",
               "fsdp_cpu_ram_efficient_loading", "fsdp_version", "fsdp_state_dict_type"}
_DS_TWINS = {"zero_stage", "offload_optimizer_device", "offload_param_device", "zero3_init_flag",
             "zero3_save_16bit_model", "deepspeed_config_file", "deepspeed_multinode_launcher"}


# Why an FSDP key has no DeepSpeed counterpart, key by key (a wrong reason is worse than none).
_FSDP_ONLY_WHY = {
    "fsdp_activation_checkpointing": "DeepSpeed has no accelerate switch for it: the training script must enable "
                                     "it, e.g. model.gradient_checkpointing_enable()",
    "fsdp_activation_checkpointing_offload": "DeepSpeed has no accelerate switch for it: the training script must "
                                             "enable activation checkpointing itself",
    "fsdp_transformer_layer_cls_to_wrap": "DeepSpeed partitions parameters without a wrap policy",
    "fsdp_auto_wrap_policy": "DeepSpeed partitions parameters without a wrap policy",
    "fsdp_min_num_params": "DeepSpeed partitions parameters without a wrap policy",
    "fsdp_backward_prefetch": "DeepSpeed prefetches by bucket size (zero_optimization.stage3_prefetch_bucket_size)",
    "fsdp_backward_prefetch_policy": "an old spelling accelerate 1.x ignores; DeepSpeed prefetches by bucket size",
    "fsdp_forward_prefetch": "DeepSpeed prefetches by bucket size (zero_optimization.stage3_prefetch_bucket_size)",
    "fsdp_use_orig_params": "DeepSpeed needs no such switch, for torch.compile or several parameter groups",
    "fsdp_sync_module_states": "DeepSpeed broadcasts the initial weights from rank 0 itself",
}
# accelerate config keys that belong to one backend; every other top-level key is carried over as it is.
_BACKEND_KEYS = ("distributed_type", "fsdp_config", "deepspeed_config", "mixed_precision")
# Keys that only a DeepSpeed JSON has: a file with one of these and no distributed_type is a DeepSpeed config.
_DS_JSON_KEYS = ("zero_optimization", "train_batch_size", "train_micro_batch_size_per_gpu", "fp16", "bf16",
                 "optimizer", "gradient_accumulation_steps")


def is_deepspeed_json(config: Any) -> bool:
    """A DeepSpeed JSON given where an accelerate config was expected."""
    return (isinstance(config, dict) and "distributed_type" not in config
            and any(key in config for key in _DS_JSON_KEYS))


# The input is someone's file: every value is checked for the type it must have before it is used,
# so a list where a mapping belongs, or `zero_stage: x`, is one clear error, never a traceback.
_DEVICES = ("none", "cpu", "nvme")


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """A mapping with string keys (None: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConvertError(f"{where} must be a mapping, not {type(value).__name__} {_shown(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConvertError(f"{where}: key {_shown(key)} is not a string")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value) < 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConvertError(f"{where} must be a whole number from {low} to {high}, not {_shown(value)}")
    return value


def _device(value: Any, where: str) -> str:
    value = value or "none"
    if value not in _DEVICES:
        raise ConvertError(f"{where} must be one of {', '.join(_DEVICES)}, not {_shown(value)}")
    return str(value)


def _precision(value: Any) -> str:
    value = "no" if value in (None, False) else value  # YAML 1.1 reads `no` as false
    if value not in ("no", "fp16", "bf16", "fp8"):
        raise ConvertError(f"mixed_precision must be no, fp16, bf16 or fp8, not {_shown(value)}")
    return str(value)


def _zero_level(stage: int, where: str) -> str:
    if stage not in ZERO_STAGE_TO_LEVEL:
        raise ConvertError(f"{where} {stage} does not exist: ZeRO stages are 0 to 3")
    return ZERO_STAGE_TO_LEVEL[stage]


@dataclass
class Neutral:
    """The backend-neutral reading of a config: what both backends can express."""

    sharding: str = "full"
    offload_optimizer: str = "none"
    offload_params: str = "none"
    efficient_loading: bool = False
    full_weights_on_save: bool = False
    mixed_precision: str = "no"
    gpus_per_node: int | None = None
    machine: dict[str, Any] = field(default_factory=dict)


@dataclass
class Conversion:
    config: dict[str, Any]
    ds_config: dict[str, Any] | None
    lost: list[str]  # settings with no equivalent, one line each
    notes: list[str]  # precision and other consequences


def _fsdp_level(cfg: dict[str, Any]) -> str:
    raw = cfg.get("fsdp_sharding_strategy")
    if raw is None:
        raw = cfg.get("fsdp_reshard_after_forward", "FULL_SHARD")
        if isinstance(raw, bool):  # FSDP2
            return "full" if raw else "grad_op"
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = _FSDP_NUMERIC.get(raw, raw)
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) < 10:
        raw = _FSDP_NUMERIC.get(int(raw), raw)
    name = raw.upper() if isinstance(raw, str) else None
    if name not in FSDP_STRATEGY_TO_LEVEL:
        raise ConvertError(f"fsdp_sharding_strategy {_shown(raw)} has no DeepSpeed twin")
    return FSDP_STRATEGY_TO_LEVEL[name]


def _carried(config: dict[str, Any]) -> dict[str, Any]:
    """Every top-level key that is not one backend's: machine, dynamo, downcast and the rest go across as they are."""
    return {k: v for k, v in config.items() if k not in _BACKEND_KEYS}


def read_fsdp(config: dict[str, Any]) -> tuple[Neutral, list[str]]:
    cfg = _mapping(config.get("fsdp_config"), "fsdp_config")
    n = Neutral(machine=_carried(config))
    n.sharding = _fsdp_level(cfg)
    offload = bool(cfg.get("fsdp_offload_params", False))
    n.offload_optimizer = n.offload_params = "cpu" if offload else "none"
    n.efficient_loading = bool(cfg.get("fsdp_cpu_ram_efficient_loading", False))
    n.full_weights_on_save = cfg.get("fsdp_state_dict_type") == "FULL_STATE_DICT"
    n.mixed_precision = _precision(config.get("mixed_precision"))
    lost = [f"fsdp_config.{k}: {_shown(cfg[k])} ({_FSDP_ONLY_WHY.get(k, 'FSDP only: DeepSpeed has no such setting')})"
            for k in sorted(cfg) if k not in _FSDP_TWINS]
    return n, lost


def read_deepspeed(config: dict[str, Any], ds_json: dict[str, Any] | None) -> tuple[Neutral, list[str]]:
    inline = _mapping(config.get("deepspeed_config"), "deepspeed_config")
    n = Neutral(machine=_carried(config))
    lost: list[str] = []
    if ds_json is not None:
        ds_json = _mapping(ds_json, "the DeepSpeed config file")
        zero = _mapping(ds_json.get("zero_optimization"), "zero_optimization")
        stage = _int(zero.get("stage", 0), "zero_optimization.stage", 0, 3)
        n.offload_optimizer = _device(_mapping(zero.get("offload_optimizer"), "zero_optimization.offload_optimizer")
                                      .get("device"), "zero_optimization.offload_optimizer.device")
        n.offload_params = _device(_mapping(zero.get("offload_param"), "zero_optimization.offload_param")
                                   .get("device"), "zero_optimization.offload_param.device")
        n.full_weights_on_save = bool(zero.get("stage3_gather_16bit_weights_on_model_save",
                                               zero.get("stage3_gather_fp16_weights_on_model_save", False)))
        if stage == 3 and zero.get("zero_hpz_partition_size", 1) not in (1, None):
            n.sharding = "hybrid"
            n.gpus_per_node = _int(zero["zero_hpz_partition_size"], "zero_optimization.zero_hpz_partition_size",
                                   1, 1 << 16)
        else:
            n.sharding = _zero_level(stage, "zero_optimization.stage")
        if _mapping(ds_json.get("bf16"), "bf16").get("enabled") in (True, "true", "auto"):
            n.mixed_precision = "bf16"
        elif _mapping(ds_json.get("fp16"), "fp16").get("enabled") in (True, "true", "auto"):
            n.mixed_precision = "fp16"
        for key in sorted(ds_json):
            if key not in ("zero_optimization", "bf16", "fp16", "train_micro_batch_size_per_gpu", "train_batch_size"):
                lost.append(f"{key}: {_shown(ds_json[key])} (DeepSpeed JSON; set it in the training script for FSDP)")
        for key in sorted(zero):
            if key not in ("stage", "offload_optimizer", "offload_param", "zero_hpz_partition_size",
                           "stage3_gather_16bit_weights_on_model_save", "stage3_gather_fp16_weights_on_model_save"):
                lost.append(f"zero_optimization.{key}: {_shown(zero[key])} (no FSDP equivalent)")
    else:
        n.sharding = _zero_level(_int(inline.get("zero_stage", 2), "deepspeed_config.zero_stage", 0, 3),
                                 "deepspeed_config.zero_stage")
        n.offload_optimizer = _device(inline.get("offload_optimizer_device"),
                                      "deepspeed_config.offload_optimizer_device")
        n.offload_params = _device(inline.get("offload_param_device"), "deepspeed_config.offload_param_device")
        n.full_weights_on_save = bool(inline.get("zero3_save_16bit_model", False))
        n.mixed_precision = _precision(config.get("mixed_precision"))
    n.efficient_loading = bool(inline.get("zero3_init_flag", False))
    for key in sorted(inline):
        if key not in _DS_TWINS:
            lost.append(f"deepspeed_config.{key}: {_shown(inline[key])} (no FSDP accelerate-config equivalent)")
    return n, lost


def to_deepspeed(n: Neutral) -> tuple[dict[str, Any], dict[str, Any] | None, list[str], list[str]]:
    lost: list[str] = []
    notes: list[str] = [PRECISION_WARNING]
    stage = SHARDING_TABLE[n.sharding][1]
    inline: dict[str, Any] = {"zero_stage": stage, "deepspeed_multinode_launcher": "standard"}
    opt, par = n.offload_optimizer, n.offload_params
    if opt != "none" and stage == 0:
        lost.append("offload: ZeRO-0 cannot offload the optimizer; dropped (use sharding grad_op or full)")
        opt = "none"
    if par != "none" and stage != 3:
        lost.append("fsdp_offload_params: DeepSpeed offloads parameters only at ZeRO-3; optimizer offload kept")
        par = "none"
    inline["offload_optimizer_device"] = opt
    inline["offload_param_device"] = par
    inline["zero3_init_flag"] = bool(n.efficient_loading and stage == 3)
    if n.efficient_loading and stage != 3:
        lost.append("fsdp_cpu_ram_efficient_loading: its twin zero3_init_flag exists only at ZeRO-3")
    if stage == 3:
        inline["zero3_save_16bit_model"] = n.full_weights_on_save
    config = {**n.machine, "distributed_type": "DEEPSPEED", "mixed_precision": n.mixed_precision}
    ds_json = None
    if n.sharding == "hybrid":
        # hpZ needs zero_hpz_partition_size, which only a DeepSpeed JSON can carry.
        gpn = n.gpus_per_node or max(1, _int(config.get("num_processes", 1), "num_processes", 1, 1 << 20)
                                     // _int(config.get("num_machines", 1), "num_machines", 1, 1 << 20))
        zero: dict[str, Any] = {"stage": 3, "zero_hpz_partition_size": gpn,
                                "stage3_gather_16bit_weights_on_model_save": n.full_weights_on_save}
        if opt != "none":
            zero["offload_optimizer"] = {"device": opt}
        if par != "none":
            zero["offload_param"] = {"device": par}
        ds_json = {"zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
                   "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
                   "bf16": {"enabled": n.mixed_precision == "bf16"}, "fp16": {"enabled": n.mixed_precision == "fp16"}}
        inline = {"deepspeed_config_file": "ds_config.json", "deepspeed_multinode_launcher": "standard",
                  "zero3_init_flag": inline["zero3_init_flag"]}
        config.pop("mixed_precision")
        notes.append("HYBRID_SHARD became ZeRO++ hpZ (zero_hpz_partition_size = GPUs per node) in ds_config.json")
    else:
        inline["gradient_accumulation_steps"] = "auto"
        inline["gradient_clipping"] = "auto"
    config["deepspeed_config"] = inline
    return dict(sorted(config.items())), ds_json, lost, notes


def to_fsdp(n: Neutral) -> tuple[dict[str, Any], list[str], list[str]]:
    lost: list[str] = []
    notes = [PRECISION_WARNING,
             "FSDP follows the load dtype: load in fp32 to keep DeepSpeed's fp32 optimizer numerics."]
    strategy = SHARDING_TABLE[n.sharding][0]
    if strategy is None:
        lost.append("zero_stage 1: no FSDP twin; SHARD_GRAD_OP (ZeRO-2) used, which also shards gradients")
        strategy = "SHARD_GRAD_OP"
    offload = n.offload_params != "none" or n.offload_optimizer != "none"
    if "nvme" in (n.offload_params, n.offload_optimizer):
        lost.append("nvme offload: FSDP offloads to CPU only; CPU offload used")
    if offload and (n.offload_params == "none") != (n.offload_optimizer == "none"):
        notes.append("FSDP offload is all or nothing: fsdp_offload_params: true offloads parameters, gradients and "
                     "optimizer state")
    fsdp = {
        "fsdp_version": 1,
        "fsdp_sharding_strategy": strategy,
        "fsdp_offload_params": offload,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_backward_prefetch": "BACKWARD_PRE",
        "fsdp_forward_prefetch": False,
        "fsdp_state_dict_type": "FULL_STATE_DICT" if n.full_weights_on_save else "SHARDED_STATE_DICT",
        "fsdp_use_orig_params": True,
        "fsdp_cpu_ram_efficient_loading": n.efficient_loading,
        "fsdp_sync_module_states": True,
    }
    config = {**n.machine, "distributed_type": "FSDP", "downcast_bf16": "no", "mixed_precision": n.mixed_precision,
              "fsdp_config": dict(sorted(fsdp.items()))}
    return dict(sorted(config.items())), lost, notes


def convert(config: dict[str, Any], to: str, ds_json: dict[str, Any] | None = None) -> Conversion:
    if not isinstance(config, dict):
        raise ConvertError("not an accelerate config: expected a mapping")
    if is_deepspeed_json(config) and ds_json is None:  # a DeepSpeed JSON on its own
        config, ds_json = {"distributed_type": "DEEPSPEED", "deepspeed_config": {}}, config
    config = _mapping(config, "the accelerate config")
    kind = config.get("distributed_type")
    if kind in ("FSDP", "DEEPSPEED") and (kind == "FSDP") == (to == "fsdp"):
        # Already the target backend: nothing to translate, so nothing may be lost. Written back unchanged.
        _mapping(config.get("fsdp_config" if kind == "FSDP" else "deepspeed_config"), "fsdp_config"
                 if kind == "FSDP" else "deepspeed_config")
        return Conversion(dict(config), ds_json, [], [f"input is already {to}: written back unchanged"])
    if kind == "FSDP":
        neutral, lost = read_fsdp(config)
    elif kind == "DEEPSPEED":
        neutral, lost = read_deepspeed(config, ds_json)
    else:
        raise ConvertError(f"distributed_type {_shown(kind)}: only FSDP and DEEPSPEED configs can be converted")
    if to == "deepspeed":
        cfg, out_json, more, notes = to_deepspeed(neutral)
    elif to == "fsdp":
        cfg, more, notes = to_fsdp(neutral)
        out_json = None
    else:
        raise ConvertError(f"--to {_shown(to)}: use fsdp or deepspeed")
    return Conversion(cfg, out_json, lost + more, notes)
