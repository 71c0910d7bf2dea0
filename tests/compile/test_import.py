"""`shardctl import` on real configs from accelerate's and DeepSpeed's repositories and docs (tests/data/import,
SOURCES.md): each one imports, renders, and accelerate's and DeepSpeed's own parsers read the render as the
same setup as the original, except for what `import` itself listed; or it is refused with a reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.compile import compile_job
from orchestrator.compile.importer import ImportRefused, import_configs, import_files
from orchestrator.compile.setup import STRUCTURED
from orchestrator.spec.models import TrainingJob

DATA = Path(__file__).resolve().parents[1] / "data" / "import"

# (accelerate config, DeepSpeed JSON, import options); every file under tests/data/import appears here.
CASES: list[tuple[str | None, str | None, dict[str, Any]]] = [
    ("accelerate/examples/config_yaml_templates/fsdp.yaml", None, {}),
    ("accelerate/examples/config_yaml_templates/deepspeed.yaml", None, {}),  # its JSON by relative path
    ("accelerate/examples/slurm/fsdp_config.yaml", None, {}),
    ("accelerate/tests/distributed/accelerate_configs/fsdp2.yaml", None, {}),
    ("accelerate/tests/test_configs/latest_fsdp.yaml", None, {}),
    ("accelerate/tests/tp/fsdp2_tp_preparation_config.yaml", None, {}),
    ("accelerate/docs/usage_guides/fsdp/fsdp_config.yaml", None, {}),
    ("accelerate/docs/usage_guides/deepspeed/zero2_plugin.yaml", None, {}),
    ("accelerate/docs/usage_guides/deepspeed/zero3_offload_plugin.yaml", None, {}),
    ("accelerate/docs/usage_guides/deepspeed/zero2_config_file.yaml",
     "accelerate/examples/deepspeed_config_templates/zero_stage2_config.json", {}),
    (None, "accelerate/docs/usage_guides/deepspeed/zeropp.json", {"nodes": 2, "gpus_per_node": 8}),
    (None, "accelerate/examples/deepspeed_config_templates/zero_stage1_config.json", {}),
    (None, "accelerate/examples/deepspeed_config_templates/zero_stage2_offload_config.json", {"gpus_per_node": 4}),
    (None, "accelerate/examples/deepspeed_config_templates/zero_stage3_config.json", {"gpus_per_node": 8}),
    (None, "accelerate/examples/deepspeed_config_templates/zero_stage3_offload_config.json", {}),
    (None, "accelerate/tests/deepspeed/ds_config_zero2.json", {}),
    (None, "accelerate/tests/deepspeed/ds_config_zero2_model_only.json", {}),
    (None, "accelerate/tests/deepspeed/ds_config_zero3.json", {"nodes": 2, "gpus_per_node": 2}),
    (None, "accelerate/tests/deepspeed/ds_config_zero3_model_only.json", {}),
    (None, "DeepSpeedExamples/autotuning/hf/dsconfigs/ds_config_fp16_z0.json", {}),
    (None, "DeepSpeedExamples/autotuning/hf/dsconfigs/ds_config_z1.json", {}),
    (None, "DeepSpeedExamples/autotuning/hf/dsconfigs/ds_config_fp16_z3.json", {}),
    (None, "DeepSpeedExamples/Megatron-LM/scripts/ds_zero2_config.json", {"gpus_per_node": 4}),
    (None, "DeepSpeedExamples/Megatron-LM/scripts/ds_zero-offload_config.json", {"gpus_per_node": 2}),
    (None, "DeepSpeedExamples/cifar/ds_config.json", {"gpus_per_node": 2}),
    (None, "DeepSpeed/deepspeed/autotuning/config_templates/template_zero3.json", {}),
]
# Refused, with the words that say why.
REFUSED = [
    ("accelerate/examples/config_yaml_templates/multi_gpu.yaml", "MULTI_GPU"),
    ("accelerate/tests/test_configs/fsdp.yaml", "MEGATRON_LM"),
    ("DeepSpeedExamples/bing_bert/deepspeed_bsz4k_onebit_config_seq128.json", "no zero_optimization section"),
    ("DeepSpeedExamples/Megatron-LM-v1.1.5-ZeRO3/examples/ds_zero_stage_3_config.json",
     "did you mean stage3_param_persistence_threshold"),
    ("DeepSpeedExamples/Megatron-LM-v1.1.5-ZeRO3/examples/ds_zero_stage_infinity_config.json",
     "did you mean stage3_param_persistence_threshold"),
]


def _path(rel: str | None) -> str | None:
    return str(DATA / rel) if rel else None


def test_every_stored_config_is_a_case() -> None:
    stored = {str(p.relative_to(DATA)) for p in DATA.rglob("*") if p.suffix in (".yaml", ".json")}
    named = {r for c, d, _ in CASES for r in (c, d) if r} | {r for r, _ in REFUSED}
    assert stored == named
    assert len(CASES) + len(REFUSED) >= 20
    sources = (DATA / "SOURCES.md").read_text()
    for rel in stored:
        assert rel in sources, f"{rel} has no source in SOURCES.md"


@pytest.mark.parametrize("rel,needle", REFUSED, ids=[r for r, _ in REFUSED])
def test_refused_with_a_reason(rel: str, needle: str) -> None:
    with pytest.raises(ImportRefused, match=needle):
        import_files(_path(rel))


@pytest.mark.parametrize("config,ds,options", CASES, ids=[c or d for c, d, _ in CASES])
def test_imports_renders_and_reads_back(config: str | None, ds: str | None, options: dict) -> None:
    imported = import_files(_path(config), _path(ds), **options)
    text = imported.text()
    job = TrainingJob.model_validate(yaml.safe_load(text))
    assert job.model_dump(by_alias=True, exclude_unset=True)["spec"]["backend"] in ("fsdp", "deepspeed")
    # Every "auto" the original leaves to run time is said to be filled, never silently.
    if ds and json.loads(Path(_path(ds) or "").read_text()).get("train_micro_batch_size_per_gpu", "auto") == "auto":
        assert any(line.startswith("train_micro_batch_size_per_gpu: 'auto") for line in imported.differences)


def test_pass_through_keys_reach_the_render(tmp_path: Path) -> None:
    imported = import_files(None, _path("accelerate/examples/deepspeed_config_templates/zero_stage3_config.json"))
    job = TrainingJob.model_validate(yaml.safe_load(imported.text()))
    ds = compile_job(job, config_dir=str(tmp_path), checkpoint_dir="/c").ds_config
    assert ds["optimizer"] == {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}}
    assert ds["scheduler"]["type"] == "WarmupDecayLR"
    zero = ds["zero_optimization"]
    assert zero["sub_group_size"] == 1e9 and zero["stage3_max_live_parameters"] == 1e9
    assert zero["stage3_param_persistence_threshold"] == "auto" and zero["reduce_bucket_size"] == "auto"


@pytest.mark.parametrize("stage,zero,note", [
    (0, {"overlap_comm": True}, "zero_optimization.overlap_comm: True (unused at ZeRO-0"),
    (0, {"reduce_bucket_size": 2e8, "allgather_bucket_size": 2e8}, "zero_optimization.allgather_bucket_size: "
                                                                   "200000000.0 (unused at ZeRO-0"),
    (0, {"reduce_bucket_size": "auto"}, "zero_optimization.reduce_bucket_size: 'auto' (unused at ZeRO-0"),
    (2, {"stage3_prefetch_bucket_size": 5e7}, "zero_optimization.stage3_prefetch_bucket_size: 50000000.0 (unused "
                                              "at ZeRO-2"),
    (1, {"max_live_parameters": 10**9}, "zero_optimization.max_live_parameters: 1000000000 (unused at ZeRO-1"),
    (2, {"offload_param": {"device": "cpu", "pin_memory": True}}, "zero_optimization.offload_param: parameter "
                                                                  "offload to cpu (ZeRO-3 only"),
], ids=["zero0-overlap", "zero0-buckets", "zero0-auto-bucket", "zero2-prefetch", "zero1-live", "zero2-param-offload"])
def test_a_rendered_key_the_stage_does_not_read_is_dropped_with_a_note(stage: int, zero: dict, note: str) -> None:
    imported = import_configs(None, {"zero_optimization": {"stage": stage, **zero}})
    assert any(line.startswith(note) for line in imported.not_carried), imported.not_carried
    spec = imported.document["spec"]
    carried = spec.get("deepspeed", {}).get("config", {}).get("zero_optimization", {})
    assert not set(zero) & set(carried) and "offload" not in spec


def test_a_rendered_key_in_deepspeeds_other_spelling_goes_to_its_field() -> None:
    imported = import_configs(None, {"zero_optimization": {"stage": 3, "prefetch_bucket_size": 5e7,
                                                           "max_live_parameters": 1e9,
                                                           "gather_16bit_weights_on_model_save": True}})
    options = imported.document["spec"]["deepspeed"]
    assert options["stage3_prefetch_bucket_size"] == 50_000_000 and options["stage3_max_live_parameters"] == 10**9
    assert options["save_16bit_model"] is True and "config" not in options


@pytest.mark.parametrize("ds,needle", [
    ({"zero_optimization": {"stage": 2, "allgather_bucket_size": "auto"}}, 'allgather_bucket_size "auto"'),
    ({"zero_optimization": {"stage": 0, "overlap_comm": "auto"}}, 'overlap_comm "auto"'),
    ({"zero_optimization": {"stage": "auto"}}, 'stage "auto"'),
    ({"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}}, "optimizer offload needs ZeRO"),
    ({"zero_optimization": {"stage": 2}, "fp16": {"enabled": True}, "bf16": {"enabled": True}},
     "fp16 and bf16 both enabled"),
    ({"zero_optimization": {"stage": 3, "prefetch_bucket_size": 1, "stage3_prefetch_bucket_size": 2}},
     "are one DeepSpeed setting"),
], ids=["unfilled-auto", "auto-switch", "auto-stage", "zero0-offload", "fp16-and-bf16", "two-spellings"])
def test_a_config_deepspeed_would_not_run_is_refused_with_the_reason(ds: dict, needle: str) -> None:
    with pytest.raises(ImportRefused, match=needle):
        import_configs(None, ds)


def test_fsdp_without_wrap_policy_keeps_no_wrap() -> None:
    """accelerate runs NO_WRAP when fsdp_auto_wrap_policy is absent; shardctl's default would change that."""
    imported = import_configs({"distributed_type": "FSDP", "num_processes": 2, "fsdp_config": {"fsdp_version": 2}})
    assert imported.document["spec"]["fsdp"]["config"] == {"fsdp_auto_wrap_policy": "NO_WRAP"}
    assert imported.differences == []


