"""The launch command (orchestrator/compile/launch.py): the script's arguments with their placeholders filled."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orchestrator.compile.launch import fill_placeholders, launch_command
from tests.helpers import job

VALUES = {"micro_batch": "8", "grad_accum": "2", "checkpoint_dir": "/ck", "attempt": "1", "seq_len": "",
          "world_size": "4"}


@pytest.mark.parametrize(("arg", "passed"), [
    ("--bs={micro_batch}", "--bs=8"),
    ("--fmt={{epoch}}", "--fmt={epoch}"),  # doubled braces: literal ones, as str.format reads them
    ("{{micro_batch}}", "{micro_batch}"),  # a placeholder's name, literally
    ("{{{micro_batch}}}", "{8}"),  # a literal brace each side of a filled placeholder
    ('{"a": {{"b": 1}}}}', '{"a": {"b": 1}}'),  # JSON: a lone brace stays, a doubled one is one
    ("{", "{"),
    ("}{", "}{"),
    ("{epoch", "{epoch"),
])
def test_doubled_braces_are_literal_braces_in_args(arg: str, passed: str) -> None:
    assert fill_placeholders(arg, VALUES) == passed


def test_the_launch_command_passes_literal_braces() -> None:
    spec = job(batch={"micro": 4}, entrypoint={
        "script": "train.py", "args": ["--fmt={{epoch}}", "{{micro_batch}}", "--bs", "{micro_batch}"]})
    argv = launch_command(spec, "/cfg", 1, "/ck").argv
    assert list(argv[-4:]) == ["--fmt={epoch}", "{micro_batch}", "--bs", "4"]


def test_a_single_braced_unknown_name_is_still_refused_and_a_doubled_one_is_not() -> None:
    with pytest.raises(ValidationError, match=r"unknown placeholder \{epoch\}"):
        job(entrypoint={"script": "train.py", "args": ["--fmt={epoch}"]})
    kept = job(entrypoint={"script": "train.py", "args": ["--fmt={{epoch}}"]})
    assert kept.spec.entrypoint.args == ["--fmt={{epoch}}"]  # the spec keeps it as written; the launch fills it
    with pytest.raises(ValidationError, match=r"unknown placeholder \{epoch\}"):  # {{ then {epoch} then }}
        job(entrypoint={"script": "train.py", "args": ["{{{epoch}}}"]})


def test_every_attempt_runs_with_faulthandler_and_nccls_fast_failure_settings() -> None:
    from orchestrator.compile.launch import NCCL_ENVIRONMENT, script_environment

    env = script_environment(job(), 1, "/ckpt")
    assert env["PYTHONFAULTHANDLER"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert NCCL_ENVIRONMENT == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "TORCH_NCCL_ENABLE_MONITORING": "1",
                                "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "180"}
    assert {k: env[k] for k in NCCL_ENVIRONMENT} == NCCL_ENVIRONMENT


def test_the_users_entrypoint_env_wins_over_shardctls_nccl_and_faulthandler_settings() -> None:
    from orchestrator.compile.launch import script_environment

    mine = {"TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "900", "TORCH_NCCL_ENABLE_MONITORING": "0", "PYTHONFAULTHANDLER": ""}
    spec = job()
    spec = spec.model_copy(update={"spec": spec.spec.model_copy(update={
        "entrypoint": spec.spec.entrypoint.model_copy(update={"env": mine})})})
    env = script_environment(spec, 1, "/ckpt")
    assert {k: env[k] for k in mine} == mine
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"
