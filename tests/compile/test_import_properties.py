"""`shardctl import` never yields a spec that `shardctl validate` refuses.

Every real config kept in tests/data/import that imports gives a TrainingJob that `shardctl validate` accepts and
that compiles; and generated DeepSpeed JSONs and accelerate configs (ZeRO stages 0-3, bucket sizes, overlap_comm,
offload, fp16/bf16, accumulation and clipping, "auto" values) are either refused by import with the reason the
input gives for it, or imported to a spec that validates and compiles.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.compile import compile_job
from orchestrator.compile.importer import ImportRefused, import_configs
from orchestrator.spec.models import TrainingJob
from tests.compile.test_import import CASES, DATA, REFUSED

# Every stored config, as test_import pairs it (an accelerate config with the JSON its deepspeed_config_file names,
# a JSON alone with the machines it says nothing of), and the ones it expects refused.
STORED = [*CASES, *((rel, None, {}) for rel, _ in REFUSED)]
GAP = "a gap in `shardctl import`"


def _validates(job_file: Path) -> None:
    """`shardctl validate` accepts the file, and the spec compiles (the rules the compiler enforces)."""
    result = CliRunner().invoke(main, ["validate", str(job_file)])
    assert result.exit_code == 0, f"validate refuses the imported spec:\n{result.output}\n{job_file.read_text()}"
    assert ": ok: TrainingJob" in result.output
    job = TrainingJob.model_validate(yaml.safe_load(job_file.read_text()))
    compiled = compile_job(job, config_dir=str(job_file.parent), checkpoint_dir=str(job_file.parent / "ckpt"))
    assert compiled.files()


def _imports_and_validates(config: dict[str, Any] | None, ds_json: dict[str, Any] | None, reasons: list[str],
                           **options: Any) -> None:
    """Refused with one of `reasons` (what the input itself warrants), or imported to a spec that validates."""
    try:
        imported = import_configs(config, ds_json, **options)
    except ImportRefused as exc:
        message = str(exc)
        assert message.startswith("cannot import: ") and "\n" not in message
        assert GAP not in message, message
        assert any(reason in message for reason in reasons), f"refused for a reason the input does not give: " \
                                                             f"{message} (anticipated: {reasons})"
        event("refused")
        return
    event("imported")
    with tempfile.TemporaryDirectory() as folder:
        job_file = Path(folder) / "imported.yaml"
        job_file.write_text(imported.text())
        _validates(job_file)


# -- the real configs ------------------------------------------------------------------------------------------

def _cli_import(config: str | None, ds: str | None, options: dict[str, Any], *more: str):
    args = ["import", *([str(DATA / config)] if config else []), *(["--ds-config", str(DATA / ds)] if ds else [])]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return CliRunner().invoke(main, [*args, *more])


@pytest.mark.parametrize("config,ds,options", STORED, ids=[c or d for c, d, _ in STORED])
def test_a_stored_config_that_imports_passes_validate(config: str | None, ds: str | None, options: dict,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "imported.yaml"
    result = _cli_import(config, ds, options, "--out", str(out))
    if result.exit_code != 0:  # refused: for a reason of its own, never for what import itself wrote
        assert result.exit_code == 2 and "cannot import: " in result.output, result.output
        assert GAP not in result.output and "spec.deepspeed.config" not in result.output, result.output
        return
    _validates(out)


def test_the_stored_configs_import_bar_the_ones_refused_on_purpose() -> None:
    """The test above does not pass by refusals."""
    assert all(_cli_import(config, ds, options).exit_code == 0 for config, ds, options in CASES)


def test_a_zero0_json_with_bucket_sizes_and_overlap_comm_passes_validate(tmp_path: Path) -> None:
    """As training frameworks ship it: ZeRO-0 with the ZeRO-1+ knobs set, which DeepSpeed does not read at ZeRO-0."""
    ds = {"fp16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto",
          "zero_optimization": {"stage": 0, "allgather_partitions": True, "allgather_bucket_size": 2e8,
                                "overlap_comm": True, "reduce_scatter": True, "reduce_bucket_size": 2e8,
                                "contiguous_gradients": True}}
    imported = import_configs(None, ds)
    assert "overlap_comm" not in imported.document["spec"]["deepspeed"]
    for key in ("overlap_comm", "reduce_bucket_size", "allgather_bucket_size"):
        assert any(line.startswith(f"zero_optimization.{key}: ") and "unused at ZeRO-0" in line
                   for line in imported.not_carried), imported.not_carried
    (tmp_path / "job.yaml").write_text(imported.text())
    _validates(tmp_path / "job.yaml")


# -- generated DeepSpeed JSONs and accelerate configs ------------------------------------------------------------

AUTO = st.just("auto")


def now_and_then(rare: st.SearchStrategy[Any], usual: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`rare` about one draw in eight, else `usual` (so that the refusals it provokes leave room for imports)."""
    return st.integers(0, 7).flatmap(lambda n: rare if n == 5 else usual)  # not 0 nor 7: Hypothesis favours those