def test_a_difference_is_listed() -> None:
    """cpu_ram_efficient_loading without sync_module_states does not load right; shardctl forces sync on."""
    imported = import_configs({"distributed_type": "FSDP", "num_processes": 2,
                               "fsdp_config": {"fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                               "fsdp_cpu_ram_efficient_loading": True,
                                               "fsdp_sync_module_states": False}})
    assert imported.differences == ["sync_module_states: False -> True"]
    assert "# differs after a render: sync_module_states: False -> True" in imported.text()


# -- the same setup, as accelerate's and DeepSpeed's own parsers read it --------------------------------------

def _listed_keys(differences: list[str]) -> set[str]:
    """The fields `import` listed as differing, whole: each line is `key: original -> rendered`."""
    return {line.split(": ", 1)[0] for line in differences}


def test_a_listed_key_covers_only_itself() -> None:
    """A field listed as differing excuses that field alone, never a longer one it is a part of."""
    listed = _listed_keys(["zero_optimization.offload_param: 'cpu' -> 'none'", "fp16: True -> False"])
    assert listed == {"zero_optimization.offload_param", "fp16"}
    assert "zero_optimization.offload_param" in listed
    assert "zero_optimization.offload_param.pin_memory" not in listed
    assert "offload_param" not in listed and "fp16.enabled" not in listed


