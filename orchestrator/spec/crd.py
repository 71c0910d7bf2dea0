"""The TrainingJob CustomResourceDefinition, generated from the pydantic models.

Kubernetes wants a *structural* OpenAPI v3 schema (apiextensions.k8s.io/v1): no $ref, no
`const`, no `additionalProperties: false`, a `type` on every node (or an x-kubernetes-*
escape), `nullable` instead of a null type, OpenAPI 3.0's boolean `exclusiveMinimum`, and
nothing but value checks inside anyOf. This turns the pydantic JSON Schema into that.
Unions of different types (a parameter count as 6.7e9 or "7B", a ladder as "auto" or a list)
become `x-kubernetes-int-or-string` or `x-kubernetes-preserve-unknown-fields`; the controller
validates every resource with the pydantic model anyway, with the same error messages as
`shardctl validate`.

What can be refused at admission is refused there, so that `kubectl apply` answers at once
instead of a TrainingJob that fails a second later: every property carries its pydantic
description (`kubectl explain trainingjob.spec.batch`), `metadata.name` must be a DNS-1123 label
(it names pods and host names), and CEL rules (`x-kubernetes-validations`) state the cross-field
rules of orchestrator.compile.rules that CEL can state exactly (RULES below). The rules that
depend on `sharding` are left to the controller: the model accepts native spellings (FULL_SHARD,
zero3, 3, with any case, spaces, `_` or `-`), and CEL cannot normalise them exactly.

    python -m orchestrator.spec.crd      # rewrites manifests/crd.yaml and the chart's copy
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from orchestrator.spec.models import API_VERSION, DNS1123_LABEL, KIND, Metadata, TrainingJobSpec
from orchestrator.spec.status import TrainingJobStatus

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "trainingjobs"
CRD_NAME = f"{PLURAL}.{GROUP}"
ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = (ROOT / "manifests" / "crd.yaml", ROOT / "charts" / "shardctl" / "crds" / "trainingjobs.yaml")

_DROP = {"title", "examples", "default", "$schema", "$id", "$defs"}

# CEL rules, by the path of the object they sit on inside spec ("" = spec itself). The CRD has no
# defaults (the pydantic model owns them), so an absent field is the model's default and every rule
# spells it out: backend fsdp, micro 1, one node of one GPU, offload none. A null is absent in CEL
# (has() is false), as None is unset in the model. Only scalar fields are read: each rule's cost is
# a constant, far below the API server's budget, whatever the size of the resource.
_NVME = "has(self.offload) && has(self.offload.{0}) && self.offload.{0} == 'nvme'"
_DEEPSPEED = "has(self.backend) && self.backend == 'deepspeed'"
_OR_ONE = "(has(self.{0}) && has(self.{0}.{1}) ? self.{0}.{1} : 1)"
RULES: dict[str, list[dict[str, str]]] = {
    "": [
        {"rule": "has(self.kubernetes) && has(self.kubernetes.image) && self.kubernetes.image != ''",
         # the controller runs every TrainingJob as Indexed Jobs, whatever spec.target says (target is
         # the CLI's choice): without an image the API refuses each attempt's Job (422)
         "message": "an image is required: the controller runs every TrainingJob on Kubernetes",
         "fieldPath": ".kubernetes.image", "reason": "FieldValueRequired"},
        {"rule": "!has(self.batch) || !has(self.batch.global) || self.batch.global % ("
                 + " * ".join((_OR_ONE.format("batch", "micro"), _OR_ONE.format("resources", "nodes"),
                               _OR_ONE.format("resources", "gpus_per_node"))) + ") == 0",
         "message": "must be a multiple of micro x world size (resources.nodes x resources.gpus_per_node): "
                    "gradient accumulation = global / (micro x world size)",
         "fieldPath": ".batch.global"},
        *({"rule": f"!({_NVME.format(which)}) || ({_DEEPSPEED})",
           "message": "NVMe offload exists only in DeepSpeed (ZeRO-Infinity); set backend: deepspeed, "
                      "or offload to cpu",
           "fieldPath": f".offload.{which}"} for which in ("optimizer", "params")),
    ],
    "offload": [
        {"rule": "!((has(self.optimizer) && self.optimizer == 'nvme') || (has(self.params) && self.params == 'nvme'))"
                 " || (has(self.nvme_path) && self.nvme_path != '')",
         "message": "nvme offload needs nvme_path, a directory on a local NVMe drive",
         "fieldPath": ".nvme_path", "reason": "FieldValueRequired"},
    ],
}
_ROOT_DESCRIPTIONS = {
    "apiVersion": "APIVersion defines the versioned schema of this representation of an object: "
                  f"{API_VERSION}.",
    "kind": f"Kind is a string value representing the REST resource this object represents: {KIND}.",
}
# The root metadata may restrict name and generateName and say nothing else (a description makes the
# schema non-structural: "must not specify anything other than name and generateName").
_METADATA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 63, "pattern": DNS1123_LABEL.pattern,
                            "description": Metadata.model_fields["name"].description}},
}


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        return _union(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _structural(value, defs)
            # `false` is not allowed in a CRD; unknown fields are pruned (and kubectl warns)
        elif key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string" if all(isinstance(v, str) for v in out["enum"]) else "integer"
    return out


def _union(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    options = [o for o in node["anyOf"] if o.get("type") != "null"]
    nullable = len(options) < len(node["anyOf"])
    outer = {k: v for k, v in node.items() if k not in _DROP and k != "anyOf"}
    flat: list[dict[str, Any]] = []
    for option in options:  # nested unions (a nullable alias of a union) flatten
        option = _structural(option, defs)
        flat.extend(option.pop("x-union", [option]))
    if len(flat) == 1:
        out = {**flat[0], **outer}
    else:
        types = {o.get("type") for o in flat}
        if types <= {"string"}:
            enums = [v for o in flat for v in o.get("enum", [])]
            out = {"type": "string", **outer}
            if all("enum" in o for o in flat):
                out["enum"] = enums
        elif types <= {"string", "integer"}:
            out = {"x-kubernetes-int-or-string": True, **outer}
            for kind, checks in (("string", ("pattern", "minLength", "maxLength")),
                                 ("integer", ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"))):
                same = [o for o in flat if o.get("type") == kind]
                if len(same) == 1:  # OpenAPI applies a value check to values of its own type only
                    out.update({k: v for k, v in same[0].items() if k in checks})
        else:
            out = {"x-kubernetes-preserve-unknown-fields": True, **outer}
        out["x-union"] = flat  # for a union nested in this one; removed before output
    if nullable:
        out["nullable"] = True
    return out


def _clean(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _clean(v) for k, v in node.items() if k != "x-union"}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _clean(_structural(schema, schema.get("$defs", {})))


def _with_rules(spec: dict[str, Any]) -> dict[str, Any]:
    for path, rules in RULES.items():
        node = spec
        for name in filter(None, path.split(".")):
            node = node["properties"][name]  # a KeyError here: the model lost a field a rule reads
        node["x-kubernetes-validations"] = [dict(r) for r in rules]
    return spec


def crd() -> dict[str, Any]:
    spec = _with_rules(openapi_schema(TrainingJobSpec))
    spec["description"] = "The training request: the same fields as a shardctl job file's spec."
    status = openapi_schema(TrainingJobStatus)
    status["description"] = "Written by the shardctl controller."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/name": "shardctl",
                                                  "app.kubernetes.io/component": "crd"}},
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": KIND.lower(),
                      "shortNames": ["tj"], "categories": ["shardctl"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Backend", "type": "string", "jsonPath": ".spec.backend"},
                    {"name": "Sharding", "type": "string", "jsonPath": ".spec.sharding"},
                    {"name": "Attempt", "type": "integer", "jsonPath": ".status.currentAttempt"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A training job for accelerate launch (FSDP or DeepSpeed), with OOM fallback.",
                    "required": ["spec"],
                    "properties": {"apiVersion": {"type": "string", "description": _ROOT_DESCRIPTIONS["apiVersion"]},
                                   "kind": {"type": "string", "description": _ROOT_DESCRIPTIONS["kind"]},
                                   "metadata": _METADATA, "spec": spec, "status": status},
                }},
            }],
        },
    }


def crd_yaml() -> str:
    header = "# Generated from the pydantic spec by `python -m orchestrator.spec.crd`; do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


def main() -> None:
    text = crd_yaml()
    for path in CRD_FILES:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
