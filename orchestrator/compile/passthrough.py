"""Backend pass-through: keys of accelerate's fsdp_config and of DeepSpeed's JSON that the spec has no field for.

`spec.fsdp.config` is merged into the rendered `fsdp_config`, `spec.deepspeed.config` deep-merged into the
DeepSpeed JSON, verbatim. Pass-through never bypasses the mapping rules: a key that a spec field renders
(the ZeRO stage, the sharding strategy, offload devices, precision, batch sizes, the typed options) may
appear only with the value the spec already gives it, and is otherwise an error naming both. Keys are
checked against static lists (no import of accelerate or DeepSpeed here: `validate` stays light):
accelerate's `--fsdp_*` launch options, and DeepSpeed's ZeRO section as its own parser reads it
(DeepSpeed refuses unknown ZeRO keys, so shardctl does too; unknown top-level keys DeepSpeed ignores, so
they are a warning). The lists were taken from accelerate 1.15 and DeepSpeed 0.19.8;
tests/compile/test_passthrough.py checks them against the installed packages.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Iterator
from typing import Any

from orchestrator.spec.models import TrainingJobSpec

# accelerate's fsdp_config keys (its launcher's --fsdp_* options).
FSDP_KEYS = frozenset({
    "fsdp_activation_checkpointing", "fsdp_activation_checkpointing_offload", "fsdp_auto_wrap_policy",
    "fsdp_backward_prefetch", "fsdp_cpu_ram_efficient_loading", "fsdp_forward_prefetch", "fsdp_ignored_modules",
    "fsdp_min_num_params", "fsdp_offload_params", "fsdp_reshard_after_forward", "fsdp_sharding_strategy",
    "fsdp_state_dict_type", "fsdp_sync_module_states", "fsdp_transformer_layer_cls_to_wrap", "fsdp_use_orig_params",
    "fsdp_version",
})
# fsdp_config keys a spec field renders -> that field.
FSDP_OWNED = {
    "fsdp_version": "spec.fsdp.version",
    "fsdp_sharding_strategy": "spec.sharding",
    "fsdp_reshard_after_forward": "spec.sharding",
    "fsdp_offload_params": "spec.offload",
    "fsdp_transformer_layer_cls_to_wrap": "spec.model.layer_class",
    "fsdp_activation_checkpointing": "spec.activation_checkpointing",
    "fsdp_backward_prefetch": "spec.fsdp.backward_prefetch",
    "fsdp_forward_prefetch": "spec.fsdp.forward_prefetch",
    "fsdp_use_orig_params": "spec.fsdp.use_orig_params",
    "fsdp_sync_module_states": "spec.fsdp.sync_module_states",
    "fsdp_cpu_ram_efficient_loading": "spec.fsdp.cpu_ram_efficient_loading",
    "fsdp_state_dict_type": "spec.fsdp.state_dict_type",
}

# DeepSpeed's zero_optimization keys (DeepSpeedZeroConfig, field names and aliases) and its offload sections.
ZERO_KEYS = frozenset({
    "allgather_bucket_size", "allgather_partitions", "allgather_sequential", "compute_grad_norm",
    "contiguous_gradients", "cpu_offload", "cpu_offload_param", "cpu_offload_use_pin_memory", "elastic_checkpoint",
    "enable_sanity_checks", "gather_16bit_weights_on_model_save", "ignore_unused_parameters", "leaf_module",
    "legacy_stage1", "load_from_fp32_weights", "log_trace_cache_warnings", "max_live_parameters",
    "max_reuse_distance", "memory_efficient_linear", "model_persistence_threshold", "module_granularity_threshold",
    "offload_optimizer", "offload_param", "overlap_comm", "override_module_apply", "param_persistence_threshold",
    "parameter_alignment", "pipeline_loading_checkpoint", "prefetch_bucket_size", "reduce_bucket_size",
    "reduce_scatter", "round_robin_gradients", "save_muon_momentum_buffer_in_memory", "stage",
    "stage3_allgather_sequential", "stage3_gather_16bit_weights_on_model_save",
    "stage3_gather_fp16_weights_on_model_save", "stage3_max_live_parameters", "stage3_max_reuse_distance",
    "stage3_model_persistence_threshold", "stage3_module_granularity_threshold", "stage3_param_persistence_threshold",
    "stage3_prefetch_bucket_size", "stage3_use_all_reduce_for_fetch_params", "sub_group_size",
    "use_all_reduce_for_fetch_params", "use_multi_rank_bucket_allreduce", "zenflow", "zero_hpz_partition_size",
    "zero_quantized_gradients", "zero_quantized_nontrainable_weights", "zero_quantized_weights",
})
OFFLOAD_KEYS = {
    "offload_optimizer": frozenset({"buffer_count", "cpuadam_cores_perc", "device", "fast_init", "nvme_path",
                                    "pin_memory", "pipeline_read", "pipeline_write", "ratio", "super_offload"}),
    "offload_param": frozenset({"buffer_count", "buffer_size", "device", "max_in_cpu", "nvme_path", "pin_memory"}),
}
# Top-level sections of DeepSpeed's config JSON (DeepSpeed's "Config JSON" documentation).
DS_TOP_KEYS = frozenset({
    "activation_checkpointing", "aio", "amp", "autotuning", "bf16", "bfloat16", "checkpoint", "comet",
    "comms_logger", "communication_data_type", "compile", "compression_training", "csv_monitor",
    "curriculum_learning", "data_efficiency", "data_types", "dataloader_drop_last", "disable_allgather",
    "dump_state", "eigenvalue", "elasticity", "flops_profiler", "fp16", "gradient_accumulation_steps",
    "gradient_clipping", "gradient_predivide_factor", "graph_harvesting", "hybrid_engine", "memory_breakdown",
    "nebula", "optimizer", "pipeline", "prescale_gradients", "progressive_layer_drop", "quantize_training",
    "scheduler", "seq_parallel_communication_data_type", "sparse_attention", "sparse_gradients",
    "steps_per_print", "tensorboard", "timers", "torch_autocast", "train_batch_size",
    "train_micro_batch_size_per_gpu", "use_data_before_expert_parallelism", "wall_clock_breakdown", "wandb",
    "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer", "zero_optimization",
})
# DeepSpeed JSON paths a spec field renders -> that field.
DS_OWNED = {
    "train_batch_size": "spec.batch",
    "train_micro_batch_size_per_gpu": "spec.batch.micro",
    "gradient_accumulation_steps": "spec.batch",
    "gradient_clipping": "spec.deepspeed.gradient_clipping",
    "fp16.enabled": "spec.precision.mixed",
    "bf16.enabled": "spec.precision.mixed",
    "zero_optimization.stage": "spec.sharding",
    "zero_optimization.zero_hpz_partition_size": "spec.sharding",
    "zero_optimization.offload_optimizer.device": "spec.offload.optimizer",
    "zero_optimization.offload_optimizer.nvme_path": "spec.offload.nvme_path",
    "zero_optimization.offload_param.device": "spec.offload.params",
    "zero_optimization.offload_param.nvme_path": "spec.offload.nvme_path",
    "zero_optimization.overlap_comm": "spec.deepspeed.overlap_comm",
    "zero_optimization.stage3_gather_16bit_weights_on_model_save": "spec.deepspeed.save_16bit_model",
    "zero_optimization.stage3_gather_fp16_weights_on_model_save": "spec.deepspeed.save_16bit_model",
    "zero_optimization.reduce_bucket_size": "spec.deepspeed.reduce_bucket_size",
    "zero_optimization.allgather_bucket_size": "spec.deepspeed.allgather_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size": "spec.deepspeed.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_max_live_parameters": "spec.deepspeed.stage3_max_live_parameters",
    # The same settings under DeepSpeed's field names (its parser reads them beside the "stage3_" aliases).
    "zero_optimization.gather_16bit_weights_on_model_save": "spec.deepspeed.save_16bit_model",
    "zero_optimization.prefetch_bucket_size": "spec.deepspeed.stage3_prefetch_bucket_size",
    "zero_optimization.max_live_parameters": "spec.deepspeed.stage3_max_live_parameters",
    # DeepSpeed's older spellings of offload, which would fight the spec's offload settings.
    "zero_optimization.cpu_offload": "spec.offload.optimizer",
    "zero_optimization.cpu_offload_param": "spec.offload.params",
}
# Owned keys that may still be passed as "auto" when the spec leaves the field unset: accelerate fills them
# from the model's hidden size at run time, which the spec cannot know.
AUTO_WHEN_UNSET = frozenset({"zero_optimization.reduce_bucket_size", "zero_optimization.stage3_prefetch_bucket_size"})

Report = Callable[[str, str, str], None]  # level, field, message


def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted path -> value for every non-mapping value (an empty mapping counts as a value)."""
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            yield from leaves(value, path)
        else:
            yield path, value


