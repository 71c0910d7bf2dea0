"""Pure emitters: spec -> accelerate config (as `accelerate config` writes it) and DeepSpeed JSON.

Key names and value spellings follow accelerate 1.x's own questionnaire
(commands/config/cluster.py) and the traps found by running accelerate here (docs/design.md):
FSDP1 gets `fsdp_sharding_strategy` (the launcher exports FSDP_SHARDING_STRATEGY and the
plugin reads it first), FSDP2 a boolean `fsdp_reshard_after_forward`; with a
`deepspeed_config_file` no zero/offload/accumulation/clipping key and no top-level
mixed_precision may appear in the accelerate config (accelerate raises at launch).
"""

from __future__ import annotations

from typing import Any

from orchestrator.compile import passthrough, rules
from orchestrator.spec.models import TrainingJobSpec

DS_CONFIG_NAME = "ds_config.json"
ACCELERATE_CONFIG_NAME = "accelerate_config.yaml"

_FP16_DEFAULTS = {"loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16, "hysteresis": 2,
                  "min_loss_scale": 1}


def machine_keys(spec: TrainingJobSpec) -> dict[str, Any]:
    """The keys of an accelerate config that say where it runs (machines, processes, rendezvous), as every config
    rendered for `spec` has them, whichever the backend."""
    return {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "machine_rank": 0,
        "main_training_function": "main",
        "num_machines": spec.resources.nodes,
        "num_processes": spec.world_size,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }


def fsdp_config(spec: TrainingJobSpec) -> dict[str, Any]:
    """The fsdp_config section: what the spec renders, then spec.fsdp.config's pass-through keys."""
    return dict(sorted({**fsdp_config_base(spec), **spec.fsdp.config}.items()))


def fsdp_config_base(spec: TrainingJobSpec) -> dict[str, Any]:
    """What the spec's fields render, without pass-through (the rules compare the pass-through with it)."""
    flags = rules.effective_fsdp_flags(spec)
    f = spec.fsdp
    cfg: dict[str, Any] = {"fsdp_version": f.version}
    if f.version == 1:
        cfg["fsdp_sharding_strategy"] = rules.fsdp_strategy(spec)
        cfg["fsdp_backward_prefetch"] = f.backward_prefetch
        cfg["fsdp_forward_prefetch"] = f.forward_prefetch
        cfg["fsdp_use_orig_params"] = flags["use_orig_params"]
        cfg["fsdp_sync_module_states"] = flags["sync_module_states"]
    else:
        cfg["fsdp_reshard_after_forward"] = spec.sharding == "full"
    cfg["fsdp_offload_params"] = flags["offload"]
    cfg["fsdp_auto_wrap_policy"] = "TRANSFORMER_BASED_WRAP"
    if spec.model.layer_class:
        cfg["fsdp_transformer_layer_cls_to_wrap"] = spec.model.layer_class
    cfg["fsdp_state_dict_type"] = f.state_dict_type
    cfg["fsdp_cpu_ram_efficient_loading"] = flags["cpu_ram_efficient_loading"]
    cfg["fsdp_activation_checkpointing"] = spec.activation_checkpointing
    return dict(sorted(cfg.items()))


def accelerate_config(spec: TrainingJobSpec, config_dir: str) -> dict[str, Any]:
    """The accelerate config file. `config_dir` is where the target puts the files (for deepspeed_config_file)."""
    cfg = machine_keys(spec)
    if spec.backend == "fsdp":
        cfg["distributed_type"] = "FSDP"
        cfg["downcast_bf16"] = "no"
        cfg["mixed_precision"] = spec.precision.mixed
        cfg["fsdp_config"] = fsdp_config(spec)
    else:
        ds_flags = rules.effective_ds_flags(spec)
        cfg["distributed_type"] = "DEEPSPEED"
        cfg["deepspeed_config"] = {
            "deepspeed_config_file": f"{config_dir.rstrip('/')}/{DS_CONFIG_NAME}",
            # 'standard' = torchrun on every node; the other launchers need pdsh/ssh between nodes.
            "deepspeed_multinode_launcher": "standard",
            "zero3_init_flag": ds_flags["zero3_init"],
        }
    return dict(sorted(cfg.items()))


def _offload_section(device: str, nvme_path: str | None) -> dict[str, Any]:
    section: dict[str, Any] = {"device": device, "pin_memory": True}
    if device == "nvme":
        section["nvme_path"] = nvme_path
    return section


def deepspeed_json(spec: TrainingJobSpec) -> dict[str, Any] | None:
    """The DeepSpeed config with concrete batch values (no "auto": every attempt states what it ran), with
    spec.deepspeed.config's pass-through keys deep-merged in (the rules have checked they agree with the spec)."""
    if spec.backend != "deepspeed":
        return None
    return passthrough.merged(deepspeed_json_base(spec), spec.deepspeed.config)


def deepspeed_json_base(spec: TrainingJobSpec) -> dict[str, Any]:
    """What the spec's fields render, without pass-through."""
    d = spec.deepspeed
    stage = rules.zero_stage(spec)
    zero: dict[str, Any] = {"stage": stage}
    if stage > 0:
        zero.update({"overlap_comm": d.overlap_comm, "contiguous_gradients": True})
    if stage in (1, 2):
        zero.update({"allgather_partitions": True, "reduce_scatter": True})
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        value = getattr(d, key)
        if value is not None and stage > 0:
            zero[key] = value
    if stage == 3:
        for key in ("stage3_prefetch_bucket_size", "stage3_max_live_parameters"):
            value = getattr(d, key)
            if value is not None:
                zero[key] = value
        zero["stage3_gather_16bit_weights_on_model_save"] = rules.effective_ds_flags(spec)["save_16bit_model"]
    if spec.sharding == "hybrid":
        zero["zero_hpz_partition_size"] = spec.resources.gpus_per_node
    if spec.offload.optimizer != "none":
        zero["offload_optimizer"] = _offload_section(spec.offload.optimizer, spec.offload.nvme_path)
    if spec.offload.params != "none":
        zero["offload_param"] = _offload_section(spec.offload.params, spec.offload.nvme_path)

    mixed = spec.precision.mixed
    return {
        "train_micro_batch_size_per_gpu": spec.batch.micro,
        "gradient_accumulation_steps": rules.grad_accum(spec),
        "train_batch_size": rules.global_batch(spec),
        "gradient_clipping": d.gradient_clipping,
        "zero_optimization": zero,
        "fp16": {"enabled": True, **_FP16_DEFAULTS} if mixed == "fp16" else {"enabled": False},
        "bf16": {"enabled": mixed == "bf16"},
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
