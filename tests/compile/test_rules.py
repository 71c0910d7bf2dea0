"""One test per row of the seeds' mapping table and per restriction: each fails if the rule changes."""

from __future__ import annotations

import pytest

from orchestrator.compile import CompileError, compile_job
from orchestrator.compile.rules import PRECISION_WARNING, check
from tests.helpers import job


def compiled(**spec):
    return compile_job(job(**spec), config_dir="/cfg", checkpoint_dir="/ckpt")


def findings(**spec):
    return {(f.level, f.field): f.message for f in check(job(**spec))}


# --- mapping rows: FULL_SHARD = ZeRO-3, SHARD_GRAD_OP = ZeRO-2, NO_SHARD = ZeRO-0, HYBRID_SHARD = ZeRO++ hpZ
@pytest.mark.parametrize("level,strategy,stage", [
    ("full", "FULL_SHARD", 3), ("grad_op", "SHARD_GRAD_OP", 2), ("none", "NO_SHARD", 0),
])
def test_mapping_row(level: str, strategy: str, stage: int) -> None:
    fsdp_config = compiled(backend="fsdp", sharding=level).accelerate_config["fsdp_config"]
    assert fsdp_config["fsdp_sharding_strategy"] == strategy
    ds = compiled(backend="deepspeed", sharding=level).ds_config["zero_optimization"]
    assert ds["stage"] == stage
    assert "zero_hpz_partition_size" not in ds


def test_hybrid_is_zero_plus_plus_hpz_with_gpus_per_node() -> None:
    res = {"nodes": 2, "gpus_per_node": 8}
    assert compiled(backend="fsdp", sharding="hybrid", resources=res).accelerate_config["fsdp_config"][
        "fsdp_sharding_strategy"] == "HYBRID_SHARD"
    zero = compiled(backend="deepspeed", sharding="hybrid", resources=res).ds_config["zero_optimization"]
    assert zero["stage"] == 3 and zero["zero_hpz_partition_size"] == 8


@pytest.mark.parametrize("spelling,level", [
    ("FULL_SHARD", "full"), ("SHARD_GRAD_OP", "grad_op"), ("NO_SHARD", "none"), ("HYBRID_SHARD", "hybrid"),
    ("zero3", "full"), ("ZeRO-2", "grad_op"), (3, "full"), (0, "none"), (1, "optimizer"), ("stage1", "optimizer"),
])
def test_native_spellings_normalise(spelling, level) -> None:
    assert job(sharding=spelling, backend="deepspeed").spec.sharding == level


def test_zero1_has_no_fsdp_twin() -> None:
    f = findings(backend="fsdp", sharding=1)
    assert "no FSDP equivalent" in f[("error", "spec.sharding")]
    assert compiled(backend="deepspeed", sharding=1).ds_config["zero_optimization"]["stage"] == 1


def test_hybrid_needs_more_than_one_node() -> None:
    assert "nodes > 1" in findings(sharding="hybrid")[("error", "spec.sharding")]
    assert ("error", "spec.sharding") not in findings(sharding="hybrid", resources={"nodes": 2})


# --- offload
def test_fsdp_offload_is_all_or_nothing_with_a_note() -> None:
    c = compiled(backend="fsdp", offload={"optimizer": "cpu"})
    assert c.accelerate_config["fsdp_config"]["fsdp_offload_params"] is True
    notes = [f for f in c.findings if f.field == "spec.offload.optimizer"]
    assert notes and "all or nothing" in notes[0].message