def lookup(tree: dict[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` deep-merged in (a mapping into a mapping; anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def did_you_mean(key: str, known: frozenset[str]) -> str:
    """"; did you mean X?" naming the key of `known` closest to a misspelled `key`, or "" when none is close."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return bool(a == b)


def check_fsdp(spec: TrainingJobSpec, rendered: dict[str, Any], report: Report) -> None:
    """`rendered` is the fsdp_config the spec gives without pass-through."""
    for key, value in spec.fsdp.config.items():
        where = f"spec.fsdp.config.{key}"
        if key not in FSDP_KEYS:
            report("error", where, "not an accelerate fsdp_config key (accelerate would ignore it)"
                   + did_you_mean(key, FSDP_KEYS))
        elif key in FSDP_OWNED:
            has, mine = lookup(rendered, key)
            if not has:
                report("error", where, f"set {FSDP_OWNED[key]} instead (it renders this key)")
            elif not _same(value, mine):
                report("error", where, f"{value!r} contradicts {FSDP_OWNED[key]}, which renders {key}: {mine!r}")
    policy = spec.fsdp.config.get("fsdp_auto_wrap_policy")
    if policy is not None and policy != "TRANSFORMER_BASED_WRAP" and spec.model.layer_class:
        report("error", "spec.fsdp.config.fsdp_auto_wrap_policy",
               f"{policy!r} contradicts spec.model.layer_class ({spec.model.layer_class}), which needs "
               "TRANSFORMER_BASED_WRAP")


def check_deepspeed(spec: TrainingJobSpec, rendered: dict[str, Any], report: Report) -> None:
    """`rendered` is the DeepSpeed JSON the spec gives without pass-through."""
    extra = spec.deepspeed.config
    for key in extra:
        if key not in DS_TOP_KEYS:
            report("warning", f"spec.deepspeed.config.{key}",
                   "not a DeepSpeed config section (DeepSpeed ignores keys it does not know)"
                   + did_you_mean(key, DS_TOP_KEYS))
    zero = extra.get("zero_optimization")
    if zero is not None and not isinstance(zero, dict):
        report("error", "spec.deepspeed.config.zero_optimization", "must be a mapping")
        return
    for key, value in (zero or {}).items():
        where = f"spec.deepspeed.config.zero_optimization.{key}"
        if key not in ZERO_KEYS:
            report("error", where,
                   "not a DeepSpeed ZeRO key (DeepSpeed's parser refuses it)" + did_you_mean(key, ZERO_KEYS))
        elif key in OFFLOAD_KEYS:
            if not isinstance(value, dict):
                report("error", where, "must be a mapping")
                continue
            for sub in value:
                if sub not in OFFLOAD_KEYS[key]:
                    report("error", f"{where}.{sub}", "not a DeepSpeed offload key (DeepSpeed's parser refuses it)"
                           + did_you_mean(sub, OFFLOAD_KEYS[key]))
            if value and not lookup(rendered, f"zero_optimization.{key}")[0]:
                field = "spec.offload.optimizer" if key == "offload_optimizer" else "spec.offload.params"
                report("error", where, f"offload settings, but {field} is none: set {field} first")
    for path, value in leaves(extra):
        owner = DS_OWNED.get(path)
        if owner is None:
            continue
        has, mine = lookup(rendered, path)
        where = f"spec.deepspeed.config.{path}"
        if not has:
            if value == "auto" and path in AUTO_WHEN_UNSET:
                continue
            report("error", where, f"set {owner} instead (it renders this key)")
        elif not _same(value, mine):
            report("error", where, f"{value!r} contradicts {owner}, which renders {path}: {mine!r}")


def dropped_on_switch(spec: TrainingJobSpec) -> list[str]:
    """The pass-through keys a move to the other backend leaves behind, as dotted paths."""
    if spec.backend == "deepspeed":
        return [f"deepspeed.config.{path}" for path, _ in leaves(spec.deepspeed.config)]
    return [f"fsdp.config.{key}" for key in spec.fsdp.config]