BUCKET = now_and_then(AUTO, st.one_of(st.sampled_from([2e8, 5e8, 5e7, 1e9, 200_000_000]), st.integers(1, 10**9)))
SWITCH = now_and_then(AUTO, st.booleans())
NVME = st.sampled_from(["/local_nvme", "/scratch/nvme"])
# DeepSpeed's parser reads these only as numbers or switches, and accelerate fills none of their "auto"s.
UNFILLED_AUTO = ("overlap_comm", "allgather_bucket_size", "stage3_max_live_parameters", "prefetch_bucket_size",
                 "max_live_parameters")


@st.composite
def machines(draw) -> tuple[int, int]:
    return draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 4, 8]))


@st.composite
def offload_sections(draw) -> dict[str, Any]:
    device = draw(st.sampled_from(["none", "cpu", "nvme"]))
    section: dict[str, Any] = {"device": device}
    if device == "nvme":
        section["nvme_path"] = draw(NVME)
    if draw(st.booleans()):
        section["pin_memory"] = draw(st.booleans())
    return section


@st.composite
def zero_sections(draw) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": draw(now_and_then(AUTO, st.integers(0, 3)))}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "overlap_comm": SWITCH, "contiguous_gradients": st.booleans(), "reduce_scatter": st.booleans(),
        "allgather_partitions": st.booleans(), "reduce_bucket_size": BUCKET, "allgather_bucket_size": BUCKET,
        "stage3_prefetch_bucket_size": BUCKET, "stage3_max_live_parameters": BUCKET,
        "stage3_param_persistence_threshold": BUCKET, "sub_group_size": st.sampled_from([1e9, 1e8]),
        "stage3_gather_16bit_weights_on_model_save": SWITCH, "offload_optimizer": offload_sections(),
        "offload_param": offload_sections(), "round_robin_gradients": st.booleans(),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            zero[key] = draw(strategy)
    # DeepSpeed's own field names beside the "stage3_" aliases, now and then.
    for key, strategy in (("prefetch_bucket_size", BUCKET), ("max_live_parameters", BUCKET),
                          ("gather_16bit_weights_on_model_save", st.booleans())):
        if draw(st.integers(0, 5)) == 3:
            zero[key] = draw(strategy)
    return zero


@st.composite
def deepspeed_jsons(draw, world: int) -> dict[str, Any]:
    ds: dict[str, Any] = {"zero_optimization": draw(zero_sections())}
    for name, extra in (("fp16", {"loss_scale": 0, "initial_scale_power": 16}), ("bf16", {})):
        if draw(st.booleans()):
            ds[name] = {"enabled": draw(SWITCH), **(extra if draw(st.booleans()) else {})}
    micro = draw(st.one_of(st.none(), AUTO, st.integers(1, 16)))
    accum = draw(st.one_of(st.none(), AUTO, st.integers(1, 8)))
    concrete = isinstance(micro, int) and isinstance(accum, int)
    total = draw(now_and_then(st.integers(1, 512), st.one_of(st.none(), AUTO, st.just(micro * accum * world))
                              if concrete else st.one_of(st.none(), AUTO)))
    for key, value in (("train_micro_batch_size_per_gpu", micro), ("gradient_accumulation_steps", accum),
                       ("train_batch_size", total)):
        if value is not None:
            ds[key] = value
    clip = draw(st.one_of(st.none(), AUTO, st.floats(0, 10, allow_nan=False), st.integers(0, 5)))
    if clip is not None:
        ds["gradient_clipping"] = clip
    if draw(st.booleans()):
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}}
    if draw(st.booleans()):
        ds["steps_per_print"] = 2000
    return ds


