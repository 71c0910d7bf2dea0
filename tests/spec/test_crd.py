"""The CRD is generated from the spec (one source of truth), structural, and valid for Kubernetes."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import get_args, get_origin

import celpy  # a CEL interpreter in Python (cel-python, in the test extra): the CRD's rules evaluated
import jsonschema
import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from orchestrator.spec.crd import CRD_FILES, RULES, crd, crd_yaml
from orchestrator.spec.models import TrainingJobSpec
from orchestrator.spec.status import TrainingJobStatus

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.35.0"


def test_committed_crds_are_generated_from_the_spec() -> None:
    for path in CRD_FILES:
        assert path.read_text() == crd_yaml(), f"{path} drifted: run python -m orchestrator.spec.crd"


def test_the_crd_passes_the_official_schema() -> None:
    kubernetes_validate.validate(crd(), K8S_VERSION, strict=True)


def _walk(node: dict, path: str):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_the_schema_is_structural() -> None:
    """The rules of https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/
    #specifying-a-structural-schema that a generator can break."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    escapes = ("x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")
    for path, node in _walk(schema, "$"):
        assert "type" in node or any(node.get(e) for e in escapes), f"{path}: no type"
        assert not {"$ref", "const", "$defs", "examples", "title"} & set(node), f"{path}: {set(node)}"
        assert node.get("additionalProperties", True) is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        for option in node.get("anyOf", []) + node.get("oneOf", []):
            assert not {"type", "description", "default", "nullable"} & set(option), f"{path}: typed anyOf"
        if "properties" in node:
            assert node["type"] == "object", path


def openapi_validator():
    """OpenAPI 3.0 schemas validate like JSON Schema draft 4 (boolean exclusiveMinimum), plus the x-* words."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return jsonschema.Draft4Validator(schema)


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_every_example_spec_fits_the_crd(example: str) -> None:
    spec = yaml.safe_load((ROOT / "examples" / example).read_text())["spec"]
    errors = sorted(openapi_validator().iter_errors(spec), key=str)
    assert not errors, [e.message for e in errors]


def test_the_crd_rejects_what_the_spec_rejects() -> None:
    bad = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())["spec"]
    bad["backend"] = "horovod"
    bad["resources"]["nodes"] = 0
    messages = [e.message for e in openapi_validator().iter_errors(bad)]
    assert any("horovod" in m for m in messages) and any("0 is less than" in m for m in messages)


def test_status_and_printer_columns() -> None:
    version = crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Backend", "Sharding", "Attempt", "Phase",
                                                                          "Age"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"phase", "currentAttempt", "attempts", "conditions", "observedGeneration"} <= set(status)
    assert status["conditions"]["items"]["required"] == ["type", "status", "reason", "lastTransitionTime"]


def _schema() -> dict:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_every_property_is_described_for_kubectl_explain() -> None:
    """`kubectl explain trainingjob.spec.batch.global` prints the property's description: every one has one
    (but the root metadata, which the API server lets restrict name and generateName and say nothing else)."""
    undescribed = [path for path, node in _walk(_schema(), "$")
                   if not path.endswith(("[]", "}")) and path != "$" and not node.get("description")]
    assert undescribed == ["$.metadata"]
    metadata = _schema()["properties"]["metadata"]
    assert set(metadata) == {"type", "properties"} and set(metadata["properties"]) <= {"name", "generateName"}


def _nested(annotation, path: str):
    """(model, its path) for a field typed as a model, an optional one, or a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, path
        return
    for arg in get_args(annotation):
        yield from _nested(arg, f"{path}[]" if get_origin(annotation) is list else path)


def _models(model: type[BaseModel], prefix: str):
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or name}"
        yield path, field
        for inner, inner_path in _nested(field.annotation, path):
            yield from _models(inner, inner_path)


