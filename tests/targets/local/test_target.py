"""The local target on real processes: secrets by reference end to end, private files, one launch's records."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.procfiles import read_json, write_json
from orchestrator.targets.base import AttemptRef
from orchestrator.targets.local import wrapper as local_wrapper
from orchestrator.targets.local.target import LocalTarget
from tests.helpers import job

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "hf_finding3_value_from_the_shell_5b1e"
FILE_SECRET = "wandb-finding3-value-from-a-file-77c2"

SCRIPT = f"""\
import os, sys
ok = os.environ.get("HF_TOKEN") == {TOKEN!r} and os.environ.get("WANDB_API_KEY") == {FILE_SECRET!r}
print("secrets reached the script" if ok else "secrets missing", flush=True)
sys.exit(0 if ok else 3)
"""

SPEC = """\
apiVersion: shardctl.dev/v1alpha1
kind: TrainingJob
metadata: {{name: secrets}}
spec:
  target: local
  entrypoint:
    script: {script}
    env: {{HF_HUB_OFFLINE: "1"}}
    env_from:
      - env: HF_TOKEN
      - file: {env_file}
  model: {{name_or_path: tiny}}
  backend: fsdp
  sharding: none
  precision: {{mixed: "no"}}
  resources: {{gpus_per_node: 1}}