def _enabled(ds: dict[str, Any], name: str, launch: str) -> bool:
    value = (ds.get(name) or {}).get("enabled", False)
    return launch == name if value == "auto" else value is True


def deepspeed_reasons(ds: dict[str, Any], launch: str = "no", world: int = 1) -> list[str]:
    """The refusals a DeepSpeed JSON warrants (DeepSpeed or accelerate would refuse it, or no TrainingJob holds it)."""
    zero = ds["zero_optimization"]
    stage = zero["stage"]
    if stage == "auto":
        return ['zero_optimization.stage "auto"']
    reasons = [f'zero_optimization.{key} "auto"' for key in UNFILLED_AUTO if zero.get(key) == "auto"]
    reasons += [f"zero_optimization.{key} and zero_optimization.{alias} are one DeepSpeed setting"
                for alias, key in (("stage3_prefetch_bucket_size", "prefetch_bucket_size"),
                                   ("stage3_max_live_parameters", "max_live_parameters"))
                if key in zero and alias in zero]
    optimizer = (zero.get("offload_optimizer") or {}).get("device", "none")
    param = (zero.get("offload_param") or {}).get("device", "none")
    if optimizer != "none" and stage == 0:
        reasons.append("optimizer offload needs ZeRO stage 1, 2 or 3")
    paths = {section.get("nvme_path") for section, used in ((zero.get("offload_optimizer") or {}, True),
                                                           (zero.get("offload_param") or {}, stage == 3))
             if used and section.get("device") == "nvme"}
    if len(paths) > 1:
        reasons.append("two NVMe paths")
    if param == "nvme" and stage == 3 and not (zero.get("offload_param") or {}).get("nvme_path"):
        reasons.append("needs nvme_path")
    if _enabled(ds, "fp16", launch) and _enabled(ds, "bf16", launch):
        reasons.append("fp16 and bf16 both enabled")
    if isinstance(ds.get("train_batch_size"), int):
        reasons.append("train_batch_size")
    return reasons


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_generated_deepspeed_json_is_refused_for_its_reason_or_passes_validate(data: st.DataObject) -> None:
    nodes, gpus = data.draw(machines())
    ds = data.draw(deepspeed_jsons(nodes * gpus))
    _imports_and_validates(None, ds, deepspeed_reasons(ds, "no", nodes * gpus), nodes=nodes, gpus_per_node=gpus)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_an_accelerate_config_with_its_deepspeed_json_is_refused_for_its_reason_or_passes_validate(
        data: st.DataObject) -> None:
    nodes, gpus = data.draw(machines())
    ds = data.draw(deepspeed_jsons(nodes * gpus))
    launch = data.draw(st.sampled_from(["no", "fp16", "bf16"]))
    inline: dict[str, Any] = {"deepspeed_config_file": "ds_config.json"}
    if data.draw(st.booleans()):
        inline["zero3_init_flag"] = data.draw(st.booleans())
    config = {"distributed_type": "DEEPSPEED", "num_machines": nodes, "num_processes": nodes * gpus,
              "mixed_precision": launch, "deepspeed_config": inline}
    _imports_and_validates(config, ds, deepspeed_reasons(ds, launch, nodes * gpus))