def test_the_descriptions_are_the_models() -> None:
    """One source of truth: each property says what its pydantic field says (spec and status, nested too)."""
    nodes = dict(_walk(_schema(), "$"))
    checked = 0
    for root, model in (("$.spec", TrainingJobSpec), ("$.status", TrainingJobStatus)):
        for path, field in _models(model, root):
            if field.description:
                assert nodes[path]["description"] == field.description, path
                checked += 1
    assert checked > 80


def test_the_name_is_a_dns_label_at_admission() -> None:
    """It names pods and host names; the API server itself only asks for a DNS subdomain (dots, 253)."""
    metadata = jsonschema.Draft4Validator(_schema()["properties"]["metadata"])
    assert metadata.is_valid({"name": "llama-7b"})
    assert not metadata.is_valid({"name": "llama.7b"}) and not metadata.is_valid({"name": "a" * 64})


def _node(schema: dict, path: str) -> dict:
    for name in filter(None, path.split(".")):
        schema = schema["properties"][name]
    return schema


def test_the_cel_rules_are_there_and_point_at_real_fields() -> None:
    """The API server refuses a CRD whose fieldPath names no property; and each rule here stays cheap (scalars)."""
    spec = _schema()["properties"]["spec"]
    found = {}
    for path in RULES:
        node = _node(spec, path)
        for rule in node["x-kubernetes-validations"]:
            assert _node(node, rule["fieldPath"]), rule
            assert not any(word in rule["rule"] for word in ("all(", "exists(", "map(", "filter(", "matches(")), rule
            found[f"{path}{rule['fieldPath']}"] = rule["rule"]
    assert set(found) == {".kubernetes.image", ".batch.global", ".offload.optimizer", ".offload.params",
                          "offload.nvme_path"}
    assert "self.kubernetes.image != ''" in found[".kubernetes.image"]


# Each rule and the finding of orchestrator.compile.rules.check it states: (field, words of its message).
_MIRRORS = {".kubernetes.image": ("spec.kubernetes.image", "needs an image"),
            ".batch.global": ("spec.batch.global", "is not a multiple"),
            ".offload.optimizer": ("spec.offload.optimizer", "NVMe offload exists only in DeepSpeed"),
            ".offload.params": ("spec.offload.params", "NVMe offload exists only in DeepSpeed"),
            ".nvme_path": ("spec.offload.nvme_path", "nvme offload needs nvme_path")}


@functools.cache
def _program(rule: str):
    env = celpy.Environment()
    return env.program(env.compile(rule))


# compiled here: the parser raises the recursion limit, which hypothesis warns about in a test
for _rule in (r["rule"] for rules in RULES.values() for r in rules):
    _program(_rule)


def _cel_verdicts(spec: dict) -> dict[str, bool]:
    """Every rule evaluated as the API server would: on its object (a rule on an absent object does not run)."""
    out = {}
    for path, rules in RULES.items():
        node = spec
        for name in filter(None, path.split(".")):
            node = node.get(name) if isinstance(node, dict) else None
        for rule in rules:
            ok = node is None or bool(_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(node)}))
            out[rule["fieldPath"]] = ok
    return out


def _check_verdicts(spec: dict) -> dict[str, bool]:
    from orchestrator.compile.rules import check
    from orchestrator.spec.models import TrainingJob

    job = TrainingJob.model_validate({"apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob",
                                      "metadata": {"name": "j"}, "spec": {**spec, "target": "kubernetes"}})
    findings = [f for f in check(job) if f.level == "error"]
    return {path: not any(f.field == field and words in f.message for f in findings)
            for path, (field, words) in _MIRRORS.items()}


def _absent_nulls(node):
    """The API server treats a null as absent in CEL (has() is false): drop them, as the server's view does."""
    if isinstance(node, dict):
        return {k: _absent_nulls(v) for k, v in node.items() if v is not None}
    return node


_maybe = st.one_of  # readability: a field is absent, or one of these
_absent = st.just(None)