def _original_for_parsers(config: str | None, ds: str | None, imported, tmp_path: Path) -> Path:
    """The original as `accelerate launch` would get it: a JSON alone is run with a minimal accelerate config;
    a deepspeed_config_file points at the JSON import read."""
    spec = imported.document["spec"]
    doc: dict[str, Any] = yaml.safe_load(Path(config).read_text()) if config else {
        "distributed_type": "DEEPSPEED", "deepspeed_config": {},
        "num_machines": spec["resources"]["nodes"],
        "num_processes": spec["resources"]["nodes"] * spec["resources"]["gpus_per_node"]}
    inline = doc.get("deepspeed_config") or {}
    if ds or "deepspeed_config_file" in inline:
        source = Path(ds) if ds else (Path(config or "").parent / inline["deepspeed_config_file"])
        inline["deepspeed_config_file"] = str(source.resolve())
        inline.pop("zero_stage", None)
        doc["deepspeed_config"] = inline
    if "main_process_ip" in doc and doc.get("num_machines", 1) == 1:
        doc.pop("main_process_ip")
    out = tmp_path / "original.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


@pytest.mark.parametrize("config,ds,options", CASES, ids=[c or d for c, d, _ in CASES])
def test_parsers_read_the_same_setup(config: str | None, ds: str | None, options: dict, tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    pytest.importorskip("deepspeed")
    from tests.compile.backend_setup import real_setup

    config, ds = _path(config), _path(ds)
    imported = import_files(config, ds, **options)
    job = TrainingJob.model_validate(yaml.safe_load(imported.text()))
    spec = job.spec
    compiled = compile_job(job, config_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"))
    for name, text in compiled.files().items():
        (tmp_path / name).write_text(text)
    accum = (spec.batch.global_ or spec.batch.micro * spec.world_size) // (spec.batch.micro * spec.world_size)
    fill = {"micro": spec.batch.micro, "accum": accum}  # the run-time values the spec states
    render = real_setup(tmp_path / "accelerate_config.yaml", [], **fill)
    given = yaml.safe_load(Path(config).read_text()) if config else {}
    # A config without num_processes is launched with the flag (accelerate's Slurm example does so).
    flags = [] if "num_processes" in given or not config else ["--num_processes", str(spec.world_size)]
    original = real_setup(_original_for_parsers(config, ds, imported, tmp_path), flags, **fill)
    listed = _listed_keys(imported.differences)
    for key, value in original.items():
        if key == "json":
            continue
        assert render[key] == value or key in listed, f"{key}: {value!r} -> {render[key]!r} and not listed"
    for path, value in original.get("json", {}).items():
        if path.endswith((".device", ".nvme_path")) or path in STRUCTURED or path == "steps_per_print":
            continue  # compared as offload above; steps_per_print is accelerate's own (inf)
        there = render["json"].get(path, "unset")
        assert there == value or path in listed, f"{path}: {value!r} -> {there!r} and not listed"


@pytest.mark.parametrize("counts,needle", [
    ("num_machines: 5000\n", "num_machines 5000: a TrainingJob takes 1 to 4096"),
    ("num_processes: 1000\n", "1000 processes on 1 machine(s) is 1000 GPUs per node: a TrainingJob takes 1 to 64"),
], ids=["machines", "processes"])
def test_machine_counts_a_trainingjob_cannot_hold_are_one_line_exit_2(counts: str, needle: str,
                                                                       tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "accelerate.yaml"
    config.write_text("distributed_type: FSDP\n" + counts)
    r = subprocess.run([sys.executable, "-m", "orchestrator", "import", str(config)], capture_output=True, text=True,
                       timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [f"{config}: cannot import: {needle}"]


@pytest.mark.parametrize("options,needle", [
    ({"nodes": 5000}, "nodes 5000: a TrainingJob takes 1 to 4096"),
    ({"gpus_per_node": 1000}, "gpus_per_node 1000: a TrainingJob takes 1 to 64"),
    ({"nodes": "2"}, "nodes must be a whole number, not '2'"),
])
def test_node_and_gpu_counts_from_python_are_refused_like_the_files(options: dict, needle: str) -> None:
    with pytest.raises(ImportRefused, match=needle):
        import_configs(None, {"zero_optimization": {"stage": 2}}, **options)


def test_credential_keys_are_dropped_with_a_note_naming_each_never_its_value() -> None:
    ds = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 2,
          "wandb": {"enabled": True, "project": "p", "api_key": "SECRET-1"},
          "auths": {"registry": {"auth": "SECRET-2", "email": "a@b"}},
          "comet": {"enabled": False, "apiKey": "SECRET-3"}, "hub_token": "SECRET-4",
          "checkpoint": {"password_file": "/run/secrets/p"}}  # a path to a secret is no secret: kept
    config = {"distributed_type": "DEEPSPEED", "deepspeed_config": {"deepspeed_config_file": "ds.json"},
              "num_processes": 2, "hf_token": "SECRET-5"}
    imported = import_configs(config, ds)
    text = imported.text()
    assert "SECRET-" not in text and "SECRET-" not in "\n".join(imported.not_carried + imported.differences)
    dropped = sorted(line.split(":")[0] for line in imported.not_carried if "holds a credential" in line)
    assert dropped == ["auths.registry.auth", "comet.apiKey", "hf_token", "hub_token", "wandb.api_key"]
    carried = imported.document["spec"]["deepspeed"]["config"]
    assert carried["wandb"] == {"enabled": True, "project": "p"} and carried["auths"] == {"registry": {"email": "a@b"}}
    assert carried["checkpoint"] == {"password_file": "/run/secrets/p"}
