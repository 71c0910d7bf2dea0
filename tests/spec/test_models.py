"""What the models refuse on their own: credentials under entrypoint.env, control characters in any string."""

from __future__ import annotations

import pytest

from orchestrator.spec import SpecError, parse_spec_text
from orchestrator.spec.models import holds_password, looks_like_secret
from orchestrator.spec.text import first_unsafe
from orchestrator.views.textsafe import safe


@pytest.mark.parametrize(("name", "secret"), [
    ("HF_TOKEN", True), ("WANDB_API_KEY", True), ("GITHUB_PAT", True), ("GITLAB_PAT", True), ("PAT", True),
    ("DB_PASSWORD", True), ("GPG_PASSPHRASE", True), ("AWS_SECRET_ACCESS_KEY", True),
    ("PATH", False), ("PYTHONPATH", False), ("COMPAT", False), ("PATTERN", False), ("TORCH_COMPAT_MODE", False),
    ("GITHUB_PAT_FILE", False), ("SSH_KEY_PATH", False), ("KEYBOARD", False), ("MONKEY", False),
    ("TOKENIZERS_PARALLELISM", False), ("NCCL_DEBUG", False), ("OMP_NUM_THREADS", False), ("HF_HUB_OFFLINE", False),
])
def test_a_credential_is_known_by_its_name_without_false_positives(name: str, secret: bool) -> None:
    assert looks_like_secret(name) is secret


@pytest.mark.parametrize(("value", "password"), [
    ("postgres://u:pw@host/db", True), ("redis://:pw@host:6379", True), ("https://user:tok@git.example/r", True),
    ("postgres://host/db", False), ("https://u@host/x", False), ("http://host:8080/a@b", False),
    ("git@github.com:org/repo", False), ("user@host:22", False), ("s3://bucket/a:b@c", False),
    ("https://example.com/?a=b:c@d", False), ("1", False),
])
def test_a_url_with_a_password_is_known_by_its_value(value: str, password: bool) -> None:
    assert holds_password(value) is password


SPEC = """\
apiVersion: shardctl.dev/v1alpha1
kind: TrainingJob
metadata:
  name: demo
  labels: {team: LABEL}
spec:
  entrypoint:
    script: SCRIPT
    args: ["--x", ARG]
    env: {ENV}
  model:
    name_or_path: MODEL
  slurm:
    extra: [EXTRA]
"""
FILL = {"LABEL": '"a"', "SCRIPT": "train.py", "ARG": '"a\\tb"', "ENV": "A: '1'", "MODEL": "tiny",
        "EXTRA": '"--comment=x"'}


def problems(**changes: str) -> list[str]:
    text = SPEC
    for key, value in {**FILL, **changes}.items():
        text = text.replace(key, value)
    with pytest.raises(SpecError) as exc:
        parse_spec_text(text, "job.yaml")
    return [str(p) for p in exc.value.problems]


def test_the_fill_is_valid_and_a_tab_is_ordinary_text() -> None:
    text = SPEC
    for key, value in FILL.items():
        text = text.replace(key, value)
    assert parse_spec_text(text, "job.yaml").job.spec.entrypoint.args == ["--x", "a\tb"]


def test_a_secret_name_or_a_password_in_a_url_under_env_is_refused_with_one_line() -> None:
    assert [p for p in problems(ENV="GITHUB_PAT: ghp_x") if "GITHUB_PAT looks like a secret" in p][0].startswith(
        "job.yaml:10: spec.entrypoint.env: ")
    (line,) = problems(ENV="DATABASE_URL: 'postgres://u:pw@host/db'")
    assert line.startswith("job.yaml:10: spec.entrypoint.env: DATABASE_URL's value is a URL with a password")
    assert "env_from" in line and "pw@" not in line


@pytest.mark.parametrize(("place", "value", "field", "line"), [
    ("LABEL", '"a\\e[31mb"', "metadata.labels", 5),
    ("SCRIPT", '"train\\u202e.py"', "spec.entrypoint.script", 8),
    ("ARG", '"x\\ny"', "spec.entrypoint.args", 9),
    ("ENV", 'A: "1\\x85"', "spec.entrypoint.env", 10),
    ("MODEL", '"tiny\\r"', "spec.model.name_or_path", 12),
    ("MODEL", '"tiny\\x7f"', "spec.model.name_or_path", 12),
    ("MODEL", '"tiny\\u2066"', "spec.model.name_or_path", 12),
    ("EXTRA", '"--comment=a\\x9bb"', "spec.slurm.extra", 14),
])
def test_a_control_character_in_a_spec_string_is_refused_naming_the_field(place: str, value: str, field: str,
                                                                          line: int) -> None:
    (found,) = problems(**{place: value})
    assert found.startswith(f"job.yaml:{line}: {field}"), found
    assert first_unsafe(found) is None  # the line names the character, never shows it


def test_textsafe_and_the_spec_share_one_character_class() -> None:
    for char in ["\x00", "\x1b", "\n", "\x7f", "\x85", "\x9b", "\u202a", "\u202e", "\u2066", "\u2069"]:
        assert first_unsafe(f"a{char}") is not None and safe(char, one_line=True) != char
    for char in ["\t", " ", "é", "\u00a0", "\u200b"]:
        assert first_unsafe(char) is None
