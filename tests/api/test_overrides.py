"""`--set key.path=value`: typed by the spec's YAML loader, validated like the file, errors naming the override."""

from __future__ import annotations

import pytest

from orchestrator.api.overrides import Override, OverrideError, apply, apply_loaded, as_overrides, locate, parse
from orchestrator.spec.loader import parse_spec_text
from tests.helpers import job

FILE = """apiVersion: shardctl.dev/v1alpha1
kind: TrainingJob
metadata: {name: t}
spec:
  entrypoint: {script: train.py, args: ["--steps", "20"]}
  model: {name_or_path: tiny}
  batch: {micro: 2, global: 16}
  resources: {gpus_per_node: 2}
"""


def test_values_are_typed_as_yaml_reads_them() -> None:
    assert parse("spec.batch.micro=8").value == 8
    assert parse("spec.precision.mixed=no").value is False  # YAML 1.1: the model reads it back as "no"
    assert parse("spec.entrypoint.args=[--steps, '5']").value == ["--steps", "5"]
    assert parse("spec.checkpoint.dir=").value is None
    assert parse("spec.model.name_or_path=a=b").value == "a=b"  # only the first = splits


def test_applied_overrides_are_validated_like_the_file() -> None:
    base = job(batch={"micro": 2, "global": 16}, resources={"gpus_per_node": 2})
    changed = apply(base, [parse("spec.batch.micro=4"), parse("spec.precision.mixed=no"),
                           parse("spec.entrypoint.args.1='{grad_accum}'")])
    assert changed.spec.batch.micro == 4
    assert changed.spec.precision.mixed == "no"
    assert changed.spec.entrypoint.args[1] == "{grad_accum}"
    assert base.spec.batch.micro == 2  # the base is not touched
    assert apply(base, [parse("spec.sharding=FULL_SHARD")]).spec.sharding == "full"  # normalised like the file


@pytest.mark.parametrize(("text", "says"), [
    ("spec.batch.micro=abc", "--set spec.batch.micro=abc: spec.batch.micro: Input should be a valid integer"),
    ("spec.batch.mikro=4", "--set spec.batch.mikro=4: spec.batch.mikro: unknown field"),
    ("spec.resources.memory_per_node=24", "--set spec.resources.memory_per_node=24: spec.resources.memory_per_node: "
                                          "24 has no unit"),
    ("spec.batch.micro", "--set spec.batch.micro: expected key.path=value"),
    ("apiVersion=v2", "only fields under metadata. or spec. can be set"),
    ("spec..micro=1", "is not a field path"),
    ("spec.batch.micro=[1", "the value is not valid YAML"),
    ("spec.model.name_or_path.x=3", "spec.model.name_or_path is a single value"),
    ("spec.entrypoint.args.7=x", "the list has 4 items"),
    ("spec.batch.micro=!!python/object:os.system x", "not valid YAML"),  # the safe loader: no objects
])
def test_a_bad_override_is_one_line_naming_it(text: str, says: str) -> None:
    with pytest.raises(OverrideError) as caught:
        apply(job(), [parse(text)])
    lines = caught.value.lines()
    assert len(lines) == 1 and says in lines[0], lines
    assert lines[0].startswith(f"--set {text.partition('=')[0]}")


def test_the_bounded_loader_refuses_a_billion_laughs_value() -> None:
    with pytest.raises(OverrideError, match="aliases may only repeat a single value"):
        parse("spec.entrypoint.args=[&a [x, x], *a]")


def test_a_rule_finding_names_the_override_that_set_its_field() -> None:
    loaded = parse_spec_text(FILE, "job.yaml")
    o = parse("spec.batch.micro=3")
    changed = apply_loaded(loaded, [o])
    assert "spec.batch.micro" not in changed.lines  # its line in the file no longer says what is checked
    assert locate(changed, [o], "spec.batch.micro", "bad") == "--set spec.batch.micro=3: spec.batch.micro: bad"
    # a field of the file judged with an override's value: the file's line, and which override
    assert locate(changed, [o], "spec.batch.global", "bad") == \
        "job.yaml:7: spec.batch.global: bad (with --set spec.batch.micro=3)"


def test_python_mappings_are_overrides_too() -> None:
    given = as_overrides({"spec.batch.micro": 4, "spec.sharding": "grad_op"})
    assert [(o.key, o.value) for o in given] == [("spec.batch.micro", 4), ("spec.sharding", "grad_op")]
    with pytest.raises(OverrideError) as caught:
        apply(job(), as_overrides({"spec.batch.micro": "4"}))  # typed by the caller: a string is not a number
    assert caught.value.lines()[0].startswith("overrides spec.batch.micro='4': spec.batch.micro:")
    assert as_overrides(["spec.batch.micro=4"])[0] == Override("spec.batch.micro", 4, "spec.batch.micro=4")


def test_a_list_item_is_picked_by_dot_n_or_bracket_n() -> None:
    base = job()  # args: --micro-batch {micro_batch} --grad-accum {grad_accum}
    assert parse("spec.entrypoint.args[2]=--accum").key == "spec.entrypoint.args.2"
    assert parse("spec.entrypoint.args[2]=--accum").text == "spec.entrypoint.args[2]=--accum"  # errors quote it
    for text in ("spec.entrypoint.args[2]=--accum", "spec.entrypoint.args.2=--accum"):
        assert apply(base, [parse(text)]).spec.entrypoint.args[2] == "--accum"
    assert apply(base, as_overrides({"spec.entrypoint.args[4]": "--x"})).spec.entrypoint.args[4] == "--x"  # appends
    assert apply(base, [parse("spec.entrypoint.env_from[0].env=HF_HOME")]).spec.entrypoint.env_from[0].env == "HF_HOME"
    with pytest.raises(OverrideError) as caught:
        apply(base, [parse("spec.entrypoint.args[7]=x")])
    assert caught.value.lines()[0].startswith("--set spec.entrypoint.args[7]=x: spec.entrypoint.args.7: the list has 4")
    for bad in ("spec.entrypoint.args[]=x", "spec.entrypoint.args[x]=x", "spec.entrypoint.args[-1]=x"):
        with pytest.raises(OverrideError, match=r"is not a field path .*args.2 or args\[2\]"):
            parse(bad)
