"""Bad input gets `FILE:LINE: field: message`, never a traceback."""

from __future__ import annotations

import pytest

from orchestrator.spec import SpecError, parse_spec_text
from orchestrator.spec.loader import MAX_SPEC_BYTES

GOOD = """\
apiVersion: shardctl.dev/v1alpha1
kind: TrainingJob
metadata:
  name: demo
spec:
  entrypoint:
    script: train.py
  model:
    name_or_path: tiny
    parameters: 6.7e9
  precision:
    mixed: no
  offload:
    optimizer: off
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as exc:
        parse_spec_text(text, "job.yaml")
    return [str(p) for p in exc.value.problems]


def test_good_spec_and_yaml_1_1_words() -> None:
    job = parse_spec_text(GOOD).job
    assert job.spec.model.parameters == 6.7e9  # YAML 1.1 reads 6.7e9 as a string
    assert job.spec.precision.mixed == "no"  # ... and `no` as false
    assert job.spec.offload.optimizer == "none"
    assert job.spec.target == "local" and job.spec.backend == "fsdp"


def test_unknown_key_names_field_and_line() -> None:
    out = problems(GOOD + "  batch:\n    micro: 2\n    micro_batch: 4\n")
    assert out == ["job.yaml:17: spec.batch.micro_batch: unknown field (check the spelling; see `shardctl schema`)"]


def test_wrong_type_names_field_and_line() -> None:
    out = problems(GOOD + "  resources:\n    nodes: two\n")
    assert len(out) == 1 and out[0].startswith("job.yaml:16: spec.resources.nodes: Input should be a valid integer")


def test_every_error_is_reported() -> None:
    out = problems(GOOD.replace("name: demo", "name: Demo_1") + "  sharding: ZeRO-5\n  batch: {micro: 0}\n")
    fields = [line.split(": ")[1] for line in out]
    assert fields == ["metadata.name", "spec.sharding", "spec.batch.micro"]


def test_missing_required() -> None:
    out = problems(GOOD.replace("  entrypoint:\n    script: train.py\n", ""))
    assert out == ["job.yaml:5: spec.entrypoint: required field is missing"]


def test_yaml_syntax_error_has_a_line() -> None:
    out = problems(GOOD + "  batch: [1, 2\n")
    assert len(out) == 1 and out[0].startswith("job.yaml:") and "YAML syntax error" in out[0]


@pytest.mark.parametrize("text,needle", [
    ("", "file is empty"), ("   \n# only a comment\n", "file is empty"), ("- a\n- b\n", "expected a mapping"),
    (GOOD + "---\n" + GOOD, "exactly one YAML document"), ("!!python/object:os.system {}\n", "YAML syntax error"),
])
def test_malformed_documents(text: str, needle: str) -> None:
    assert needle in problems(text)[0]


def test_oversized_input_is_refused_before_parsing() -> None:
    out = problems("a: " + "x" * (MAX_SPEC_BYTES + 1))
    assert "larger than" in out[0]


def test_placeholders_are_checked() -> None:
    out = problems(GOOD.replace("script: train.py", "script: train.py\n    args: ['--bs={micro_bach}']"))
    assert "unknown placeholder {micro_bach}" in out[0]


def test_quantities() -> None:
    from orchestrator.spec.quantity import parse_bytes, parse_count

    assert parse_bytes("80GiB") == 80 * 2**30 and parse_bytes("80G") == 80 * 10**9
    assert parse_bytes("512Mi") == 512 * 2**20
    assert parse_count("7B") == 7e9 and parse_count("350M") == 3.5e8
    with pytest.raises(ValueError):
        parse_bytes("lots")
