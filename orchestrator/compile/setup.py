"""The training setup an accelerate config (and its DeepSpeed JSON) stands for, with the backends' defaults filled.

`shardctl import` reads the original and the config rendered from the imported spec through this one
function and lists every field that differs. It mirrors what accelerate 1.15's launcher and plugins and
DeepSpeed 0.19's parser do with a missing key or an "auto" value (found by running them:
tests/compile/backend_setup.py reads the same configs with the real parsers, and tests/compile/test_import.py
checks the two readings agree). Pure: no import of accelerate or DeepSpeed.
"""

from __future__ import annotations

from typing import Any

from orchestrator.compile.passthrough import leaves

_FSDP_NUMERIC = {1: "FULL_SHARD", 2: "SHARD_GRAD_OP", 3: "NO_SHARD", 4: "HYBRID_SHARD", 5: "HYBRID_SHARD_ZERO2"}
AUTO = "auto (set at run time)"


def as_bool(value: Any) -> bool:
    """A config value as accelerate reads a flag: true, 1 or yes (any case, a bool or a string) is True, anything
    else False."""
    return str(value).lower() in ("true", "1", "yes")


def fsdp_setup(config: dict[str, Any]) -> dict[str, Any]:
    """The FSDP setup an accelerate config stands for (its `fsdp_config`, the launcher's defaults filled): the
    FSDP fields of read_setup, the sharding strategy as accelerate names it."""
    fc = config.get("fsdp_config") or {}
    version = int(fc.get("fsdp_version", 1))
    out: dict[str, Any] = {"fsdp_version": version, "mixed_precision": str(config.get("mixed_precision") or "no")}
    if version == 1:
        raw = fc.get("fsdp_sharding_strategy", "FULL_SHARD")  # the launcher always exports it
        out["sharding"] = _FSDP_NUMERIC.get(int(raw), raw) if str(raw).isdigit() else str(raw).upper()
        out["state_dict_type"] = fc.get("fsdp_state_dict_type", "FULL_STATE_DICT")
        prefetch = fc.get("fsdp_backward_prefetch")
        out["backward_prefetch"] = None if prefetch in (None, "NO_PREFETCH") else prefetch
        out["use_orig_params"] = as_bool(fc.get("fsdp_use_orig_params", True))
        out["sync_module_states"] = as_bool(fc.get("fsdp_sync_module_states", True))
    else:
        out["sharding"] = as_bool(fc.get("fsdp_reshard_after_forward", True))
        out["state_dict_type"] = fc.get("fsdp_state_dict_type", "SHARDED_STATE_DICT")
        out["backward_prefetch"] = None
        out["use_orig_params"] = False
        out["sync_module_states"] = False
    out["forward_prefetch"] = version == 1 and as_bool(fc.get("fsdp_forward_prefetch", False))
    out["offload_params"] = as_bool(fc.get("fsdp_offload_params", False))
    policy = fc.get("fsdp_auto_wrap_policy") or "NO_WRAP"
    out["auto_wrap_policy"] = policy
    out["transformer_layer_cls_to_wrap"] = (fc.get("fsdp_transformer_layer_cls_to_wrap")
                                            if policy == "TRANSFORMER_BASED_WRAP" else None)
    out["min_num_params"] = int(fc.get("fsdp_min_num_params", 100_000_000)) if policy == "SIZE_BASED_WRAP" else None
    out["activation_checkpointing"] = as_bool(fc.get("fsdp_activation_checkpointing", False))
    out["cpu_ram_efficient_loading"] = as_bool(fc.get("fsdp_cpu_ram_efficient_loading", True))
    return out


def inline_deepspeed_json(inline: dict[str, Any], mixed: str, world: int) -> dict[str, Any]:
    """The DeepSpeed JSON accelerate's DeepSpeed plugin builds from a config's inline `deepspeed_config` keys (a
    config without a `deepspeed_config_file`), for mixed precision `mixed`."""
    accum = inline.get("gradient_accumulation_steps", "auto")
    clip = inline.get("gradient_clipping", "auto")
    zero: dict[str, Any] = {"stage": int(inline.get("zero_stage", 2)),
                            "stage3_gather_16bit_weights_on_model_save": as_bool(inline.get("zero3_save_16bit_model",
                                                                                          False))}
    for what in ("optimizer", "param"):
        device = inline.get(f"offload_{what}_device") or "none"
        section: dict[str, Any] = {"device": device}
        if device == "nvme":
            section["nvme_path"] = inline.get(f"offload_{what}_nvme_path")
        zero[f"offload_{what}"] = section
    return {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": accum, "gradient_clipping": clip, "zero_optimization": zero,
            # accelerate adds fp16 with auto_cast when the JSON it built has no fp16 section
            "fp16": {"enabled": True, "auto_cast": True} if mixed == "fp16" else {"enabled": False},
            "bf16": {"enabled": mixed == "bf16"}}


