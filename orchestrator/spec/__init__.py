"""The TrainingJob spec (pydantic models), its YAML loader and its schema exports.

Imports nothing else of the package. The names below are loaded on first use (PEP 562): a module that
needs only `spec.states` or `spec.text` (the CLI's start, the store) does not pay for pydantic's models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.spec.loader import LoadedSpec, Problem, SpecError, load_spec, parse_spec_text
    from orchestrator.spec.models import API_VERSION, KIND, TrainingJob, TrainingJobSpec

__all__ = ["API_VERSION", "KIND", "LoadedSpec", "Problem", "SpecError", "TrainingJob", "TrainingJobSpec",
           "load_spec", "parse_spec_text"]

_WHERE = {"LoadedSpec": "loader", "Problem": "loader", "SpecError": "loader", "load_spec": "loader",
          "parse_spec_text": "loader", "API_VERSION": "models", "KIND": "models", "TrainingJob": "models",
          "TrainingJobSpec": "models"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"orchestrator.spec.{_WHERE[name]}"), name)
