"""The field reference (docs/spec-reference.md), generated from the models like the JSON Schema.

`python -m orchestrator.spec.reference` rewrites docs/spec-reference.md and docs/trainingjob.schema.json;
tests/spec/test_reference.py fails when they drift from the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from orchestrator.spec.models import TrainingJob
from orchestrator.spec.schema import json_schema


def _schema_type(prop: dict[str, Any]) -> str:
    """A short type from the generated JSON Schema: enums as a | b, refs by name."""
    if "const" in prop:
        return repr(prop["const"])
    if "enum" in prop:
        return " | ".join(str(v) for v in prop["enum"])
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in prop:
        parts = [_schema_type(p) for p in prop["anyOf"]]
        return " or ".join(dict.fromkeys(p for p in parts if p != "null")) + (" (optional)" if "null" in parts else "")
    if prop.get("type") == "array":
        return f"list of {_schema_type(prop.get('items', {}))}"
    if prop.get("type") == "object":
        return "map of string"
    return str(prop.get("type", "any"))


def _rows(model: type[BaseModel], schema: dict[str, Any], prefix: str, out: list[str]) -> None:
    props = schema.get("properties", {})
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}.{key}" if prefix else key
        annotation = field.annotation
        nested = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        default = ("required" if field.is_required()
                   else "" if nested else repr(field.get_default(call_default_factory=True)))
        doc_lines = (nested.__doc__ or "").strip().splitlines() if nested else []
        desc = field.description or (doc_lines[0] if doc_lines else "")
        kind = _schema_type(props.get(key, {}))
        out.append(f"| `{path}` | {kind.replace('|', '&#124;')} | {default.replace('|', '&#124;')} | "
                   f"{desc.replace('|', '&#124;')} |")
        if nested:
            _rows(nested, _DEFS.get(nested.__name__, {}), path, out)
        elif item := _list_item_model(annotation):  # each item's fields, as `list[].field`
            _rows(item, _DEFS.get(item.__name__, {}), f"{path}[]", out)


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    if get_origin(annotation) is not list:
        return None
    (item,) = get_args(annotation)
    return item if isinstance(item, type) and issubclass(item, BaseModel) else None


_SCHEMA = json_schema()
_DEFS = _SCHEMA.get("$defs", {})


def markdown() -> str:
    lines = ["# TrainingJob reference (generated)", "",
             "Generated from `orchestrator/spec/models.py` by `python -m orchestrator.spec.reference`; do not edit.",
             "Cross-field rules (accelerate's FSDP/DeepSpeed restrictions) are listed in docs/design.md.", "",
             "| field | type | default | meaning |", "|---|---|---|---|"]
    _rows(TrainingJob, _SCHEMA, "", lines)
    return "\n".join(lines) + "\n"


def write(docs: Path) -> None:
    (docs / "spec-reference.md").write_text(markdown())
    (docs / "trainingjob.schema.json").write_text(json.dumps(json_schema(), indent=2) + "\n")


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "docs")