"""


def shardctl(args: list[str], env: dict[str, str], umask: int = 0o022) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env, preexec_fn=lambda: os.umask(umask))


def every_file(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


@pytest.mark.slow
def test_env_from_values_never_on_disk(tmp_path: Path) -> None:
    """A real local job takes HF_TOKEN from the submitting shell and WANDB_API_KEY from a private file: the
    script sees both, and no file shardctl wrote (state, records, launch.sh, logs), nor its --json output,
    holds either value. All of it is private although the umask is 022
    (test_state_files_private_under_umask_022)."""
    home = tmp_path / "state"
    (tmp_path / "check.py").write_text(SCRIPT)
    env_file = tmp_path / "wandb.env"
    env_file.write_text(f"# wandb\nexport WANDB_API_KEY=\"{FILE_SECRET}\"\n")
    env_file.chmod(0o600)
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC.format(script=tmp_path / "check.py", env_file=env_file))
    env = {**os.environ, "SHARDCTL_HOME": str(home), "SHARDCTL_FORCE_CPU": "1", "HF_TOKEN": TOKEN}

    r = shardctl(["submit", str(spec), "--wait", "--json"], env)
    assert r.returncode == 0, r.stderr
    view = json.loads(r.stdout[r.stdout.index("{\n"):])
    assert view["state"] == "succeeded"
    assert TOKEN not in r.stdout + r.stderr and FILE_SECRET not in r.stdout + r.stderr
    for args in (["status", view["id"], "--json"], ["history", view["id"], "--json"], ["logs", view["id"]]):
        shown = shardctl(args, env)
        assert TOKEN not in shown.stdout + shown.stderr and FILE_SECRET not in shown.stdout + shown.stderr, args

    files = every_file(home)
    assert any(p.name == "launch.sh" for p in files) and any(p.name == "output.log" for p in files)
    assert any("secrets reached the script" in p.read_text(errors="replace") for p in files if p.name == "output.log")
    leaks = [p for p in files if TOKEN.encode() in p.read_bytes() or FILE_SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks
    not_private = [f"{p} {stat.S_IMODE(p.stat().st_mode):o}" for p in [home, *home.rglob("*")]
                   if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert not not_private, not_private


def test_a_missing_variable_or_shared_file_is_refused_at_submit(tmp_path: Path) -> None:
    """Nothing is recorded: one located line per source, naming the field, never a value."""
    (tmp_path / "check.py").write_text(SCRIPT)
    env_file = tmp_path / "wandb.env"
    env_file.write_text(f"WANDB_API_KEY={FILE_SECRET}\n")
    env_file.chmod(0o644)
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC.format(script=tmp_path / "check.py", env_file=env_file))
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env.update(SHARDCTL_HOME=str(tmp_path / "state"), SHARDCTL_FORCE_CPU="1")
    r = shardctl(["submit", str(spec)], env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert any(line.startswith(f"{spec}:10: spec.entrypoint.env_from.0.env: HF_TOKEN is not set")
               for line in lines), lines
    assert any(line.startswith(f"{spec}:11: spec.entrypoint.env_from.1.file: ") and "chmod 600" in line
               for line in lines), lines
    assert FILE_SECRET not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "state" / "jobs").exists() or not any((tmp_path / "state" / "jobs").iterdir())


def test_state_files_private_under_umask_022(tmp_path: Path) -> None:
    """Everything the local target writes for an attempt (configs, launch.sh, the request, the wrapper's
    records and logs) and the directories on the way are private, whatever the umask."""
    old = os.umask(0o022)
    try:
        target = LocalTarget(cpu=True)
        run_dir = tmp_path / "home" / "jobs" / "j1" / "attempt-1"
        ref = AttemptRef("j1", 1, str(run_dir), str(tmp_path / "ckpt"), str(tmp_path), str(run_dir / "output.log"))
        dry = target.render(job(), ref)
        request = json.loads(dry.files[local_wrapper.ATTEMPT_FILE])
        request["command"] = [sys.executable, "-c", "print('done')"]
        dry = replace(dry, files={**dry.files, local_wrapper.ATTEMPT_FILE: json.dumps(request)})
        external_id = target.submit(dry, ref)
        assert wait_ended(target, external_id, ref).outcome.exit_code == 0
    finally:
        os.umask(old)
    written = [tmp_path / "home", *(tmp_path / "home").rglob("*")]
    assert {p.name for p in written} >= {"launch.sh", "attempt.json", "wrapper.json", "exit.json", "output.log",
                                         "wrapper.log"}
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in written}
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes
    assert modes["launch.sh"] == 0o700


def wait_ended(target: LocalTarget, external_id: str, ref: AttemptRef, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = target.describe(external_id, ref)
        if seen.seen == "ended":
            return seen
        time.sleep(0.1)
    raise AssertionError("the attempt did not end")


def test_a_stale_exit_record_of_an_earlier_launch_is_not_read(tmp_path: Path) -> None:
    """A relaunch of the same attempt (its first launch's record still around, or written late by the first
    wrapper) is watched by its own records only: it is running until it ends, then ends with its own code."""
    target = LocalTarget(cpu=True)
    run_dir = tmp_path / "attempt-1"
    ref = AttemptRef("j1", 1, str(run_dir), str(tmp_path / "ckpt"), str(tmp_path), str(run_dir / "output.log"))
    stale = {"exit_code": 0, "signal": None, "oom_kills": 0, "peak_bytes": None, "terminated_by": None,
             "ended_at": time.time(), "launch": "0123456789abcdef"}
    write_json(run_dir / local_wrapper.EXIT_FILE, stale)  # the first launch ended "successfully"
    dry = target.render(job(), ref)
    request = json.loads(dry.files[local_wrapper.ATTEMPT_FILE])
    request["command"] = [sys.executable, "-c", "import time; time.sleep(1.5); raise SystemExit(3)"]
    dry = replace(dry, files={**dry.files, local_wrapper.ATTEMPT_FILE: json.dumps(request)})

    external_id = target.submit(dry, ref)
    write_json(run_dir / local_wrapper.EXIT_FILE, stale)  # ... or its wrapper writes it late
    assert target.describe(external_id, ref).seen == "running"
    ended = wait_ended(target, external_id, ref)
    assert ended.outcome.exit_code == 3  # not the stale 0: the attempt is not marked done from it
    assert read_json(run_dir / local_wrapper.EXIT_FILE)["launch"] == external_id.rsplit(":", 1)[1]


def test_a_recovered_attempt_is_only_this_launchs_wrapper(tmp_path: Path) -> None:
    run_dir = tmp_path / "attempt-1"
    ref = AttemptRef("j1", 1, str(run_dir), str(tmp_path / "ckpt"), str(tmp_path), str(run_dir / "output.log"))
    write_json(run_dir / local_wrapper.ATTEMPT_FILE, {"launch": "new"})
    write_json(run_dir / local_wrapper.WRAPPER_FILE, {"pid": 1, "start_ticks": 1, "launch": "old"})
    assert LocalTarget(cpu=True).recover(ref) is None
    write_json(run_dir / local_wrapper.WRAPPER_FILE, {"pid": 1, "start_ticks": 1, "launch": "new"})
    assert LocalTarget(cpu=True).recover(ref) == "1:1:new"


def test_a_supervisor_without_the_variable_refuses_to_start_the_attempt(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A supervisor restarted later from a shell without HF_TOKEN fails the attempt with that reason
    rather than running without it."""
    from orchestrator.errors import SubmitError

    monkeypatch.delenv("HF_TOKEN", raising=False)
    spec = job(entrypoint={"script": "t.py", "env_from": [{"env": "HF_TOKEN"}]})
    ref = AttemptRef("j1", 2, str(tmp_path / "attempt-2"), str(tmp_path), str(tmp_path), str(tmp_path / "o.log"))
    target = LocalTarget(cpu=True)
    dry = target.render(spec, ref)
    assert json.loads(dry.files[local_wrapper.ATTEMPT_FILE])["env_from"] == [{"env": "HF_TOKEN"}]
    with pytest.raises(SubmitError, match="HF_TOKEN not set|HF_TOKEN is not set"):
        target.submit(dry, ref)
    assert not (tmp_path / "attempt-2").exists()  # nothing was started