def _deepspeed(config: dict[str, Any], ds_json: dict[str, Any] | None, world: int) -> dict[str, Any]:
    inline = config.get("deepspeed_config") or {}
    mixed = str(config.get("mixed_precision") or "no")
    ds = ds_json if ds_json is not None else inline_deepspeed_json(inline, mixed, world)
    zero = ds.get("zero_optimization") or {}
    stage = int(zero.get("stage", 0))

    def device(section: str, legacy: str) -> str:
        sub = zero.get(section)
        if isinstance(sub, dict) and sub.get("device"):
            return str(sub["device"])
        return "cpu" if zero.get(legacy) is True else "none"

    def enabled(name: str) -> bool:
        value = (ds.get(name) or {}).get("enabled", False)
        return mixed == name if value == "auto" else as_bool(value)

    def concrete(key: str, default: Any) -> Any:
        value = ds.get(key, default)
        return AUTO if value == "auto" else value

    save = zero.get("stage3_gather_16bit_weights_on_model_save", zero.get("stage3_gather_fp16_weights_on_model_save",
                                                                        False))
    clip = ds.get("gradient_clipping", "auto")  # accelerate puts "auto" there, then 1.0
    init = as_bool(inline.get("zero3_init_flag", stage == 3)) and stage == 3
    return {
        "zero_stage": stage,
        "offload_optimizer": device("offload_optimizer", "cpu_offload"),
        "offload_param": device("offload_param", "cpu_offload_param"),
        "zero_hpz_partition_size": int(zero.get("zero_hpz_partition_size", 1)),
        "zero3_init_flag": init,
        "save_16bit_model": False if save == "auto" else as_bool(save) and stage == 3,
        "fp16": enabled("fp16"), "bf16": enabled("bf16"),
        "train_micro_batch_size_per_gpu": concrete("train_micro_batch_size_per_gpu", AUTO),
        "train_batch_size": concrete("train_batch_size", AUTO),
        "gradient_accumulation_steps": concrete("gradient_accumulation_steps", 1),
        "gradient_clipping": 1.0 if clip == "auto" else float(clip),
        "json": dict(leaves(ds)),
    }


def read_setup(config: dict[str, Any], ds_json: dict[str, Any] | None = None) -> dict[str, Any]:
    """What matters about the run: field -> value (the same fields as tests/compile/backend_setup.py)."""
    kind = config.get("distributed_type")
    processes, machines = int(config.get("num_processes", 1)), int(config.get("num_machines", 1))
    out: dict[str, Any] = {"distributed_type": kind, "num_processes": processes, "num_machines": machines}
    out.update(fsdp_setup(config) if kind == "FSDP" else _deepspeed(config, ds_json, processes))
    return out


# DeepSpeed JSON keys the fields above already compare (with "auto" and defaults resolved).
STRUCTURED = frozenset({
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
    "fp16.enabled", "bf16.enabled", "zero_optimization.stage", "zero_optimization.zero_hpz_partition_size",
    "zero_optimization.cpu_offload", "zero_optimization.cpu_offload_param",
    "zero_optimization.stage3_gather_16bit_weights_on_model_save",
    "zero_optimization.stage3_gather_fp16_weights_on_model_save",
})


def differences(original: dict[str, Any], rendered: dict[str, Any]) -> list[str]:
    """One line per field whose value differs; for DeepSpeed, every key of the original JSON counts."""
    lines = []
    for key in original:
        if key == "json":
            continue
        if original.get(key) != rendered.get(key):
            lines.append(f"{key}: {original.get(key)!r} -> {rendered.get(key)!r}")
    mine, theirs = original.get("json", {}), rendered.get("json", {})
    for path, value in mine.items():
        if path in STRUCTURED or path.rsplit(".", 1)[-1] in ("device", "nvme_path"):
            continue  # compared above, as the backends read them
        if path in theirs and theirs[path] != value and not (value == "auto" or theirs[path] == "auto"):
            lines.append(f"{path}: {value!r} -> {theirs[path]!r}")
        elif path not in theirs:
            lines.append(f"{path}: {value!r} -> not set")
    return lines