@st.composite
def _specs(draw) -> dict:
    def put(target: dict, key: str, value) -> None:
        if value is not None:
            target[key] = value

    spec: dict = {"entrypoint": {"script": "t.py"}, "model": {"name_or_path": "m"}}
    put(spec, "backend", draw(_maybe(_absent, st.sampled_from(["fsdp", "deepspeed"]))))
    offload: dict = {}
    for key in ("optimizer", "params"):
        put(offload, key, draw(_maybe(_absent, st.sampled_from(["none", "cpu", "nvme"]))))
    put(offload, "nvme_path", draw(_maybe(_absent, st.sampled_from(["", "/nvme"]))))
    put(spec, "offload", offload if offload or draw(st.booleans()) else None)
    batch: dict = {}
    put(batch, "micro", draw(_maybe(_absent, st.integers(1, 8))))
    put(batch, "global", draw(_maybe(_absent, st.integers(1, 512))))
    put(spec, "batch", batch or None)
    resources: dict = {}
    put(resources, "nodes", draw(_maybe(_absent, st.integers(1, 4))))
    put(resources, "gpus_per_node", draw(_maybe(_absent, st.integers(1, 8))))
    put(spec, "resources", resources or None)
    kubernetes: dict = {}
    put(kubernetes, "image", draw(_maybe(_absent, st.sampled_from(["", "registry.example.com/t:1"]))))
    put(spec, "kubernetes", kubernetes if kubernetes or draw(st.booleans()) else None)
    return spec


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_specs())
def test_the_cel_rules_agree_with_the_controllers_rules(spec: dict) -> None:
    """Evaluated with a CEL interpreter (cel-python, when installed), each rule refuses exactly the specs whose
    compile-time rule it states refuses: absent fields mean the model's defaults, as in the controller."""
    assert _cel_verdicts(_absent_nulls(spec)) == _check_verdicts(spec)


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_the_cel_rules_on_the_examples(example: str) -> None:
    """As a TrainingJob resource (target kubernetes), an example passes a rule exactly when check() agrees."""
    spec = yaml.safe_load((ROOT / "examples" / example).read_text())["spec"]
    assert _cel_verdicts(_absent_nulls(spec)) == _check_verdicts(spec)


@pytest.mark.parametrize("section,key,value", [
    *(("model", "parameters", v) for v in ("7B", "6.7e9", "1.5T", "6738415616", 6700000000, "1e400", "1e16", "0",
                                           "-1", 0, -1, 10**16, 10**30, "7 B", "٧B", "1.0e+400")),
    *(("resources", "memory_per_node", v) for v in ("80GiB", "2304MiB", "1.5 Gi", "9Pi", "1", "24", "512Ki",
                                                     "99999999999999999999999PiB", "10Pi", "0GiB", "-1Gi")),
    *(("resources", "gpu_memory", v) for v in ("80GiB", "24GB", "24", "1e3G")),
    *(("", "sharding", v) for v in (0, 3, -1, 4, "FULL_SHARD", "zero3")),
    *(("batch", "micro", v) for v in (1, 2**31 - 1, 2**31, 0)),
])
def test_the_crd_admits_exactly_what_the_model_accepts(section: str, key: str, value) -> None:
    """Quantities, counts and bounds: one grammar each, carried into the CRD, so `kubectl apply` refuses what the
    controller would (checked here with the CRD's OpenAPI schema; the real API server agreed on the same cases).
    Not here: a trailing newline, which Python's `re.search` lets `$` accept but the API server's RE2 does not."""
    from pydantic import ValidationError

    from orchestrator.spec.models import TrainingJob

    spec = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())["spec"]
    (spec.setdefault(section, {}) if section else spec)[key] = value
    crd_ok = openapi_validator().is_valid(spec)
    try:
        TrainingJob.model_validate({"apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob",
                                    "metadata": {"name": "j"}, "spec": spec})
        model_ok = True
    except ValidationError:
        model_ok = False
    assert crd_ok == model_ok, (value, crd_ok, model_ok)
