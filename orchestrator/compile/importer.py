"""`shardctl import`: an existing accelerate config (and its DeepSpeed JSON) becomes a TrainingJob.

Every setting with a spec field goes to that field; backend keys with no neutral twin go verbatim to the
pass-through (`spec.fsdp.config`, `spec.deepspeed.config`); a missing key or an "auto" gets the value
accelerate or DeepSpeed would have used, and says so in a comment. Settings shardctl cannot carry (the
launch machinery the target owns, a CPU run, fp8) are listed, and so are the keys a spec field renders that
the imported ZeRO stage never reads (ZeRO-0's bucket sizes and overlap_comm, ZeRO-3's keys at ZeRO-1 or 2):
the spec renders them only where DeepSpeed reads them, so the pass-through may not carry them either. The
round trip is the contract: the spec is compiled again and both configs are read through `setup.read_setup`;
whatever differs is listed by `import` itself. What cannot be represented at all (DDP, Megatron, an unknown
ZeRO key) or would not run as given (fp16 with bf16, an "auto" nothing fills) is refused with the reason. The
imported YAML is read and checked as `shardctl validate` checks a file, so import never writes a spec that
validate refuses. Pure apart from `import_files`, which reads the files as untrusted input.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from orchestrator.compile import configs, passthrough, rules, setup
from orchestrator.compile.convert import is_deepspeed_json
from orchestrator.errors import ImportRefused
from orchestrator.spec.models import (
    API_VERSION,
    INT32_MAX,
    JSON_INT_MAX,
    KIND,
    Resources,
    TrainingJob,
    looks_like_secret,
)

# accelerate keys the target decides at launch (shardctl writes them per attempt).
_LAUNCH_KEYS = ("compute_environment", "machine_rank", "main_process_ip", "main_process_port", "rdzv_backend",
                "same_network", "main_training_function", "gpu_ids", "debug", "enable_cpu_affinity",
                "tpu_env", "tpu_use_cluster", "tpu_use_sudo", "tpu_name", "tpu_zone", "commands", "command_file",
                "downcast_bf16", "fsdp_config", "deepspeed_config", "megatron_lm_config", "dynamo_backend",
                "distributed_type", "num_processes", "num_machines", "mixed_precision", "use_cpu")
# Values of launch keys that say nothing beyond what shardctl writes anyway.
_USUAL: dict[str, Any] = {"downcast_bf16": "no", "debug": False, "tpu_use_cluster": False, "tpu_use_sudo": False,
                          "enable_cpu_affinity": False, "dynamo_backend": "NO"}
_DS_INLINE_LAUNCH = ("deepspeed_hostfile", "deepspeed_exclusion_filter", "deepspeed_inclusion_filter")
# ZeRO keys a spec field renders, in every DeepSpeed spelling (DeepSpeed reads a field's own name beside its
# "stage3_" alias) -> (the field under spec.deepspeed, the lowest ZeRO stage DeepSpeed reads the key at). The spec
# renders them only from that stage on, so at a lower stage the key is dropped, with a note.
_ZERO_FIELDS: dict[str, tuple[str, int]] = {
    "reduce_bucket_size": ("reduce_bucket_size", 1),
    "allgather_bucket_size": ("allgather_bucket_size", 1),
    "stage3_prefetch_bucket_size": ("stage3_prefetch_bucket_size", 3),
    "prefetch_bucket_size": ("stage3_prefetch_bucket_size", 3),
    "stage3_max_live_parameters": ("stage3_max_live_parameters", 3),
    "max_live_parameters": ("stage3_max_live_parameters", 3),
}
# The ZeRO keys whose "auto" accelerate fills (from the model's hidden size); DeepSpeed's parser refuses any other
# "auto" of a number or a switch.
_FILLED_AUTO = ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold")
_SAVE_16BIT = ("stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save",
               "stage3_gather_fp16_weights_on_model_save")


@dataclass
class Imported:
    document: dict[str, Any]
    comments: dict[str, str] = field(default_factory=dict)  # dotted path in the document -> why
    not_carried: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)  # original -> rendered, field by field

    def text(self) -> str:
        """The TrainingJob as YAML, commented where a value was mapped, defaulted or left out."""
        lines = ["# Imported by `shardctl import`."]
        lines += [f"# not carried: {line}" for line in self.not_carried]
        lines += [f"# differs after a render: {line}" for line in self.differences]
        lines += _emit(self.document, "", 0, self.comments)
        text = "\n".join(lines) + "\n"
        if yaml.safe_load(text) != self.document:  # the comments must never change what is read
            raise AssertionError("imported YAML does not read back as the document")
        return text


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _emit(node: dict[str, Any], prefix: str, indent: int, comments: dict[str, str]) -> list[str]:
    out = []
    pad = "  " * indent
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        note = f"  # {comments[path]}" if path in comments else ""
        name = _scalar(key)
        if isinstance(value, dict) and value:
            out.append(f"{pad}{name}:{note}")
            out += _emit(value, path, indent + 1, comments)
        else:
            out.append(f"{pad}{name}: {_scalar(value)}{note}")
    return out


# Keys that hold a credential although their names do not say so by the rule for variable names (a registry's
# `auths.HOST.auth`, an HTTP header).
_CREDENTIAL_KEYS = frozenset({"auth", "authorization"})


def _is_credential(key: Any) -> bool:
    """Whether a config key's name says it holds a credential (the rule for entrypoint.env's names, reused)."""
    name = str(key)
    return looks_like_secret(name) or name.lower() in _CREDENTIAL_KEYS


def _without_credentials(tree: Any, prefix: str, dropped: list[str]) -> Any:
    """`tree` with every key whose name says it holds a credential taken out, at any depth (a copy where one is);
    each dropped key's dotted path is added to `dropped`. The values are never looked at, never shown."""
    if isinstance(tree, dict):
        out: dict[Any, Any] = {}
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if _is_credential(key):
                dropped.append(path)
            else:
                out[key] = _without_credentials(value, path, dropped)
        return out
    if isinstance(tree, list):
        return [_without_credentials(item, f"{prefix}[{i}]", dropped) for i, item in enumerate(tree)]
    return tree


