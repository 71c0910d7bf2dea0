"""Backend pass-through: carried verbatim, checked against the spec, dropped by name on a backend switch."""

from __future__ import annotations

import pytest

from orchestrator.compile import compile_job, passthrough, rules
from orchestrator.compile.rungs import RUNG_FUNCTIONS
from orchestrator.spec.states import FailureKind
from tests.helpers import job


def _errors(j) -> list[str]:
    return [str(f) for f in rules.errors(rules.check(j))]


def test_a_contradiction_names_both() -> None:
    j = job(backend="deepspeed", sharding="full", deepspeed={"config": {"zero_optimization": {"stage": 2}}})
    [error] = _errors(j)
    assert "spec.deepspeed.config.zero_optimization.stage" in error and "spec.sharding" in error


def test_an_agreeing_key_and_free_keys_render(tmp_path) -> None:
    j = job(backend="deepspeed", sharding="full", deepspeed={"config": {
        "zero_optimization": {"stage": 3, "sub_group_size": 1e9, "reduce_bucket_size": "auto"},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}, "fp16": {"loss_scale": 128}}})
    assert _errors(j) == []
    ds = compile_job(j, config_dir=str(tmp_path), checkpoint_dir="/c").ds_config
    assert ds["zero_optimization"]["sub_group_size"] == 1e9 and ds["zero_optimization"]["reduce_bucket_size"] == "auto"
    assert ds["optimizer"]["params"] == {"lr": "auto"} and ds["fp16"]["loss_scale"] == 128


@pytest.mark.parametrize("spec,needle", [
    ({"backend": "deepspeed", "deepspeed": {"config": {"zero_optimization": {"stage3_param_persitance_threshold": 1}}}},
     "did you mean stage3_param_persistence_threshold"),
    ({"backend": "deepspeed", "deepspeed": {"config": {"zero_optimization": {"offload_param": {"pin_memory": True}}}}},
     "spec.offload.params is none"),
    ({"backend": "deepspeed", "deepspeed": {"config": {"train_batch_size": 64}}}, "contradicts spec.batch"),
    ({"fsdp": {"config": {"fsdp_backward_prefetch_policy": "BACKWARD_PRE"}}}, "did you mean fsdp_backward_prefetch"),
    ({"fsdp": {"config": {"fsdp_sharding_strategy": "NO_SHARD"}}}, "contradicts spec.sharding"),
    ({"fsdp": {"config": {"fsdp_transformer_layer_cls_to_wrap": "X"}}}, "set spec.model.layer_class instead"),
    ({"model": {"name_or_path": "m", "layer_class": "L"}, "fsdp": {"config": {"fsdp_auto_wrap_policy": "NO_WRAP"}}},
     "contradicts spec.model.layer_class"),
])
def test_refused_pass_through(spec: dict, needle: str) -> None:
    assert any(needle in e for e in _errors(job(**spec))), _errors(job(**spec))


def test_bounded() -> None:
    with pytest.raises(ValueError, match="nested deeper"):
        job(deepspeed={"config": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}})
    with pytest.raises(ValueError, match="more than 500"):
        job(deepspeed={"config": {f"k{i}": i for i in range(600)}})


def test_switch_backend_drops_and_names_each_key() -> None:
    j = job(backend="deepspeed", sharding="full",
            deepspeed={"config": {"optimizer": {"type": "AdamW"}, "zero_optimization": {"sub_group_size": 1e9}}})
    moved, reason = RUNG_FUNCTIONS["switch_backend"](j, FailureKind.CUDA_OOM)
    assert moved.spec.backend == "fsdp" and moved.spec.deepspeed.config == {}
    assert "deepspeed.config.optimizer.type" in reason and "deepspeed.config.zero_optimization.sub_group_size" in reason
    assert _errors(moved) == []


def test_static_lists_match_the_installed_deepspeed() -> None:
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from deepspeed.runtime.zero.offload_config import (
        DeepSpeedZeroOffloadOptimizerConfig,
        DeepSpeedZeroOffloadParamConfig,
    )

    def names(model) -> set[str]:
        return {n for name, f in model.model_fields.items() for n in (name, f.alias) if n}

    assert names(DeepSpeedZeroConfig) <= passthrough.ZERO_KEYS
    assert names(DeepSpeedZeroOffloadOptimizerConfig) <= passthrough.OFFLOAD_KEYS["offload_optimizer"]
    assert names(DeepSpeedZeroOffloadParamConfig) <= passthrough.OFFLOAD_KEYS["offload_param"]


def test_fsdp_keys_match_accelerates_launcher() -> None:
    from accelerate.commands.launch import launch_command_parser

    options = {a.dest for a in launch_command_parser()._actions if a.dest.startswith("fsdp_")}
    assert options <= passthrough.FSDP_KEYS | {"fsdp_ignored_modules"}