def test_nvme_offload_only_in_deepspeed() -> None:
    f = findings(backend="fsdp", offload={"optimizer": "nvme", "nvme_path": "/nvme"})
    assert "only in DeepSpeed" in f[("error", "spec.offload.optimizer")]
    assert "backend: deepspeed" in f[("error", "spec.offload.optimizer")]
    zero = compiled(backend="deepspeed",
                    offload={"optimizer": "nvme", "nvme_path": "/nvme"}).ds_config["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "nvme", "pin_memory": True, "nvme_path": "/nvme"}


def test_nvme_needs_a_path() -> None:
    assert ("error", "spec.offload.nvme_path") in findings(backend="deepspeed", offload={"params": "nvme"})


def test_param_offload_needs_zero3() -> None:
    f = findings(backend="deepspeed", sharding="grad_op", offload={"params": "cpu"})
    assert "needs ZeRO-3" in f[("error", "spec.offload.params")]
    zero = compiled(backend="deepspeed", sharding="full", offload={"params": "cpu"}).ds_config["zero_optimization"]
    assert zero["offload_param"]["device"] == "cpu"


def test_optimizer_offload_needs_a_zero_stage() -> None:
    assert ("error", "spec.offload.optimizer") in findings(backend="deepspeed", sharding="none",
                                                           offload={"optimizer": "cpu"})
    zero = compiled(backend="deepspeed", sharding="grad_op",
                    offload={"optimizer": "cpu"}).ds_config["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu"


# --- ZeRO-3-only switches
@pytest.mark.parametrize("key", ["zero3_init", "save_16bit_model"])
def test_zero3_only_switches(key: str) -> None:
    assert ("error", f"spec.deepspeed.{key}") in findings(backend="deepspeed", sharding="grad_op",
                                                          deepspeed={key: True})
    assert ("error", f"spec.deepspeed.{key}") not in findings(backend="deepspeed", sharding="full",
                                                              deepspeed={key: True})


def test_zero3_init_and_16bit_save_reach_the_configs() -> None:
    c = compiled(backend="deepspeed", sharding="full", deepspeed={"zero3_init": True, "save_16bit_model": True})
    assert c.accelerate_config["deepspeed_config"]["zero3_init_flag"] is True
    assert c.ds_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    c2 = compiled(backend="deepspeed", sharding="grad_op")
    assert c2.accelerate_config["deepspeed_config"]["zero3_init_flag"] is False


# --- FSDP forced pairings
def test_cpu_ram_efficient_loading_forces_sync_module_states() -> None:
    c = compiled(backend="fsdp", fsdp={"cpu_ram_efficient_loading": True, "sync_module_states": False})
    assert c.accelerate_config["fsdp_config"]["fsdp_sync_module_states"] is True
    assert any(f.field == "spec.fsdp.sync_module_states" and f.level == "warning" for f in c.findings)
    c2 = compiled(backend="fsdp", fsdp={"cpu_ram_efficient_loading": False, "sync_module_states": False})
    assert c2.accelerate_config["fsdp_config"]["fsdp_sync_module_states"] is False


def test_torch_compile_needs_use_orig_params() -> None:
    c = compiled(backend="fsdp", torch_compile=True, fsdp={"use_orig_params": False})
    assert c.accelerate_config["fsdp_config"]["fsdp_use_orig_params"] is True
    assert any(f.field == "spec.fsdp.use_orig_params" for f in c.findings)
    c2 = compiled(backend="fsdp", torch_compile=False, fsdp={"use_orig_params": False})
    assert c2.accelerate_config["fsdp_config"]["fsdp_use_orig_params"] is False


def test_fsdp_recommended_settings() -> None:
    fc = compiled(backend="fsdp").accelerate_config["fsdp_config"]
    assert fc["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in fc  # the seeds: unset for recent transformers
    assert fc["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert fc["fsdp_backward_prefetch"] == "BACKWARD_PRE"
    assert compiled(backend="fsdp", model={"name_or_path": "x", "layer_class": "LlamaDecoderLayer"}) \
        .accelerate_config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"


def test_fsdp2_emits_boolean_reshard_and_no_v1_keys() -> None:
    fc = compiled(backend="fsdp", sharding="grad_op", fsdp={"version": 2}).accelerate_config["fsdp_config"]
    assert fc["fsdp_reshard_after_forward"] is False
    assert "fsdp_sharding_strategy" not in fc and "fsdp_forward_prefetch" not in fc
    assert ("error", "spec.fsdp.version") in findings(backend="fsdp", sharding="none", fsdp={"version": 2})


# --- precision (the seeds' 'On Data Precision')
def test_deepspeed_bf16_load_gets_the_seeds_warning() -> None:
    found = findings(backend="deepspeed", precision={"params": "bf16"})
    assert found[("warning", "spec.precision.params")] == PRECISION_WARNING
    assert ("warning", "spec.precision.params") not in findings(backend="fsdp", precision={"params": "bf16"})


def test_fsdp_follows_load_dtype_and_deepspeed_keeps_fp32_masters() -> None:
    c = compiled(backend="fsdp", precision={"params": "bf16", "mixed": "bf16"})
    assert c.env["SHARDCTL_LOAD_DTYPE"] == "bf16" and c.accelerate_config["mixed_precision"] == "bf16"
    d = compiled(backend="deepspeed", precision={"params": "fp32", "mixed": "bf16"})
    assert d.ds_config["bf16"] == {"enabled": True} and d.ds_config["fp16"] == {"enabled": False}
    assert "mixed_precision" not in d.accelerate_config  # accelerate raises if both the YAML and the JSON set it


def test_deepspeed_recommended_clipping_and_accumulation_are_concrete() -> None:
    d = compiled(backend="deepspeed", batch={"micro": 2, "global": 16}, resources={"gpus_per_node": 4})
    assert d.ds_config["gradient_accumulation_steps"] == 2
    assert d.ds_config["train_batch_size"] == 16 and d.ds_config["gradient_clipping"] == 1.0
    assert not set(d.accelerate_config["deepspeed_config"]) & {"gradient_accumulation_steps", "gradient_clipping",
                                                               "zero_stage", "offload_optimizer_device"}


def test_global_batch_must_divide() -> None:
    assert ("error", "spec.batch.global") in findings(batch={"micro": 3, "global": 10})


def test_compile_error_lists_every_error() -> None:
    with pytest.raises(CompileError) as exc:
        compiled(backend="fsdp", sharding="hybrid", offload={"params": "nvme"})
    fields = {f.field for f in exc.value.findings}
    assert {"spec.sharding", "spec.offload.params", "spec.offload.nvme_path"} <= fields


def test_launch_leaves_multinode_values_to_the_target() -> None:
    c = compiled(resources={"nodes": 2, "gpus_per_node": 4}, batch={"micro": 2})
    assert set(c.launch.variables) == {"MACHINE_RANK", "MAIN_PROCESS_IP", "MAIN_PROCESS_PORT"}
    argv = c.launch.resolve({"MACHINE_RANK": "1", "MAIN_PROCESS_IP": "10.0.0.1", "MAIN_PROCESS_PORT": "29500"})
    assert argv[argv.index("--num_processes") + 1] == "8" and argv[argv.index("--machine_rank") + 1] == "1"
    assert argv[-4:] == ["--micro-batch", "2", "--grad-accum", "1"]
    with pytest.raises(KeyError):
        c.launch.resolve({})


# --- secrets by reference: each target takes the sources it can honour
@pytest.mark.parametrize("target,source,ok", [
    ("local", {"env": "HF_TOKEN"}, True), ("local", {"file": "s.env"}, True), ("local", {"secret": "hf"}, False),
    ("slurm", {"env": "HF_TOKEN"}, True), ("slurm", {"file": "s.env"}, True), ("slurm", {"secret": "hf"}, False),
    ("kubernetes", {"secret": "hf"}, True), ("kubernetes", {"env": "HF_TOKEN"}, False),
    ("kubernetes", {"file": "s.env"}, False),
])
def test_env_from_sources_per_target(target: str, source: dict, ok: bool) -> None:
    found = findings(target=target, kubernetes={"image": "img"},
                     entrypoint={"script": "t.py", "env_from": [source]})
    kind = next(iter(source))
    key = ("error", f"spec.entrypoint.env_from.0.{kind}")
    assert (key not in found) == ok
    if not ok:
        assert f"cannot reach a {target} run" in found[key]
