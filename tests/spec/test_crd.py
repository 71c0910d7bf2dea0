"""The CRD is generated from the spec (one source of truth), structural, and valid for Kubernetes."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrator.spec.crd import CRD_FILES, crd, crd_yaml

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