def _refuse(message: str) -> ImportRefused:
    return ImportRefused(f"cannot import: {message}")


def _whole(value: Any, where: str) -> int | None:
    """An integer from a config value (2e8 in JSON is a float); None for "auto" or absent."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or value < 0:
        raise _refuse(f"{where} must be a whole number, not {value!r}")
    return int(value)


def _count(value: Any, where: str, high: int, low: int = 1) -> int | None:
    """A whole number from low to high (a TrainingJob's bounds); None for "auto" or absent."""
    number = _whole(value, where)
    if number is not None and not low <= number <= high:
        raise _refuse(f"{where} {number}: a TrainingJob takes {low} to {high}")
    return number


def _limit(model: type[BaseModel], name: str) -> int:
    """The upper bound (le) of an integer field of the spec."""
    return next(int(m.le) for m in model.model_fields[name].metadata if getattr(m, "le", None) is not None)


def _switch(value: Any, where: str) -> bool | None:
    """A DeepSpeed boolean (its parser takes true/false, and their spellings as strings); None when null."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    if value == "auto":
        raise _refuse(f'{where} "auto": neither accelerate nor DeepSpeed fills it (DeepSpeed\'s parser refuses it): '
                      "give true or false")
    raise _refuse(f"{where} must be true or false, not {value!r}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _refuse(f"{where} must be a mapping, not {type(value).__name__}")
    return value


class _Builder:
    def __init__(self, name: str, script: str, model: str) -> None:
        self.spec: dict[str, Any] = {"entrypoint": {"script": script}, "model": {"name_or_path": model}}
        self.doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": self.spec}
        self.comments: dict[str, str] = {"spec.entrypoint.script": "not in the accelerate config: set it",
                                         "spec.model.name_or_path": "not in the accelerate config: set it"}
        self.not_carried: list[str] = []

    def set(self, path: str, value: Any, comment: str | None = None) -> None:
        node = self.spec
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        if comment:
            self.comments[f"spec.{path}"] = comment


def _machines(b: _Builder, config: dict[str, Any], nodes: int | None, gpus_per_node: int | None) -> int:
    max_nodes, max_gpus = _limit(Resources, "nodes"), _limit(Resources, "gpus_per_node")
    processes = _count(config.get("num_processes") or 1, "num_processes", max_nodes * max_gpus) or 1  # 0: unset
    machines = _count(config.get("num_machines") or 1, "num_machines", max_nodes) or 1
    if nodes or gpus_per_node:
        machines = nodes or machines
        processes = machines * (gpus_per_node or max(1, processes // machines))
    if processes % machines:
        raise _refuse(f"num_processes {processes} is not a multiple of num_machines {machines}")
    if not 1 <= processes // machines <= max_gpus:
        raise _refuse(f"{processes} processes on {machines} machine(s) is {processes // machines} GPUs per node: a "
                      f"TrainingJob takes 1 to {max_gpus}")
    b.set("resources.nodes", machines, None if "num_machines" in config else "num_machines unset: 1")
    b.set("resources.gpus_per_node", processes // machines, "num_processes / num_machines")
    usual = {**_USUAL, **configs.machine_keys(TrainingJob.model_validate(b.doc).spec)}
    for key in _LAUNCH_KEYS[:-6]:
        if key not in ("fsdp_config", "deepspeed_config") and config.get(key) not in (None, [], {}, usual.get(key)):
            b.not_carried.append(f"{key}: {config[key]!r} (the target sets it at launch)")
    for key in sorted(set(config) - set(_LAUNCH_KEYS), key=str):
        if config[key] not in (None, {}, [], False, "no", "NO"):
            b.not_carried.append(f"{key}: {config[key]!r} (no TrainingJob field; accelerate's own feature, "
                                 "left to the training script)")
    if config.get("use_cpu") is True:
        raise _refuse("use_cpu: true: shardctl runs FSDP and DeepSpeed on GPUs")
    return processes


def _mixed(b: _Builder, value: Any, comment: str | None = None) -> str:
    mixed = "no" if value in (None, False) else str(value)
    if mixed == "fp8":
        raise _refuse("mixed_precision fp8: a TrainingJob has no fp8 (use bf16)")
    if mixed not in ("no", "fp16", "bf16"):
        raise _refuse(f"mixed_precision {value!r}: use no, fp16 or bf16")
    b.set("precision.mixed", mixed, comment or (None if value is not None else "mixed_precision unset: no"))
    return mixed


def _upper(value: Any) -> Any:
    """accelerate reads the FSDP enum names in any case."""
    return value.upper() if isinstance(value, str) else value


def _import_fsdp(b: _Builder, config: dict[str, Any]) -> None:
    fc = dict(_mapping(config.get("fsdp_config"), "fsdp_config"))
    b.set("backend", "fsdp")
    for key in sorted(set(fc) - passthrough.FSDP_KEYS, key=str):
        b.not_carried.append(f"fsdp_config.{key}: {fc.pop(key)!r} (not an accelerate fsdp_config key: accelerate "
                             f"ignores it{passthrough.did_you_mean(str(key), passthrough.FSDP_KEYS)})")
    _mixed(b, config.get("mixed_precision"))
    version = _whole(fc.pop("fsdp_version", 1), "fsdp_config.fsdp_version")
    if version not in (1, 2):
        raise _refuse(f"fsdp_version {version}: accelerate has FSDP 1 and 2")
    b.set("fsdp.version", version)
    if version == 1:
        raw = fc.pop("fsdp_sharding_strategy", None)
        ignored = fc.pop("fsdp_reshard_after_forward", None)
        if ignored is not None:
            b.not_carried.append(f"fsdp_config.fsdp_reshard_after_forward: {ignored!r} (accelerate ignores it with "
                                 "FSDP1 and runs fsdp_sharding_strategy)")
        strategy = setup.fsdp_setup({"fsdp_config": {"fsdp_sharding_strategy": raw or "FULL_SHARD"}})["sharding"]
        if strategy not in rules.FSDP_STRATEGY_TO_LEVEL:
            raise _refuse(f"fsdp_sharding_strategy {strategy}: no TrainingJob sharding level (HYBRID_SHARD_ZERO2 "
                          "has no DeepSpeed twin)")
        if strategy == "HYBRID_SHARD" and b.spec["resources"]["nodes"] < 2:
            raise _refuse("fsdp_sharding_strategy HYBRID_SHARD on one machine: a TrainingJob's hybrid sharding "
                          "shards within a node and replicates across nodes (use FULL_SHARD, or num_machines > 1)")
        b.set("sharding", rules.FSDP_STRATEGY_TO_LEVEL[strategy], None if raw else "fsdp_sharding_strategy unset: "
              "accelerate runs FULL_SHARD")
        prefetch = _upper(fc.pop("fsdp_backward_prefetch", None)) or "NO_PREFETCH"
        if prefetch not in ("BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH"):
            raise _refuse(f"fsdp_backward_prefetch {prefetch!r}: use BACKWARD_PRE, BACKWARD_POST or NO_PREFETCH")
        b.set("fsdp.backward_prefetch", prefetch, None if prefetch != "NO_PREFETCH" else
              "fsdp_backward_prefetch unset: accelerate does not prefetch")
        for key, name, default in (("fsdp_forward_prefetch", "forward_prefetch", False),
                                   ("fsdp_use_orig_params", "use_orig_params", True),
                                   ("fsdp_sync_module_states", "sync_module_states", True)):
            b.set(f"fsdp.{name}", setup.as_bool(fc.pop(key, default)))
        old = fc.pop("fsdp_backward_prefetch_policy", None)
        if old is not None:
            b.not_carried.append(f"fsdp_config.fsdp_backward_prefetch_policy: {old!r} (an old spelling accelerate "
                                 "1.x ignores; fsdp_backward_prefetch is the key)")
    else:
        reshard = setup.as_bool(fc.pop("fsdp_reshard_after_forward", True))
        b.set("sharding", "full" if reshard else "grad_op", "fsdp_reshard_after_forward: FULL_SHARD / SHARD_GRAD_OP")
        for key in ("fsdp_sharding_strategy", "fsdp_backward_prefetch", "fsdp_forward_prefetch",
                    "fsdp_use_orig_params", "fsdp_sync_module_states", "fsdp_backward_prefetch_policy"):
            if key in fc:
                b.not_carried.append(f"fsdp_config.{key}: {fc.pop(key)!r} (FSDP1 only; FSDP2 ignores it)")
    if setup.as_bool(fc.pop("fsdp_offload_params", False)):
        b.set("offload", {"optimizer": "cpu", "params": "cpu"}, "fsdp_offload_params: FSDP offloads all or nothing")
    given_state = _upper(fc.pop("fsdp_state_dict_type", None))
    state = given_state or ("FULL_STATE_DICT" if version == 1 else "SHARDED_STATE_DICT")
    if state not in ("FULL_STATE_DICT", "SHARDED_STATE_DICT"):
        raise _refuse(f"fsdp_state_dict_type {state}: use FULL_STATE_DICT or SHARDED_STATE_DICT")
    b.set("fsdp.state_dict_type", state, None if given_state else
          f"fsdp_state_dict_type unset: accelerate saves {state} with FSDP{version}")
    b.set("fsdp.cpu_ram_efficient_loading", setup.as_bool(fc.pop("fsdp_cpu_ram_efficient_loading", True)))
    b.set("activation_checkpointing", setup.as_bool(fc.pop("fsdp_activation_checkpointing", False)))
    policy = _upper(fc.pop("fsdp_auto_wrap_policy", None)) or "NO_WRAP"
    if policy not in ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"):
        raise _refuse(f"fsdp_auto_wrap_policy {policy!r}: use TRANSFORMER_BASED_WRAP, SIZE_BASED_WRAP or NO_WRAP")
    if "fsdp_min_num_params" in fc:
        _whole(fc["fsdp_min_num_params"], "fsdp_config.fsdp_min_num_params")
    layers = fc.pop("fsdp_transformer_layer_cls_to_wrap", None)
    if policy == "TRANSFORMER_BASED_WRAP":
        if layers:
            b.set("model.layer_class", str(layers))
    else:
        fc["fsdp_auto_wrap_policy"] = policy
        if layers:
            b.not_carried.append(f"fsdp_config.fsdp_transformer_layer_cls_to_wrap: {layers!r} (unused with {policy})")
        if policy != "SIZE_BASED_WRAP":
            fc.pop("fsdp_min_num_params", None)
    if fc:
        b.set("fsdp.config", fc, "accelerate fsdp_config keys with no spec field, carried verbatim")


def _import_deepspeed(b: _Builder, config: dict[str, Any], ds_json: dict[str, Any] | None, world: int) -> None:
    inline = dict(_mapping(config.get("deepspeed_config"), "deepspeed_config"))
    b.set("backend", "deepspeed")
    inline.pop("deepspeed_config_file", None)
    launcher = inline.pop("deepspeed_multinode_launcher", "standard")
    if launcher != "standard" and b.spec["resources"]["nodes"] > 1:
        b.not_carried.append(f"deepspeed_multinode_launcher: {launcher!r} (shardctl starts every node itself: "
                             "standard)")
    for key in _DS_INLINE_LAUNCH:
        if inline.get(key) not in (None, ""):
            b.not_carried.append(f"deepspeed_config.{key}: {inline.pop(key)!r} (the target places the processes)")
    moe = inline.pop("deepspeed_moe_layer_cls_names", None)
    if moe:
        b.not_carried.append(f"deepspeed_config.deepspeed_moe_layer_cls_names: {moe!r} (no TrainingJob field)")
    init_given = inline.pop("zero3_init_flag", None)
    if ds_json is None:  # accelerate builds the JSON from the inline keys
        if inline.get("zero_stage") is None:
            inline.pop("zero_stage", None)  # accelerate's default, 2
        else:
            inline["zero_stage"] = _stage(inline["zero_stage"], "deepspeed_config.zero_stage")
        ds_json = setup.inline_deepspeed_json(inline, str(config.get("mixed_precision") or "no"), world)
        ds_json["gradient_clipping"] = inline.get("gradient_clipping", 1.0)  # accelerate fills "auto" with 1.0
        mixed_comment = None
        if "gradient_accumulation_steps" not in inline:
            ds_json["gradient_accumulation_steps"] = "auto"
    else:
        mixed_comment = "from the DeepSpeed JSON"
        if config.get("mixed_precision") not in (None, "no", False):
            b.not_carried.append(f"mixed_precision: {config['mixed_precision']!r} beside a deepspeed_config_file "
                                 "(accelerate refuses the pair; precision comes from the JSON's fp16/bf16)")
    ds = copy.deepcopy(ds_json)
    zero = _mapping(ds.get("zero_optimization"), "zero_optimization")
    if "zero_optimization" not in ds:
        raise _refuse("the DeepSpeed JSON has no zero_optimization section, and accelerate refuses it without one "
                      '(add "zero_optimization": {"stage": 0} for what DeepSpeed alone would run)')
    for key in zero:
        if key not in passthrough.ZERO_KEYS:
            raise _refuse(f"zero_optimization.{key} is not a DeepSpeed ZeRO key: DeepSpeed's own parser refuses "
                          f"this config{passthrough.did_you_mean(key, passthrough.ZERO_KEYS)}")
    stage = _stage(zero.pop("stage", 0), "zero_optimization.stage")
    hpz = _whole(zero.pop("zero_hpz_partition_size", 1), "zero_optimization.zero_hpz_partition_size") or 1
    gpn = b.spec["resources"]["gpus_per_node"]
    init = setup.as_bool(init_given) if init_given is not None else stage == 3  # accelerate: on at ZeRO-3
    if stage == 3 and hpz > 1:
        if hpz != gpn or b.spec["resources"]["nodes"] < 2:
            raise _refuse(f"zero_hpz_partition_size {hpz} on {b.spec['resources']['nodes']} node(s) of {gpn} GPUs: "
                          "shardctl's hybrid sharding partitions within a node of several; give --nodes and "
                          f"--gpus-per-node {hpz}")
        b.set("sharding", "hybrid", "zero_hpz_partition_size = GPUs per node: ZeRO++ hpZ")
    else:
        b.set("sharding", rules.ZERO_STAGE_TO_LEVEL[stage], f"ZeRO stage {stage}")
        if hpz > 1:
            b.not_carried.append(f"zero_optimization.zero_hpz_partition_size: {hpz} (ZeRO++ hpZ is ZeRO-3 only; "
                                 f"unused at ZeRO-{stage})")
    _offload(b, zero, stage)
    _precision(b, ds, config, mixed_comment)
    _batch(b, ds, world)
    clip = ds.pop("gradient_clipping", None)
    if clip not in ("auto", None) and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                                      or not math.isfinite(clip) or clip < 0):
        raise _refuse(f"gradient_clipping must be a number of at least 0 (0: no clipping), not {clip!r}")
    b.set("deepspeed.gradient_clipping", 1.0 if clip in ("auto", None) else float(clip),
          "auto: accelerate fills 1.0" if clip == "auto" else (None if clip is not None else
                                                                 "unset: accelerate fills 1.0"))
    _zero_options(b, zero, stage, init, init_given)
    if zero:
        ds["zero_optimization"] = zero
    else:
        ds.pop("zero_optimization", None)
    if ds:
        b.set("deepspeed.config", ds, "DeepSpeed keys with no spec field, carried verbatim into the JSON")


def _stage(value: Any, where: str) -> int:
    if value == "auto":
        raise _refuse(f'{where} "auto": accelerate fills it from its own zero_stage (2 unless the launch sets '
                      "another); give the stage, 0 to 3")
    stage = _whole(value, where) or 0
    if stage > 3:
        raise _refuse(f"{where} {stage}: ZeRO stages are 0 to 3")
    return stage


def _offload(b: _Builder, zero: dict[str, Any], stage: int) -> None:
    """zero_optimization's offload sections (and their old spellings) -> spec.offload; removed from `zero`."""
    devices, paths = {}, set()
    for section, legacy, name, lowest in (("offload_optimizer", "cpu_offload", "optimizer", 1),
                                          ("offload_param", "cpu_offload_param", "params", 3)):
        sub = _mapping(zero.get(section), f"zero_optimization.{section}")
        for key in sub:
            if key not in passthrough.OFFLOAD_KEYS[section]:
                hint = passthrough.did_you_mean(key, passthrough.OFFLOAD_KEYS[section])
                raise _refuse(f"zero_optimization.{section}.{key} is not a DeepSpeed offload key: DeepSpeed's own "
                              f"parser refuses this config{hint}")
        device = sub.get("device") or ("cpu" if zero.get(legacy) is True else "none")
        if device not in ("none", "cpu", "nvme"):
            raise _refuse(f"zero_optimization.{section}.device {device!r}: use none, cpu or nvme")
        if legacy in zero:
            b.not_carried.append(f"zero_optimization.{legacy}: {zero.pop(legacy)!r} (DeepSpeed's old spelling; "
                                 f"written as offload.{name})")
        if device != "none" and stage < lowest:
            if name == "optimizer":
                raise _refuse(f"zero_optimization.{section}.device {device}: optimizer offload needs ZeRO stage 1, 2 "
                              "or 3 (at ZeRO-0 there is no partitioned optimizer to offload): set the stage, or "
                              "device none")
            b.not_carried.append(f"zero_optimization.{section}: parameter offload to {device} (ZeRO-3 only; "
                                 f"DeepSpeed ignores it at ZeRO-{stage})")
            device = "none"
        devices[name] = device
        if device == "nvme":
            path = sub.get("nvme_path")
            if not isinstance(path, str) or not path:
                raise _refuse(f"zero_optimization.{section}.device nvme needs nvme_path, a directory on a local NVMe "
                              f"drive (not {path!r})")
            paths.add(path)
        for key in ("device", "nvme_path"):
            sub.pop(key, None)
        if device == "none":
            zero.pop(section, None)
    if len(paths) > 1:
        raise _refuse(f"two NVMe paths ({', '.join(sorted(paths))}): a TrainingJob has one nvme_path")
    if devices["optimizer"] != "none" or devices["params"] != "none":
        b.set("offload", {**devices, **({"nvme_path": paths.pop()} if paths else {})})


def _precision(b: _Builder, ds: dict[str, Any], config: dict[str, Any], mixed_comment: str | None) -> None:
    """fp16/bf16.enabled -> spec.precision.mixed; removed from `ds`."""
    found = []
    for name in ("fp16", "bf16"):
        sub = _mapping(ds.get(name), name)
        value = sub.pop("enabled", False)
        if value == "auto":
            value = config.get("mixed_precision") == name
            launch = config.get("mixed_precision") or "no"
            mixed_comment = f"{name}.enabled auto: the launch's mixed_precision ({launch})"
        if _switch(value, f"{name}.enabled"):
            found.append(name)
        if not sub:
            ds.pop(name, None)
    if len(found) > 1:
        raise _refuse("fp16 and bf16 both enabled: DeepSpeed refuses the pair (one mixed precision at a time)")
    _mixed(b, found[0] if found else "no", mixed_comment)


def _batch(b: _Builder, ds: dict[str, Any], world: int) -> None:
    """The batch arithmetic, as DeepSpeed does it -> spec.batch; removed from `ds`."""
    micro = _count(ds.pop("train_micro_batch_size_per_gpu", None), "train_micro_batch_size_per_gpu", INT32_MAX)
    total = _count(ds.pop("train_batch_size", None), "train_batch_size", INT32_MAX)
    accum = _count(ds.pop("gradient_accumulation_steps", None), "gradient_accumulation_steps", INT32_MAX)
    if total and micro and not accum:
        accum = total // (micro * world) if total % (micro * world) == 0 else None
    if total and accum and not micro:
        micro = total // (accum * world) if total % (accum * world) == 0 else None
    if total and not micro and not accum:
        micro, accum = (total // world, 1) if total % world == 0 else (None, None)
    if total and micro and accum and total != micro * accum * world:
        raise _refuse(f"train_batch_size {total} is not micro {micro} x accumulation {accum} x {world} processes")
    if total and not micro:
        raise _refuse(f"train_batch_size {total} does not divide over {world} processes")
    if (micro or 1) * (accum or 1) * world > INT32_MAX:
        raise _refuse(f"micro {micro or 1} x accumulation {accum or 1} x {world} processes: a TrainingJob's global "
                      f"batch is at most {INT32_MAX}")
    b.set("batch.micro", micro or 1, None if micro else "train_micro_batch_size_per_gpu auto: the dataloader's "
          "batch size at run time; shardctl states it: set it")
    b.set("batch.global", (micro or 1) * (accum or 1) * world, "micro x accumulation x GPUs")


def _zero_options(b: _Builder, zero: dict[str, Any], stage: int, init: bool, init_given: Any) -> None:
    """The ZeRO keys a spec field renders -> spec.deepspeed; a key the imported stage does not read is dropped,
    with a note (the spec renders it only at the stages that read it, and `validate` refuses it in the
    pass-through). What stays in `zero` is pass-through."""
    overlap = _switch(zero.pop("overlap_comm", None), "zero_optimization.overlap_comm") if "overlap_comm" in zero \
        else None
    if stage == 0:
        if overlap is not None:
            b.not_carried.append(f"zero_optimization.overlap_comm: {overlap!r} (unused at ZeRO-0: DeepSpeed reads "
                                 "it at ZeRO-1 to 3 only)")
    else:
        b.set("deepspeed.overlap_comm", stage == 3 if overlap is None else overlap,
              None if overlap is not None else "unset: DeepSpeed overlaps at ZeRO-3 only")
    spelled: dict[str, str] = {}
    for key, (name, lowest) in _ZERO_FIELDS.items():
        if key not in zero:
            continue
        where = f"zero_optimization.{key}"
        value = zero[key]
        if value == "auto" and key not in _FILLED_AUTO:
            raise _refuse(f'{where} "auto": accelerate fills "auto" only in {", ".join(_FILLED_AUTO)}, and '
                          "DeepSpeed's parser refuses it here: give a number")
        if name in spelled:
            raise _refuse(f"{where} and zero_optimization.{spelled[name]} are one DeepSpeed setting: give one")
        spelled[name] = key
        if stage < lowest:
            del zero[key]
            b.not_carried.append(f"{where}: {value!r} (unused at ZeRO-{stage}: DeepSpeed reads it at ZeRO-{lowest}"
                                 f"{' to 3' if lowest < 3 else ''} only)")
        elif value != "auto":  # an "auto" accelerate fills stays in the pass-through, as the spec allows
            if value is None:
                raise _refuse(f"{where}: null, which DeepSpeed's parser refuses: give a number or leave it out")
            del zero[key]
            b.set(f"deepspeed.{name}", _count(value, where, JSON_INT_MAX))
    given_save = [key for key in _SAVE_16BIT if key in zero]
    if stage == 3:
        save: Any = False
        if given_save:
            save = zero[given_save[0]]
            save = save if save == "auto" else _switch(save, f"zero_optimization.{given_save[0]}")
        for key in given_save:
            del zero[key]
        b.set("deepspeed.save_16bit_model", save is True, "auto: accelerate fills false" if save == "auto" else None)
        b.set("deepspeed.zero3_init", init, None if init_given is not None else
              "zero3_init_flag unset: accelerate turns it on at ZeRO-3")
    else:
        for key in given_save:
            value = zero.pop(key)
            if value:
                b.not_carried.append(f"zero_optimization.{key}: {value!r} (ZeRO-3 only; unused at ZeRO-{stage})")
        if init:
            b.not_carried.append(f"zero3_init_flag: true (ZeRO-3 only; accelerate turns it off at ZeRO-{stage})")


# Keys whose null this importer reads as unset (the backend's default), and so does the round trip: dropped first.
_NULL_IS_UNSET_CONFIG = ("num_processes", "num_machines", "deepspeed_config.zero_stage", "fsdp_config.fsdp_version",
                         "fsdp_config.fsdp_min_num_params")
_NULL_IS_UNSET_JSON = ("zero_optimization.stage", "zero_optimization.zero_hpz_partition_size", "gradient_clipping")


def _unset_nulls(tree: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """`tree` without the null values at `paths` (a copy where one is dropped)."""
    out = tree
    for path in paths:
        has, value = passthrough.lookup(out, path)
        if has and value is None:
            out = copy.deepcopy(out) if out is tree else out
            *parents, last = path.split(".")
            node = out
            for part in parents:
                node = node[part]
            del node[last]
    return out


def import_configs(config: dict[str, Any] | None, ds_json: dict[str, Any] | None = None, *, name: str = "imported",
                   script: str = "train.py", model: str = "MODEL", nodes: int | None = None,
                   gpus_per_node: int | None = None) -> Imported:
    """An accelerate config and/or a DeepSpeed JSON -> the TrainingJob, what was not carried, what differs."""
    if config is None or is_deepspeed_json(config):
        if config is not None:
            ds_json = config
        if ds_json is None:
            raise _refuse("no accelerate config and no DeepSpeed JSON")
        config = {"distributed_type": "DEEPSPEED", "deepspeed_config": {}}
    # a credential never goes into a spec: the spec is stored and rendered (launch.sh, the JSON) in plain text
    dropped: list[str] = []
    config = _without_credentials(config, "", dropped)
    if ds_json is not None:
        ds_json = _without_credentials(ds_json, "", dropped)
    nodes = _count(nodes, "nodes", _limit(Resources, "nodes"))
    gpus_per_node = _count(gpus_per_node, "gpus_per_node", _limit(Resources, "gpus_per_node"))
    config = _unset_nulls(_mapping(config, "the accelerate config"), _NULL_IS_UNSET_CONFIG)
    if ds_json is not None:
        ds_json = _unset_nulls(_mapping(ds_json, "the DeepSpeed JSON"), _NULL_IS_UNSET_JSON)
    kind = config.get("distributed_type")
    if kind not in ("FSDP", "DEEPSPEED"):
        nearest = " (plain DDP: the nearest TrainingJob is sharding: none)" if kind == "MULTI_GPU" else ""
        raise _refuse(f"distributed_type {kind!r}: shardctl runs FSDP or DeepSpeed{nearest}")
    b = _Builder(name, script, model)
    b.not_carried += [f"{path}: dropped, its value not shown (the name says it holds a credential, and a spec is "
                      "stored and rendered in plain text: give it to the job through entrypoint.env_from)"
                      for path in dropped]
    world = _machines(b, config, nodes, gpus_per_node)
    if kind == "FSDP":
        _import_fsdp(b, config)
    else:
        _import_deepspeed(b, config, ds_json, world)
    result = Imported(b.doc, b.comments, b.not_carried)
    job = _validated(result)
    result.differences = round_trip(job, config, ds_json)
    return result


def _validated(result: Imported) -> TrainingJob:
    """The imported YAML, read and checked exactly as `shardctl validate` reads and checks a file (the spec's
    loader, then every rule); anything refused here is a gap in the mapping above, never the input's fault."""
    from orchestrator.spec import SpecError
    from orchestrator.spec.loader import parse_spec_text

    try:
        job = parse_spec_text(result.text(), "<imported>").job
        problems = [str(p) for p in rules.errors(rules.check(job))]
    except SpecError as exc:
        problems = [str(p) for p in exc.problems]
    if problems:
        raise _refuse("the imported spec fails `shardctl validate` (a gap in `shardctl import`; please report it): "
                      + "; ".join(problems))
    return job


def round_trip(job: TrainingJob, config: dict[str, Any], ds_json: dict[str, Any] | None) -> list[str]:
    """What the render of `job` runs differently from the original, field by field."""
    spec = job.spec
    rendered = configs.accelerate_config(spec, "/imported")
    original = setup.read_setup(config, ds_json)
    again = setup.read_setup(rendered, configs.deepspeed_json(spec))
    return setup.differences(original, again)


def import_files(config_file: str | None, ds_file: str | None = None, **options: Any) -> Imported:
    """Read the files (bounded, as untrusted input) and import them. A deepspeed_config_file named in the
    accelerate config is read relative to the config's folder, then to the current one (as accelerate does)."""
    from orchestrator.spec import SpecError
    from orchestrator.spec.loader import decode_text, load_json, load_yaml, read_input_file

    def read(path: Path, json_only: bool) -> Any:
        try:
            text = decode_text(read_input_file(path), str(path))
            if json_only or path.suffix == ".json":
                return load_json(text)
            documents = [d for d in load_yaml(text) if d is not None]
        except SpecError as exc:
            raise ImportRefused("\n".join(str(p) for p in exc.problems)) from None
        except (ValueError, yaml.YAMLError) as exc:
            raise ImportRefused(f"{path}: cannot read: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        if len(documents) != 1:
            raise ImportRefused(f"{path}: expected one YAML document, found {len(documents)}")
        return documents[0]

    config = read(Path(config_file), False) if config_file else None
    ds_json = read(Path(ds_file), True) if ds_file else None
    inline = config.get("deepspeed_config") if isinstance(config, dict) else None
    named = inline.get("deepspeed_config_file") if isinstance(inline, dict) else None
    if named and ds_json is None:
        if not isinstance(named, str):
            raise ImportRefused("deepspeed_config.deepspeed_config_file must be a file name")
        candidates = [Path(named)] if Path(named).is_absolute() else [Path(config_file or ".").parent / named,
                                                                      Path(named)]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise ImportRefused(f"deepspeed_config_file {named} not found; pass it with --ds-config")
        ds_json = read(found, True)
    try:
        return import_configs(config, ds_json, **options)
    except ImportRefused as exc:
        where = config_file or ds_file
        raise ImportRefused(f"{where}: {exc}") from None