@st.composite
def accelerate_deepspeed_configs(draw) -> dict[str, Any]:
    nodes, gpus = draw(machines())
    inline: dict[str, Any] = {}
    if draw(st.booleans()):
        inline["zero_stage"] = draw(st.integers(0, 3))
    for what in ("optimizer", "param"):
        if draw(st.booleans()):
            inline[f"offload_{what}_device"] = draw(st.sampled_from(["none", "cpu", "nvme"]))
        if draw(st.booleans()):
            inline[f"offload_{what}_nvme_path"] = draw(NVME)
    optional: dict[str, st.SearchStrategy[Any]] = {
        "gradient_accumulation_steps": st.one_of(st.integers(1, 16), AUTO),
        "gradient_clipping": st.one_of(st.floats(0, 10, allow_nan=False), AUTO),
        "zero3_init_flag": st.booleans(), "zero3_save_16bit_model": st.booleans(),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            inline[key] = draw(strategy)
    return {"distributed_type": "DEEPSPEED", "num_machines": nodes, "num_processes": nodes * gpus,
            "mixed_precision": draw(st.sampled_from(["no", "fp16", "bf16", "fp8"])), "deepspeed_config": inline,
            **({"main_training_function": "main"} if draw(st.booleans()) else {})}


def accelerate_reasons(config: dict[str, Any]) -> list[str]:
    inline = config["deepspeed_config"]
    stage = inline.get("zero_stage", 2)
    reasons = ["fp8"] if config["mixed_precision"] == "fp8" else []
    optimizer, param = (inline.get(f"offload_{what}_device", "none") for what in ("optimizer", "param"))
    if optimizer != "none" and stage == 0:
        reasons.append("optimizer offload needs ZeRO stage 1, 2 or 3")
    nvme = [what for what, device, used in (("optimizer", optimizer, True), ("param", param, stage == 3))
            if device == "nvme" and used]
    if any(f"offload_{what}_nvme_path" not in inline for what in nvme):
        reasons.append("needs nvme_path")
    if len({inline.get(f"offload_{what}_nvme_path") for what in nvme}) > 1:
        reasons.append("two NVMe paths")
    return reasons


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=accelerate_deepspeed_configs())
def test_a_generated_accelerate_deepspeed_config_is_refused_for_its_reason_or_passes_validate(
        config: dict[str, Any]) -> None:
    _imports_and_validates(config, None, accelerate_reasons(config))


@st.composite
def accelerate_fsdp_configs(draw) -> dict[str, Any]:
    nodes, gpus = draw(machines())
    fc: dict[str, Any] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "fsdp_version": st.sampled_from([1, 2]),
        "fsdp_sharding_strategy": st.sampled_from(["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD",
                                                   "HYBRID_SHARD_ZERO2", 1, 2, 3, 4]),
        "fsdp_reshard_after_forward": st.booleans(), "fsdp_offload_params": st.booleans(),
        "fsdp_auto_wrap_policy": st.sampled_from(["TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"]),
        "fsdp_transformer_layer_cls_to_wrap": st.just("LlamaDecoderLayer"),
        "fsdp_min_num_params": st.integers(1, 10**9),
        "fsdp_backward_prefetch": st.sampled_from(["BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH"]),
        "fsdp_state_dict_type": st.sampled_from(["FULL_STATE_DICT", "SHARDED_STATE_DICT", "LOCAL_STATE_DICT"]),
        "fsdp_forward_prefetch": st.booleans(), "fsdp_use_orig_params": st.booleans(),
        "fsdp_sync_module_states": st.booleans(), "fsdp_cpu_ram_efficient_loading": st.booleans(),
        "fsdp_activation_checkpointing": st.booleans(), "fsdp_not_a_key": st.just(True),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            fc[key] = draw(strategy)
    return {"distributed_type": "FSDP", "num_machines": nodes, "num_processes": nodes * gpus,
            "mixed_precision": draw(st.sampled_from(["no", "fp16", "bf16"])), "fsdp_config": fc}


def fsdp_reasons(config: dict[str, Any]) -> list[str]:
    fc = config["fsdp_config"]
    reasons = ["LOCAL_STATE_DICT"] if fc.get("fsdp_state_dict_type") == "LOCAL_STATE_DICT" else []
    if fc.get("fsdp_version", 1) == 1:
        strategy = fc.get("fsdp_sharding_strategy")
        if strategy in ("HYBRID_SHARD_ZERO2", 5):
            reasons.append("HYBRID_SHARD_ZERO2")
        if strategy in ("HYBRID_SHARD", 4) and config["num_machines"] < 2:
            reasons.append("HYBRID_SHARD on one machine")
    return reasons


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=accelerate_fsdp_configs())
def test_a_generated_accelerate_fsdp_config_is_refused_for_its_reason_or_passes_validate(
        config: dict[str, Any]) -> None:
    _imports_and_validates(config, None, fsdp_reasons(config))
