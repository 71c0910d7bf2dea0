"""entrypoint.env_from sources on this machine: the env-file format, its privacy, and the batch script's reader
agreeing with the Python one through real bash."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from orchestrator.intake.secrets import SecretSourceError, check, environment, parse_env_file, read_env_file
from orchestrator.targets.slurm.render import env_file_lines
from tests.helpers import job

TRICKY = """\
# comments and blank lines are skipped

PLAIN=hf_abc123
export EXPORTED=value with spaces
DOUBLE="quoted value"
SINGLE='it''s'
NOT_EXPANDED=$(touch /tmp/shardctl-pwned) `id` $HOME ${PATH}
EQUALS=a=b=c
TRAILING=keeps trailing spaces   \r
EMPTY=
ONE_QUOTE="
"""


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_format_is_key_value_lines_taken_literally() -> None:
    values = parse_env_file(TRICKY, "f")
    assert values == {
        "PLAIN": "hf_abc123", "EXPORTED": "value with spaces", "DOUBLE": "quoted value", "SINGLE": "it''s",
        "NOT_EXPANDED": "$(touch /tmp/shardctl-pwned) `id` $HOME ${PATH}", "EQUALS": "a=b=c",
        "TRAILING": "keeps trailing spaces   ", "EMPTY": "", "ONE_QUOTE": '"',
    }


def test_a_bad_line_is_named_by_number_never_by_its_content() -> None:
    with pytest.raises(SecretSourceError) as caught:
        parse_env_file("A=1\nhf_secret_without_a_name\n", "s.env")
    assert "line 2" in str(caught.value) and "hf_secret" not in str(caught.value)


def test_only_a_private_regular_file_of_ones_own_is_read(tmp_path: Path) -> None:
    good = private_file(tmp_path / "ok.env", "A=1\n", 0o400)
    assert read_env_file(str(good)) == {"A": "1"}
    for mode in (0o640, 0o604, 0o660):
        shared = private_file(tmp_path / f"shared-{mode:o}.env", "A=1\n", mode)
        with pytest.raises(SecretSourceError, match="chmod 600"):
            read_env_file(str(shared))
    with pytest.raises(SecretSourceError, match="not a regular file"):
        read_env_file(str(tmp_path))
    with pytest.raises(SecretSourceError, match="No such file"):
        read_env_file(str(tmp_path / "missing.env"))


def test_checks_and_the_environment_of_a_run(tmp_path: Path) -> None:
    env_file = private_file(tmp_path / "w.env", "WANDB_API_KEY=w1\n")
    assert check({"env": "HF_TOKEN"}, {}, str(tmp_path)) is not None
    assert check({"env": "HF_TOKEN"}, {"HF_TOKEN": "x"}, str(tmp_path)) is None
    assert check({"file": "w.env"}, {}, str(tmp_path)) is None  # relative to the submit directory
    sources = [{"env": "HF_TOKEN"}, {"file": str(env_file)}]
    assert environment(sources, {"HF_TOKEN": "t1", "OTHER": "o"}, "/") == {"HF_TOKEN": "t1", "WANDB_API_KEY": "w1"}
    with pytest.raises(SecretSourceError, match="HF_TOKEN is not set"):
        environment(sources, {}, "/")


def test_the_batch_scripts_reader_agrees_with_this_one_through_real_bash(tmp_path: Path) -> None:
    env_file = private_file(tmp_path / "tricky.env", TRICKY)
    spec = job(target="slurm", entrypoint={"script": "t.py", "env_from": [{"file": str(env_file)}]})
    script = "set -euo pipefail\n" + "\n".join(env_file_lines(spec, str(tmp_path))) + "\nenv -0\n"
    run = subprocess.run(["bash", "-c", script], capture_output=True, timeout=30, cwd=tmp_path,
                         env={"PATH": os.environ["PATH"]})
    assert run.returncode == 0, run.stderr
    seen = dict(item.split("=", 1) for item in run.stdout.decode().split("\0") if "=" in item)
    expected = parse_env_file(TRICKY, "f")
    assert {k: seen.get(k) for k in expected} == expected
    assert not Path("/tmp/shardctl-pwned").exists()
    assert str(env_file) in script and "hf_abc123" not in script  # the path is rendered, never a value


@pytest.mark.parametrize("text,mode,why", [
    ("A=1\n", 0o644, "must be yours and private"),
    ("A=1\nno equals sign\n", 0o600, "line 2: not a KEY=VALUE line"),
])
def test_the_batch_script_refuses_what_the_python_reader_refuses(tmp_path: Path, text: str, mode: int,
                                                                  why: str) -> None:
    env_file = private_file(tmp_path / "s.env", text, mode)
    with pytest.raises(SecretSourceError):
        read_env_file(str(env_file))
    spec = job(target="slurm", entrypoint={"script": "t.py", "env_from": [{"file": str(env_file)}]})
    script = "set -euo pipefail\n" + "\n".join(env_file_lines(spec, str(tmp_path))) + "\necho launched\n"
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "launched" not in run.stdout
    assert run.stderr.startswith("[shardctl] cannot start the run: entrypoint.env_from: ") and why in run.stderr
