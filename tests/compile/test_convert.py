from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from orchestrator.compile import compile_job
from orchestrator.compile.convert import ConvertError, convert
from tests.helpers import job

SEED_FSDP = """
compute_environment: LOCAL_MACHINE
debug: false
distributed_type: FSDP
downcast_bf16: 'no'
fsdp_config:
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_backward_prefetch_policy: BACKWARD_PRE
  fsdp_forward_prefetch: false
  fsdp_cpu_ram_efficient_loading: true
  fsdp_offload_params: false
  fsdp_sharding_strategy: FULL_SHARD
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_sync_module_states: true
  fsdp_transformer_layer_cls_to_wrap: BertLayer
  fsdp_use_orig_params: true
machine_rank: 0
main_training_function: main
mixed_precision: bf16
num_machines: 1
num_processes: 2
rdzv_backend: static
same_network: true
use_cpu: false
"""

TWINS = ("fsdp_sharding_strategy", "fsdp_offload_params", "fsdp_cpu_ram_efficient_loading", "fsdp_state_dict_type")


def test_seed_fsdp_config_to_deepspeed() -> None:
    out = convert(yaml.safe_load(SEED_FSDP), "deepspeed")
    ds = out.config["deepspeed_config"]
    assert out.config["distributed_type"] == "DEEPSPEED"
    assert ds["zero_stage"] == 3 and ds["zero3_init_flag"] is True  # FULL_SHARD = ZeRO-3; loading twin
    assert out.config["mixed_precision"] == "bf16" and out.config["num_processes"] == 2
    lost = "\n".join(out.lost)
    for key in ("fsdp_transformer_layer_cls_to_wrap", "fsdp_use_orig_params", "fsdp_backward_prefetch_policy"):
        assert key in lost
    assert any("fp32 master weights" in n for n in out.notes)


