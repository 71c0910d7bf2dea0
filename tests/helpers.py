"""Spec builders and hypothesis strategies shared by the tests."""

from __future__ import annotations

import copy
import time
from typing import Any

from hypothesis import strategies as st

from orchestrator.compile import rules
from orchestrator.spec.models import TrainingJob

BASE: dict[str, Any] = {
    "apiVersion": "shardctl.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "t"},
    "spec": {
        "entrypoint": {"script": "train.py",
                       "args": ["--micro-batch", "{micro_batch}", "--grad-accum", "{grad_accum}"]},
        "model": {"name_or_path": "tiny"},
    },
}


def doc(**spec: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["spec"].update(spec)
    return d


def job(**spec: Any) -> TrainingJob:
    return TrainingJob.model_validate(doc(**spec))


@st.composite
def valid_specs(draw) -> TrainingJob:
    """Specs that pass every rule: the population the parsers must accept."""
    backend = draw(st.sampled_from(["fsdp", "deepspeed"]))
    nodes = draw(st.integers(1, 3))
    gpn = draw(st.integers(1, 8))
    levels = ["none", "grad_op", "full"] + (["optimizer"] if backend == "deepspeed" else [])
    if nodes > 1:
        levels.append("hybrid")
    sharding = draw(st.sampled_from(levels))
    stage = rules.SHARDING_TABLE[sharding][1]
    devices = ["none", "cpu"] + (["nvme"] if backend == "deepspeed" else [])
    opt = draw(st.sampled_from(devices)) if (backend == "fsdp" or stage > 0) else "none"
    par = draw(st.sampled_from(devices)) if (backend == "fsdp" or stage == 3) else "none"
    micro = draw(st.integers(1, 16))
    accum = draw(st.integers(1, 8))
    spec: dict[str, Any] = {
        "backend": backend,
        "sharding": sharding,
        "precision": {"mixed": draw(st.sampled_from(["no", "fp16", "bf16"])),
                      "params": draw(st.sampled_from(["fp32", "bf16"]))},
        "offload": {"optimizer": opt, "params": par},
        "activation_checkpointing": draw(st.booleans()),
        "torch_compile": draw(st.booleans()),
        "batch": {"micro": micro, "global": micro * accum * nodes * gpn},
        "resources": {"nodes": nodes, "gpus_per_node": gpn},
        "model": {"name_or_path": "tiny", "layer_class": draw(st.sampled_from([None, "LlamaDecoderLayer"]))},
    }
    if "nvme" in (opt, par):
        spec["offload"]["nvme_path"] = "/local_nvme"
    if backend == "fsdp":
        version = 2 if sharding in ("full", "grad_op") and draw(st.booleans()) else 1
        spec["fsdp"] = {"version": version,
                        "cpu_ram_efficient_loading": draw(st.sampled_from([None, True, False])),
                        "backward_prefetch": draw(st.sampled_from(["BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH"])),
                        "state_dict_type": draw(st.sampled_from(["SHARDED_STATE_DICT", "FULL_STATE_DICT"]))}
    elif stage == 3:
        spec["deepspeed"] = {"zero3_init": draw(st.sampled_from([None, False, True])),
                             "save_16bit_model": draw(st.booleans())}
    return job(**spec)


def wait_for(predicate, timeout: float, what: str):
    """Poll until predicate() is truthy (returns it), or fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
