"""Rendered artifacts pass accelerate's and DeepSpeed's own parsers, across a hypothesis sweep.

accelerate: its config loader (unknown keys raise), `_validate_launch_command` (merges the
file into launch arguments as `accelerate launch` does), the launcher's environment
(prepare_multi_gpu_env / prepare_deepspeed_cmd_env), and finally the FSDP or DeepSpeed plugin
built from that environment, which is what the training process does.
DeepSpeed: `DeepSpeedConfig`, with the real world size (it checks the batch arithmetic).
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings

from orchestrator.compile import compile_job
from tests.helpers import valid_specs

# DeepSpeed picks its accelerator once, when it is first imported: CPU unless DS_ACCELERATOR says otherwise,
# without leaving the variable set for the rest of the run (patch.dict puts the environment back).
with mock.patch.dict(os.environ, {"DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
    from deepspeed.runtime.config import DeepSpeedConfig


def deepspeed_parses(ds_config: dict, world_size: int) -> DeepSpeedConfig:
    """DeepSpeedConfig as rank 0 of `world_size` (it asks deepspeed.comm, which needs a process group)."""
    import deepspeed.runtime.config as ds_module

    with mock.patch.object(ds_module.dist, "get_rank", return_value=0), \
            mock.patch.object(ds_module.dist, "get_world_size", return_value=world_size):
        return DeepSpeedConfig(ds_config)


def accelerate_accepts(config_dir: Path, compiled) -> object:
    spec = compiled.job.spec
    loaded = load_config_from_file(str(config_dir / "accelerate_config.yaml"))
    assert loaded.num_processes == spec.world_size
    argv = compiled.launch.resolve({"MACHINE_RANK": str(spec.resources.nodes - 1), "MAIN_PROCESS_IP": "127.0.0.1",
                                    "MAIN_PROCESS_PORT": "29500"})
    args = launch_command_parser().parse_args(argv[2:])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if spec.backend == "deepspeed":
        assert args.use_deepspeed and not args.use_fsdp
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        cmd, env = prepare_deepspeed_cmd_env(args)
        assert cmd is None, "multi-node must use the standard (torchrun) launcher, not pdsh"
        with mock.patch.dict(os.environ, env, clear=True):
            return DeepSpeedPlugin()  # raises if the accelerate config and the JSON conflict
    assert args.use_fsdp and not args.use_deepspeed
    env = prepare_multi_gpu_env(args)
    assert env["FSDP_VERSION"] == str(spec.fsdp.version)
    # The plugin's only device-dependent step: sync_module_states asks which CUDA device to use.
    # These configs are for GPU nodes, so stand in for one there (and nowhere else).
    import accelerate.utils.dataclasses as acc_dc

    with mock.patch.dict(os.environ, env, clear=True), \
            mock.patch.object(acc_dc, "is_cuda_available", return_value=True), \
            mock.patch("torch.cuda.current_device", return_value=0):
        return FullyShardedDataParallelPlugin()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(job=valid_specs())
def test_every_valid_spec_passes_accelerate_and_deepspeed(job, tmp_path: Path) -> None:
    compiled = compile_job(job, config_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "ckpt"))
    for name, text in compiled.files().items():
        (tmp_path / name).write_text(text)
    plugin = accelerate_accepts(tmp_path, compiled)
    spec = job.spec
    if spec.backend == "deepspeed":
        from orchestrator.compile.rules import zero_stage

        assert plugin.zero_stage == zero_stage(spec)
        ds = deepspeed_parses(compiled.ds_config, spec.world_size)
        assert ds.world_size == spec.world_size
        assert ds.zero_config.stage == zero_stage(spec)
        assert ds.train_micro_batch_size_per_gpu == spec.batch.micro
        assert ds.train_batch_size == spec.batch.global_
        if spec.sharding == "hybrid":
            assert ds.zero_config.zero_hpz_partition_size == spec.resources.gpus_per_node
        assert (ds.zero_config.offload_optimizer is None
                or ds.zero_config.offload_optimizer.device == spec.offload.optimizer)
        assert ds.zero_config.offload_param is None or ds.zero_config.offload_param.device == spec.offload.params
    else:
        offload = spec.offload.optimizer != "none" or spec.offload.params != "none"
        assert bool(plugin.cpu_offload.offload_params if spec.fsdp.version == 1
                    else plugin.cpu_offload.__class__.__name__ == "CPUOffloadPolicy") == offload
        if spec.fsdp.version == 1:
            from orchestrator.compile.rules import fsdp_strategy

            assert plugin.sharding_strategy.name == fsdp_strategy(spec)
            assert plugin.sync_module_states or not plugin.cpu_ram_efficient_loading
            if spec.torch_compile:
                assert plugin.use_orig_params
        else:
            assert plugin.reshard_after_forward is (spec.sharding == "full")
        assert plugin.activation_checkpointing == spec.activation_checkpointing