@pytest.mark.parametrize("strategy,offload,state", [
    ("FULL_SHARD", False, "SHARDED_STATE_DICT"), ("SHARD_GRAD_OP", True, "SHARDED_STATE_DICT"),
    ("NO_SHARD", False, "SHARDED_STATE_DICT"), ("FULL_SHARD", True, "FULL_STATE_DICT"),
])
def test_round_trip_keeps_settings_with_twins(strategy: str, offload: bool, state: str) -> None:
    original = yaml.safe_load(SEED_FSDP)
    original["fsdp_config"].update(fsdp_sharding_strategy=strategy, fsdp_offload_params=offload,
                                   fsdp_state_dict_type=state)
    if strategy != "FULL_SHARD":
        original["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] = False  # its twin exists at ZeRO-3 only
    if strategy == "NO_SHARD":
        original["fsdp_config"]["fsdp_offload_params"] = False  # ZeRO-0 cannot offload
    there = convert(original, "deepspeed")
    back = convert(there.config, "fsdp", there.ds_config).config
    for key in TWINS:
        assert back["fsdp_config"][key] == original["fsdp_config"][key], key
    for key in ("mixed_precision", "num_processes", "num_machines", "machine_rank", "distributed_type"):
        assert back[key] == original[key]


def test_round_trip_hybrid_through_a_ds_json() -> None:
    original = yaml.safe_load(SEED_FSDP)
    original.update(num_machines=2, num_processes=16)
    original["fsdp_config"]["fsdp_sharding_strategy"] = "HYBRID_SHARD"
    there = convert(original, "deepspeed")
    assert there.ds_config["zero_optimization"] == {"stage": 3, "zero_hpz_partition_size": 8,
                                                    "stage3_gather_16bit_weights_on_model_save": False}
    back = convert(there.config, "fsdp", there.ds_config).config
    assert back["fsdp_config"]["fsdp_sharding_strategy"] == "HYBRID_SHARD"


def test_rendered_deepspeed_config_converts_to_fsdp(tmp_path: Path) -> None:
    c = compile_job(job(backend="deepspeed", sharding="grad_op", offload={"optimizer": "cpu"}),
                    config_dir=str(tmp_path), checkpoint_dir="/c")
    out = convert(c.accelerate_config, "fsdp", c.ds_config)
    fc = out.config["fsdp_config"]
    assert fc["fsdp_sharding_strategy"] == "SHARD_GRAD_OP" and fc["fsdp_offload_params"] is True
    assert any("all or nothing" in n for n in out.notes)
    assert any("gradient_clipping" in line for line in out.lost)
    json.dumps(out.config)


def test_zero1_to_fsdp_is_listed() -> None:
    out = convert({"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 1}}, "fsdp")
    assert out.config["fsdp_config"]["fsdp_sharding_strategy"] == "SHARD_GRAD_OP"
    assert any("zero_stage 1" in line for line in out.lost)


def test_not_a_backend_config() -> None:
    with pytest.raises(ConvertError):
        convert({"distributed_type": "MULTI_GPU"}, "fsdp")


@pytest.mark.parametrize("config,ds_json,needle", [
    ({"distributed_type": "FSDP", "fsdp_config": "FULL_SHARD"}, None, "fsdp_config must be a mapping"),
    ({"distributed_type": "FSDP", "fsdp_config": {"fsdp_sharding_strategy": ["FULL_SHARD"]}}, None,
     "has no DeepSpeed twin"),
    ({"distributed_type": "FSDP", "fsdp_config": {"fsdp_sharding_strategy": "9" * 5000}}, None,
     "has no DeepSpeed twin"),
    ({"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": -1}}, None, "from 0 to 3"),
    ({"distributed_type": "DEEPSPEED"}, [1], "the DeepSpeed config file must be a mapping"),
    ({"distributed_type": "DEEPSPEED"}, {"zero_optimization": {"stage": "3x"}}, "zero_optimization.stage"),
    ({"distributed_type": "DEEPSPEED"}, {"zero_optimization": {"offload_param": "cpu"}}, "must be a mapping"),
    ({"distributed_type": "DEEPSPEED"}, {"zero_optimization": {"stage": 3, "zero_hpz_partition_size": 0.5}},
     "zero_hpz_partition_size must be a whole number"),
    ({"distributed_type": {"a": 1}}, None, "only FSDP and DEEPSPEED"),
])
def test_hostile_configs_are_convert_errors(config: dict, ds_json, needle: str) -> None:
    with pytest.raises(ConvertError, match=needle):
        convert(config, "fsdp" if config["distributed_type"] == "DEEPSPEED" else "deepspeed", ds_json)


def test_fsdp_to_fsdp_keeps_every_key() -> None:
    original = yaml.safe_load(SEED_FSDP)
    original["fsdp_config"]["fsdp_activation_checkpointing"] = True
    out = convert(original, "fsdp")
    assert out.config == original and out.lost == []
    assert out.config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer"


def test_a_deepspeed_json_alone_converts() -> None:
    ds = {"zero_optimization": {"stage": 2, "sub_group_size": 1e9}, "train_micro_batch_size_per_gpu": 4}
    out = convert(ds, "fsdp")
    assert out.config["fsdp_config"]["fsdp_sharding_strategy"] == "SHARD_GRAD_OP"
    assert any(line.startswith("zero_optimization.sub_group_size") for line in out.lost)


def test_top_level_keys_cross_and_reasons_are_per_key() -> None:
    original = yaml.safe_load(SEED_FSDP)
    original["dynamo_config"] = {"dynamo_backend": "INDUCTOR"}
    original["fsdp_config"]["fsdp_activation_checkpointing"] = True
    out = convert(original, "deepspeed")
    assert out.config["dynamo_config"] == {"dynamo_backend": "INDUCTOR"} and out.config["same_network"] is True
    why = next(line for line in out.lost if line.startswith("fsdp_config.fsdp_activation_checkpointing"))
    assert "training script must enable it" in why and "partitions" not in why
