"""The docs generated from the models are committed; they must not drift."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.spec.reference import markdown
from orchestrator.spec.schema import json_schema

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_reference_is_current() -> None:
    assert (DOCS / "spec-reference.md").read_text() == markdown(), "run: python -m orchestrator.spec.reference"


def test_schema_file_is_current() -> None:
    assert json.loads((DOCS / "trainingjob.schema.json").read_text()) == json_schema()


def test_schema_validates_the_examples() -> None:
    import jsonschema
    import yaml

    schema = json_schema()
    for example in (DOCS.parent / "examples").glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(example.read_text()), schema)