def test_the_wrapper_refuses_a_shared_env_file_at_launch(tmp_path: Path) -> None:
    """Read at launch: a file made readable by others after submit stops the run, as a user error."""
    from orchestrator.lifecycle.classify import classify

    env_file = tmp_path / "s.env"
    env_file.write_text(f"WANDB_API_KEY={FILE_SECRET}\n")
    env_file.chmod(0o640)
    run_dir = tmp_path / "a"
    write_json(run_dir / local_wrapper.ATTEMPT_FILE, {
        "command": [sys.executable, "-c", "print('ran')"], "cwd": str(tmp_path), "log": "output.log",
        "memory_limit_bytes": None, "memory_mode": "none", "cgroup_name": "x", "launch": "n1",
        "env_from": [{"file": str(env_file)}]})
    subprocess.run([sys.executable, "-m", "orchestrator.targets.local.wrapper", str(run_dir)], cwd=ROOT, timeout=60)
    ref = AttemptRef("j", 1, str(run_dir), str(tmp_path), str(tmp_path), str(run_dir / "output.log"))
    seen = LocalTarget(cpu=True).describe("999999999:1:n1", ref)
    failure = classify(seen.outcome)
    assert failure is not None and failure.kind == "user_error" and "chmod 600" in failure.evidence
    assert "ran" not in seen.outcome.log_tail and FILE_SECRET not in seen.outcome.log_tail


def test_a_script_that_does_not_exist_is_refused_at_submit_and_nothing_is_recorded(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    unused = tmp_path / "unused.env"
    spec.write_text(SPEC.format(script=tmp_path / "nosuch.py", env_file=unused)
                    .replace(f"    env_from:\n      - env: HF_TOKEN\n      - file: {unused}\n", ""))
    env = {**os.environ, "SHARDCTL_HOME": str(tmp_path / "state"), "SHARDCTL_FORCE_CPU": "1"}
    r = shardctl(["submit", str(spec)], env)
    assert r.returncode == 2, r.stderr
    refusals = [line for line in r.stderr.splitlines() if "spec.entrypoint.script" in line]
    assert refusals == [f"{spec}:7: spec.entrypoint.script: {tmp_path / 'nosuch.py'}: no such file in {ROOT}; "
                        "nothing was recorded"], r.stderr
    assert not (tmp_path / "state" / "jobs").exists() or not any((tmp_path / "state" / "jobs").iterdir())


def test_the_webhook_credentials_are_the_supervisors_and_never_reach_the_training_process() -> None:
    """spec.notify reads its URL and signing secret from the submitting shell: the supervisor needs them, the
    script must not have them (an environment dump in its log would show them); a variable the script asks
    for itself (entrypoint.env_from) stays."""
    from orchestrator.targets.base import notify_env_names
    from orchestrator.targets.local.wrapper import child_environment

    spec = job(entrypoint={"script": "t.py", "env_from": [{"env": "SHARED"}]}, notify=[
        {"url": {"env": "HOOK_URL"}, "format": "json", "signing_secret": {"env": "HOOK_KEY"},
         "events": ["job_finished"]},
        {"url": {"env": "SHARED"}, "format": "slack", "events": ["job_finished"]}])
    drop = notify_env_names(spec)
    assert drop == ["HOOK_URL", "HOOK_KEY"]
    env = child_environment({"HOOK_URL": "https://x", "HOOK_KEY": "k", "SHARED": "s", "PATH": "/bin"},
                            {"FROM_FILE": "f"}, drop)
    assert env == {"SHARED": "s", "PATH": "/bin", "FROM_FILE": "f"}
