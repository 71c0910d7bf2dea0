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


# Hostile and careless input: one test per way a file can be hostile.

def _timed_problems(text: str) -> tuple[list[str], float]:
    import time

    start = time.perf_counter()
    out = problems(text)
    return out, time.perf_counter() - start


def _alias_bomb(levels: int = 9) -> str:
    """The 'billion laughs': each level a list of nine aliases to the level below (9^9 strings)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join(f"*{prev}" for _ in range(9)) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_fast() -> None:
    bomb = _alias_bomb()
    assert len(bomb.encode()) < 400
    out, seconds = _timed_problems(bomb)
    assert out == ["job.yaml:2: YAML: the alias *a stands for a list: aliases may only repeat a single value "
                   "(write the mapping or list out)"]
    assert seconds < 1.0


@pytest.mark.parametrize("text,needle", [
    ("a: " + "[" * 500 + "]" * 500 + "\n", "job.yaml:1: YAML: nested more than 64 levels deep"),
    ("a: " + "{b: " * 500 + "1" + "}" * 500 + "\n", "job.yaml:1: YAML: nested more than 64 levels deep"),
    ("a: " + "[" * 100_000 + "\n", "job.yaml:1: YAML: nested more than 64 levels deep"),  # unclosed, 100 KB
    ("".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "x\n", "nested more than 64 levels deep"),
    ("".join(" " * i + "- \n" for i in range(500)), "nested more than 64 levels deep"),
    ("a: &a [*a]\n", "job.yaml:1: YAML: the alias *a stands for a list"),
    ("a: &a {b: *a}\n", "job.yaml:1: YAML: the alias *a stands for a mapping"),
    ("base: &b {x: 1}\nspec:\n  <<: *b\n", "the alias *b stands for a mapping"),
    ("spec:\n  <<: {x: 1}\n", "job.yaml:2: YAML: merge keys (<<) are not supported"),
    ("a: [" + ",".join(["1"] * 6000) + "]\n", "YAML: more than 5000 values"),
    ("x: &x v\ny: [" + ",".join(["*x"] * 6000) + "]\n", "YAML: more than 5000 values"),  # aliases count too
    ("---\n" * 6000, "YAML: more than 5000 values"),
])
def test_deep_recursive_and_huge_documents_are_refused_fast(text: str, needle: str) -> None:
    out, seconds = _timed_problems(text)
    assert len(out) == 1 and needle in out[0], out
    assert seconds < 1.0


def test_an_anchor_on_a_scalar_may_be_repeated() -> None:
    job = parse_spec_text(GOOD.replace("script: train.py", "script: &s train.py\n    args: [*s, *s]")).job
    assert job.spec.entrypoint.args == ["train.py", "train.py"]


def test_the_line_indexer_never_follows_an_alias() -> None:
    from orchestrator.spec.loader import _index_lines, compose

    (node,) = compose("a: &x v\nb: [*x, *x]\nc: *x\n")
    lines, duplicates = _index_lines(node, "f")
    assert lines == {"": 1, "a": 1, "b": 2, "b.0": 2, "b.1": 2, "c": 3} and duplicates == []


@pytest.mark.parametrize("text,needle", [
    ("a: 2001-13-01\n", "job.yaml:1: YAML: cannot read this value: month must be in 1..12"),
    ("a: !!int abc\n", "job.yaml:1: YAML: cannot read this value"),
    ("a: !!float x\n", "job.yaml:1: YAML: cannot read this value"),
    ("a: !!timestamp x\n", "job.yaml:1: YAML: cannot read this value"),
    ("a: !!bool maybe\n", "job.yaml:1: YAML: cannot read this value"),
    ("a: b\x01\n", "job.yaml:1: YAML syntax error: unacceptable character U+0001"),
    ("a: 1\n\x00", "job.yaml:2: YAML syntax error: unacceptable character U+0000"),
    ("a: 1\n? [x, y]\n: z\n", "YAML syntax error"),  # a list as a key: unhashable
])
def test_values_yaml_cannot_construct_are_one_line(text: str, needle: str) -> None:
    out = problems(text)
    assert len(out) == 1 and needle in out[0] and "\n" not in out[0], out


def test_duplicate_keys_name_the_key_and_both_lines() -> None:
    out = problems(GOOD.replace("  precision:", "  backend: deepspeed\n  backend: fsdp\n  precision:"))
    assert out == ["job.yaml:12: spec.backend: duplicate key (also on line 11): YAML would keep only the last value, "
                   "so give it once"]
    # the same key spelled two ways is caught when the values are built: 1 and 0x1 are both the int 1
    out = problems("a: {1: x, 0x1: y}\n")
    assert out == ["job.yaml:1: YAML: duplicate key 1 (first on line 1): YAML would keep only the last value, "
                   "so give it once"]


def test_a_volume_has_one_source() -> None:
    text = GOOD + ("  kubernetes:\n    volumes:\n      - {name: data, mount_path: /d, claim_name: pvc,"
                   " secret_name: token}\n")
    assert problems(text) == ["job.yaml:17: spec.kubernetes.volumes.0: a volume has one source, but claim_name and "
                              "secret_name are both set: use one volume per source"]


def test_schema_and_rule_errors_come_in_one_round() -> None:
    from orchestrator.compile import rules

    text = (GOOD.replace("name: demo", "name: Demo_1") + "  backend: fsdp\n  sharding: optimizer\n"
            + "  resources: {memory_per_node: 1}\n")
    with pytest.raises(SpecError) as exc:
        parse_spec_text(text, "job.yaml")
    fields = [p.field for p in exc.value.problems]
    assert fields == ["metadata.name", "spec.resources.memory_per_node"]
    partial = exc.value.partial
    assert partial is not None  # the rest of the spec is valid: the rules can run on it
    assert [(f.field, partial.line_of(f.field)) for f in rules.errors(rules.check(partial.job))] == \
        [("spec.sharding", 16)]


def test_no_rule_verdict_rests_on_an_invalid_field() -> None:
    """A rule that reads a field whose value was invalid would judge a default the user never wrote."""
    from orchestrator.compile import rules
    from orchestrator.spec.loader import InvalidFieldRead

    with pytest.raises(SpecError) as exc:
        parse_spec_text(GOOD + "  backend: deepsped\n  sharding: optimizer\n", "job.yaml")
    partial = exc.value.partial
    assert partial is not None
    with pytest.raises(InvalidFieldRead):
        rules.check(partial.job)  # with backend unknown, "ZeRO-1 has no FSDP twin" would be a guess
    with pytest.raises(SpecError) as exc:
        parse_spec_text(GOOD.replace("  entrypoint:\n    script: train.py\n", ""), "job.yaml")
    assert exc.value.partial is None  # a required section is missing: nothing to check the rules on


_NAMES = {  # each field whose check is a pattern: a trailing newline must not pass
    "metadata.name": ("name: demo", 'name: "demo\\n"'),
    "metadata.namespace": ("name: demo", 'name: demo\n  namespace: "team\\n"'),
    "spec.entrypoint.env": ("script: train.py", 'script: train.py\n    env: {"HF_HOME\\n": x}'),
    "spec.slurm.partition": ("  precision:", '  slurm: {partition: "gpu\\n"}\n  precision:'),
    "spec.slurm.account": ("  precision:", '  slurm: {account: "acct\\n"}\n  precision:'),
    "spec.slurm.qos": ("  precision:", '  slurm: {qos: "high\\n"}\n  precision:'),
    "spec.slurm.supervisor_partition": ("  precision:", '  slurm: {supervisor_partition: "cpu\\n"}\n  precision:'),
    "spec.slurm.time": ("  precision:", '  slurm: {time: "10:00\\n"}\n  precision:'),
    "spec.slurm.extra.0": ("  precision:", '  slurm: {extra: ["--constraint=a100\\u2028#SBATCH --x"]}\n  precision:'),
    "spec.kubernetes.namespace": ("  precision:", '  kubernetes: {namespace: "ns\\n"}\n  precision:'),
    "spec.kubernetes.volumes.0.name": ("  precision:", '  kubernetes: {volumes: [{name: "v\\n", mount_path: /v}]}\n'
                                                      '  precision:'),
}


@pytest.mark.parametrize("field", sorted(_NAMES))
def test_names_refuse_a_trailing_newline(field: str) -> None:
    old, new = _NAMES[field]
    out = problems(GOOD.replace(old, new, 1))
    assert len(out) == 1 and out[0].split(": ")[1] == field, out
    assert "\\n" in out[0] or "\\u2028" in out[0]  # the value is shown escaped, on one line


@pytest.mark.parametrize("field,value,needle", [
    ("model.parameters", '"1e400"', "is not a parameter count"),
    ("model.parameters", "1e400", "is not a parameter count"),  # YAML 1.1 reads it as a string
    ("model.parameters", "1.0e+400", "a parameter count is a whole number"),  # ... and this as a float: inf
    ("model.parameters", ".inf", "a parameter count is a whole number"),
    ("model.parameters", ".nan", "a parameter count is a whole number"),
    ("model.parameters", "99999999999999999999", "below 10^16"),
    ("model.parameters", "0", "at least 1"),
    ("model.parameters", "1.5", "a parameter count is a whole number"),
    ("resources.memory_per_node", "99999999999999999999999PiB", "is not a size"),
    ("resources.memory_per_node", "1", "1 has no unit"),
    ("resources.memory_per_node", '"24"', "has no unit"),
    ("resources.memory_per_node", "512Ki", "is not a size"),  # below the smallest unit, M
    ("resources.memory_per_node", "0GiB", "is not a size"),
    ("resources.gpu_memory", ".inf", "expected a size"),
    ("deepspeed.gradient_clipping", ".inf", "Input should be a finite number"),
    ("deepspeed.gradient_clipping", ".nan", "Input should be a finite number"),
    ("deepspeed.reduce_bucket_size", str(2**70), "less than or equal to 9007199254740991"),
    ("batch.micro", str(2**40), "less than or equal to 2147483647"),
    ("sharding", "-1", "ZeRO stage -1 does not exist"),
    ("sharding", '"-1"', "ZeRO stage '-1' does not exist"),
    ("sharding", "4", "ZeRO stage 4 does not exist"),
])
def test_numbers_are_finite_and_in_range(field: str, value: str, needle: str) -> None:
    section, _, key = field.rpartition(".")
    text = GOOD + (f"  {section}: {{{key}: {value}}}\n" if section else f"  {key}: {value}\n")
    if section == "model":
        text = GOOD.replace("    parameters: 6.7e9", f"    parameters: {value}")
    out = problems(text)
    assert len(out) == 1 and f"spec.{field}" in out[0] and needle in out[0], out


def test_sizes_and_counts_parse_with_units_and_refuse_the_rest() -> None:
    from orchestrator.spec.quantity import parse_bytes, parse_count

    assert parse_bytes("2304MiB") == 2304 * 2**20 and parse_bytes("1.5 Gi") == 3 * 2**29
    assert parse_bytes("9.5PiB") < 2**63 and parse_bytes("999999999Mi") < 2**63
    assert parse_count(6.7e9) == parse_count("6.7e9") == parse_count("6.7B") == 6.7e9
    assert parse_count("1.5T") == 1.5e12 and parse_count(7_000_000_000) == 7e9
    with pytest.raises(ValueError, match="'24' has no unit"):
        parse_bytes("24")  # `plan --gpu-memory 24` was 24 bytes
    for bad in ("80GiB\n", " 80GiB", "٨٠GiB", "1e3GiB", "-1GiB", "10000Pi"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    for bad in ("7B\n", "1e16", "10000T", "6.7e-9", "inf", "nan", "1_000"):
        with pytest.raises(ValueError):
            parse_count(bad)


def test_special_files_are_refused_without_reading(tmp_path) -> None:
    import os
    import time

    from orchestrator.spec import load_spec

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path, needle in (("/dev/zero", "it is a device"), (str(tmp_path), "it is a directory"),
                         (str(fifo), "file is empty")):  # a FIFO nobody writes to: no wait for a writer
        start = time.perf_counter()
        with pytest.raises(SpecError) as exc:
            load_spec(path)
        assert needle in str(exc.value) and time.perf_counter() - start < 1.0


def test_the_read_is_bounded_whatever_the_size_says(tmp_path, monkeypatch) -> None:
    """/proc files say 0 bytes; the read itself stops at the limit."""
    import os

    from orchestrator.spec import loader

    big = tmp_path / "big.yaml"
    big.write_text("a: b\n" * 100_000)
    real_fstat = os.fstat
    monkeypatch.setattr(loader.os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 0, *real_fstat(fd)[7:])))
    with pytest.raises(SpecError) as exc:
        loader.load_spec(big)
    assert "larger than 128 KiB" in str(exc.value)


def test_a_pipe_that_sends_nothing_is_given_up_on(tmp_path, monkeypatch) -> None:
    import os
    import time

    from orchestrator.spec import loader

    monkeypatch.setattr(loader, "PIPE_IDLE_S", 0.2)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # a writer that never writes
    try:
        start = time.perf_counter()
        with pytest.raises(SpecError, match="nothing arrived on the pipe"):
            loader.load_spec(fifo)
        assert time.perf_counter() - start < 1.0
    finally:
        os.close(writer)


# Secrets by reference. A value under entrypoint.env is copied everywhere; names that say
# "credential" are refused there, and env_from items are one well-formed reference each.

@pytest.mark.parametrize("name", ["HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD",
                                  "hf_token", "DB_PASSWD", "MY_SECRET"])
def test_a_secret_looking_value_under_env_is_refused_pointing_to_env_from(name: str) -> None:
    out = problems(GOOD.replace("    script: train.py\n", f"    script: train.py\n    env: {{{name}: hf_x}}\n"))
    assert len(out) == 1 and out[0].startswith(f"job.yaml:8: spec.entrypoint.env: {name} looks like a secret")
    assert "entrypoint.env_from" in out[0] and "hf_x" not in out[0]


@pytest.mark.parametrize("name", ["TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "GOOGLE_APPLICATION_CREDENTIALS",
                                  "HF_TOKEN_PATH", "SECRETS_DIR", "NCCL_IB_HCA", "MONKEY"])
def test_names_that_only_point_at_secrets_are_plain_values(name: str) -> None:
    text = GOOD.replace("    script: train.py\n", f"    script: train.py\n    env: {{{name}: x}}\n")
    assert parse_spec_text(text).job.spec.entrypoint.env == {name: "x"}


def test_env_from_items_are_one_reference_each_located_by_line() -> None:
    ok = GOOD.replace("    script: train.py\n", "    script: train.py\n    env_from:\n      - env: HF_TOKEN\n"
                      "      - file: ~/.config/shardctl/hf.env\n      - secret: wandb.creds\n"
                      "        keys: [WANDB_API_KEY]\n")
    sources = parse_spec_text(ok).job.spec.entrypoint.env_from
    assert [s.kind for s in sources] == ["env", "file", "secret"] and sources[2].names() == ["WANDB_API_KEY"]
    bad = GOOD.replace("    script: train.py\n", "    script: train.py\n    env_from:\n      - env: HF_TOKEN\n"
                       "        file: x.env\n      - env: 1BAD\n      - secret: Not_A_Name\n      - file: x.env\n"
                       "        keys: [A]\n      - {}\n")
    out = problems(bad)
    assert out[0].startswith("job.yaml:9: spec.entrypoint.env_from.0: an env_from item is exactly one of")
    assert out[1].startswith("job.yaml:11: spec.entrypoint.env_from.1.env: '1BAD' is not a valid environment")
    assert out[2].startswith("job.yaml:12: spec.entrypoint.env_from.2.secret: 'Not_A_Name' is not a Kubernetes Secret")
    assert out[3].startswith("job.yaml:13: spec.entrypoint.env_from.3: `keys` selects keys of a `secret`")
    assert out[4].startswith("job.yaml:15: spec.entrypoint.env_from.4: an env_from item is exactly one of")


def test_a_variable_given_twice_or_reserved_is_refused() -> None:
    twice = GOOD.replace("    script: train.py\n", "    script: train.py\n    env_from: [{env: HF_TOKEN}, "
                         "{secret: s, keys: [HF_TOKEN]}]\n")
    assert "HF_TOKEN is given twice" in problems(twice)[0]
    reserved = GOOD.replace("    script: train.py\n", "    script: train.py\n    env_from: [{env: SHARDCTL_ATTEMPT}]\n")
    assert "set by shardctl itself" in problems(reserved)[0]


def test_resilience_durations_rules_and_their_refusals_name_the_field_and_line() -> None:
    job = parse_spec_text(GOOD + "  resilience:\n    hang_after: 1h30m\n    rules:\n"
                                 "      - {when: {exit_code: 75}, then: retry}\n").job
    assert job.spec.resilience.hang_after == 5400 and job.spec.resilience.rules[0].when.exit_code == 75
    assert parse_spec_text(GOOD + "  resilience: {hang_after: 90}\n").job.spec.resilience.hang_after == 90
    out = problems(GOOD + "  resilience:\n    hang_after: 5s\n    rules:\n"
                          "      - {when: {log: '(a)\\1'}, then: fail}\n"
                          "      - {when: {kind: hang, exit_code: 3}, then: fail}\n"
                          "      - {when: {kind: cancelled}, then: retry}\n")
    assert out[0].startswith("job.yaml:16: spec.resilience.hang_after: Input should be greater than or equal to 10")
    assert out[1].startswith("job.yaml:18: spec.resilience.rules.0.when.log: not a pattern RE2 accepts")
    assert "backreferences" in out[1]
    assert out[2] == ("job.yaml:19: spec.resilience.rules.1.when: a rule matches on exactly one of kind, exit_code "
                      "and log (given: kind, exit_code)")
    assert out[3].startswith("job.yaml:20: spec.resilience.rules.2.when.kind: Input should be")
    assert len(out) == 4
    assert problems(GOOD + "  resilience: {hang_after: 10 minutes}\n")[0].endswith(
        "'10 minutes' is not a duration; write seconds (600) or 30s, 10m, 1h30m")


def test_a_rule_matches_every_failure_kind_but_a_cancel_and_a_refusal() -> None:
    from typing import get_args

    from orchestrator.spec.models import RuleKind
    from orchestrator.spec.states import FailureKind

    assert set(get_args(RuleKind)) == {k.value for k in FailureKind} - {"cancelled", "refused"}
