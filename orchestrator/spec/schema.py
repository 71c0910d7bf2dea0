"""JSON Schema of the spec, generated from the pydantic models (never written by hand)."""

from __future__ import annotations

from typing import Any

from orchestrator.spec.models import TrainingJob

SCHEMA_ID = "https://shardctl.dev/schemas/trainingjob-v1alpha1.json"


def json_schema() -> dict[str, Any]:
    """Draft 2020-12 schema of a TrainingJob document, usable with `# yaml-language-server: $schema=`."""
    schema = TrainingJob.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}
