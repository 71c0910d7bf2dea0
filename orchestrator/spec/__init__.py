"""The TrainingJob spec (pydantic models), its YAML loader and its schema exports.

Imports nothing else of the package.
"""

from orchestrator.spec.loader import LoadedSpec, Problem, SpecError, load_spec, parse_spec_text
from orchestrator.spec.models import API_VERSION, KIND, TrainingJob, TrainingJobSpec

__all__ = ["API_VERSION", "KIND", "LoadedSpec", "Problem", "SpecError", "TrainingJob", "TrainingJobSpec",
           "load_spec", "parse_spec_text"]
