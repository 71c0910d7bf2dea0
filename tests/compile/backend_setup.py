"""The training setup as accelerate's and DeepSpeed's own parsers read it, for comparing two configs.

`real_setup` feeds an accelerate config file through what `accelerate launch` does (config loader,
`_validate_launch_command`, the launcher's environment) and builds the FSDP or DeepSpeed plugin from that
environment as the training process would; for DeepSpeed it then fills "auto" values the way accelerate
does at `prepare()` time and parses the result with `DeepSpeedConfig`. The result is a flat mapping of
what matters (see `orchestrator.compile.setup`), so two configs are the same setup when the mappings agree.
Importing this module needs the train extra (accelerate, deepspeed).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any
from unittest import mock

from orchestrator.compile.passthrough import leaves

# DeepSpeed picks its accelerator once, when it is first imported: CPU unless DS_ACCELERATOR says otherwise,
# without leaving the variable set for the rest of the run (patch.dict puts the environment back).
with mock.patch.dict(os.environ, {"DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}):
    import deepspeed  # noqa: F401
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env


def _enum_name(value: Any) -> Any:
    return getattr(value, "name", value)


def _deepspeed_parses(ds_config: dict, world_size: int) -> Any:
    import deepspeed.runtime.config as ds_module

    with mock.patch.object(ds_module.dist, "get_rank", return_value=0), \
            mock.patch.object(ds_module.dist, "get_world_size", return_value=world_size):
        return ds_module.DeepSpeedConfig(ds_config)


def _fill_auto(config: dict, mixed: str, micro: int, accum: int, world: int) -> dict:
    """What accelerate's DeepSpeed plugin and `Accelerator.prepare` put in place of "auto" (accelerate 1.15):
    the dataloader's batch size, the accelerator's accumulation, clipping 1.0, no 16-bit save, the mixed
    precision of the launch. Bucket sizes from the model's hidden size stay "auto" (no model here)."""
    out = copy.deepcopy(config)
    out.setdefault("gradient_accumulation_steps", 1)
    if out.get("gradient_accumulation_steps") == "auto":
        out["gradient_accumulation_steps"] = accum
    if out.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        out["train_micro_batch_size_per_gpu"] = micro
    if out.get("train_batch_size", "auto") == "auto":
        out["train_batch_size"] = out["train_micro_batch_size_per_gpu"] * out["gradient_accumulation_steps"] * world
    if out.get("gradient_clipping") == "auto":
        out["gradient_clipping"] = 1.0
    zero = out.get("zero_optimization", {})
    if zero.get("stage3_gather_16bit_weights_on_model_save") == "auto":
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    for name in ("fp16", "bf16"):
        section = out.setdefault(name, {"enabled": False})
        if section.get("enabled") == "auto":
            section["enabled"] = mixed == name
    return out


def real_setup(config_file: Path, argv_extra: list[str], *, micro: int = 1, accum: int = 1) -> dict[str, Any]:
    """The setup `accelerate launch --config_file config_file [argv_extra] train.py` would train with."""
    args = launch_command_parser().parse_args(["--config_file", str(config_file), *argv_extra, "train.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    out: dict[str, Any] = {"num_processes": args.num_processes, "num_machines": args.num_machines}
    if args.use_deepspeed:
        out["distributed_type"] = "DEEPSPEED"
        fields = list(defaults.deepspeed_config) if defaults else []
        if mp_from_config and "deepspeed_config_file" not in fields:
            fields.append("mixed_precision")
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
        with mock.patch.dict(os.environ, env, clear=True):
            plugin = DeepSpeedPlugin()
        mixed = env.get("ACCELERATE_MIXED_PRECISION", "no")
        plugin.set_mixed_precision(mixed)
        world = args.num_processes
        ds = _fill_auto(plugin.deepspeed_config, mixed, micro, accum, world)
        parsed = _deepspeed_parses(ds, world)
        zero = parsed.zero_config
        out.update({
            "zero_stage": zero.stage,
            "offload_optimizer": zero.offload_optimizer.device if zero.offload_optimizer else "none",
            "offload_param": zero.offload_param.device if zero.offload_param else "none",
            "zero_hpz_partition_size": zero.zero_hpz_partition_size,
            "zero3_init_flag": bool(plugin.zero3_init_flag),
            "save_16bit_model": bool(zero.gather_16bit_weights_on_model_save),
            "fp16": bool(parsed.float16_config.enabled), "bf16": bool(parsed.bfloat16_config.enabled),
            "train_micro_batch_size_per_gpu": parsed.train_micro_batch_size_per_gpu,
            "train_batch_size": parsed.train_batch_size,
            "gradient_accumulation_steps": parsed.gradient_accumulation_steps,
            "gradient_clipping": float(parsed.gradient_clipping),
        })
        out["json"] = dict(leaves(ds))  # every key, for the pass-through comparison
        return out
    assert args.use_fsdp, "only FSDP and DeepSpeed configs are compared"
    out["distributed_type"] = "FSDP"
    out["mixed_precision"] = args.mixed_precision
    env = prepare_multi_gpu_env(args)
    import accelerate.utils.dataclasses as acc_dc

    with mock.patch.dict(os.environ, env, clear=True), \
            mock.patch.object(acc_dc, "is_cuda_available", return_value=True), \
            mock.patch("torch.cuda.current_device", return_value=0):
        plugin = FullyShardedDataParallelPlugin()
    version = plugin.fsdp_version
    out.update({
        "fsdp_version": version,
        "sharding": _enum_name(plugin.sharding_strategy) if version == 1 else bool(plugin.reshard_after_forward),
        "offload_params": bool(plugin.cpu_offload.offload_params) if version == 1
        else type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy",
        "state_dict_type": _enum_name(plugin.state_dict_type),
        "auto_wrap_policy": env.get("FSDP_AUTO_WRAP_POLICY", "NO_WRAP"),
        "transformer_layer_cls_to_wrap": env.get("FSDP_TRANSFORMER_CLS_TO_WRAP"),
        "min_num_params": int(env.get("FSDP_MIN_NUM_PARAMS", 0)),
        "activation_checkpointing": bool(plugin.activation_checkpointing),
        "backward_prefetch": _enum_name(plugin.backward_prefetch),
        "forward_prefetch": bool(plugin.forward_prefetch),
        "use_orig_params": bool(plugin.use_orig_params),
        "sync_module_states": bool(plugin.sync_module_states),
        "cpu_ram_efficient_loading": bool(plugin.cpu_ram_efficient_loading),
    })
    return out
