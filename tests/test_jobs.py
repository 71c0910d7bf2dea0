"""`shardctl submit` end to end on this machine: real accelerate launch, real OOM, real fallback.

These run the CLI as a user does (a subprocess with its own state directory), kill supervisors
with SIGKILL, and read the store to check that nothing was lost or started twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.procfiles import read_json
from orchestrator.store.jobstore import Store
from orchestrator.targets.local.memlimit import cgroup_available
from orchestrator.targets.local.wrapper import is_alive
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
SHARDCTL = [sys.executable, "-m", "orchestrator"]


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHARDCTL_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    return tmp_path / "state"


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*SHARDCTL, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def spec_file(tmp: Path, steps: int = 10, extra: str = "") -> Path:
    text = (ROOT / "examples/quickstart.yaml").read_text().replace('"--steps", "20"', f'"--steps", "{steps}"')
    path = tmp / "job.yaml"
    path.write_text(text + extra)
    return path


def test_dry_run_prints_the_request_and_records_nothing(home: Path) -> None:
    r = cli("submit", "examples/oom-fallback.yaml", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "--- launch.sh" in r.stdout and "--- attempt.json" in r.stdout
    assert '"memory_limit_bytes": 2415919104' in r.stdout  # 2304MiB, enforced for the whole run
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())  # no job directory at all


def test_bad_spec_is_refused_before_anything_is_recorded(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "examples/quickstart.yaml").read_text().replace("micro: 8", "micro: 7"))
    r = cli("submit", str(bad))
    assert r.returncode == 2 and "spec.batch" in r.stderr
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())  # no job directory at all


def test_unknown_job_is_a_clear_error(home: Path) -> None:
    r = cli("status", "deadbeef")
    assert r.returncode == 2 and "no job with id or name 'deadbeef'" in r.stderr


@pytest.mark.slow
def test_user_error_through_real_accelerate_is_not_retried(home: Path, tmp_path: Path) -> None:
    """The script exists (a missing one is refused at submit) but rejects its arguments: argparse's error is a
    user error, and the same config is never run again."""
    path = spec_file(tmp_path)
    path.write_text(path.read_text().replace('"--steps", "10"', '"--steps", "10", "--no-such-flag"'))
    assert "--no-such-flag" in path.read_text()
    r = cli("submit", str(path), "--wait", "--json")
    assert r.returncode == 1
    view = json.loads(r.stdout[r.stdout.index("{\n"):])
    assert view["state"] == "failed" and len(view["attempts"]) == 1
    assert view["attempts"][0]["failure"]["kind"] == "user_error"
    assert "never retried" in view["reason"]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # its own waits (submit, two attempts, status) add up past 900 s
@pytest.mark.skipif(not cgroup_available(), reason="the example's OOM evidence is a memory cgroup's oom_kill count")
def test_oom_fallback_survives_a_killed_supervisor(home: Path) -> None:
    """The acceptance: real OOM, fallback, resume; the supervisor is SIGKILLed mid-run and
    `shardctl status` later shows the truth, with no attempt lost or started twice."""
    r = cli("submit", "examples/oom-fallback.yaml", "--json")
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["id"]
    store = Store(home)
    first = store.attempts(job_id)[0]
    assert first.state == "running"  # submit returns once attempt 1 is started and recorded
    supervisor = store.get_job(job_id).supervisor_pid
    os.kill(supervisor, signal.SIGKILL)
    wrapper = read_json(Path(first.run_dir) / "wrapper.json")
    assert wrapper is not None and "launched_at" in wrapper  # running means the command was started
    assert first.external_id == f"{wrapper['pid']}:{wrapper['start_ticks']}:{wrapper['launch']}"
    assert is_alive(wrapper["pid"], wrapper["start_ticks"])  # the run goes on without its supervisor

    # attempt 1 runs out of memory while nobody watches; nothing is recorded yet
    wait_for(lambda: (Path(first.run_dir) / "exit.json").exists(), 240, "attempt 1 to end")
    assert [a.state for a in store.attempts(job_id)] == ["running"]

    status = cli("status", job_id, "--json")
    assert status.returncode == 0 and "had no supervisor" in status.stderr
    view = json.loads(status.stdout)
    assert view["attempts"][0]["state"] == "failed"
    assert view["attempts"][0]["failure"]["kind"] == "host_oom"
    assert view["attempts"][0]["failure"]["evidence"] == "oom_kill event"
    assert len(view["attempts"]) == 2 and view["attempts"][1]["state"] == "running"

    wait_for(lambda: store.get_job(job_id).terminal, 240, "the job to end")
    final = json.loads(cli("history", job_id, "--json").stdout)
    assert final["state"] == "succeeded", final
    a1, a2 = final["attempts"]
    assert (a1["number"], a2["number"]) == (1, 2)
    assert a2["rung"] == "activation_checkpointing" and a2["activation_checkpointing"] is True
    assert a2["resume_from"].startswith("step_8")
    assert a2["backend"] == a1["backend"] == "deepspeed" and a2["zero_stage"] == 3
    log = Path(a2["log"]).read_text()
    assert "at step 8 (model, optimizer and RNG state)" in log and "step 1/10" not in log
    assert "training complete" in log
    text = cli("history", job_id).stdout
    assert "host_oom" in text and "activation checkpointing on" in text and "resumed from: step_8" in text


@pytest.mark.slow
def test_cancel_stops_every_process_and_no_attempt_follows(home: Path, tmp_path: Path) -> None:
    r = cli("submit", str(spec_file(tmp_path, steps=100000)), "--json")
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["id"]
    store = Store(home)
    attempt = store.attempts(job_id)[0]
    wait_for(lambda: "step 2/" in Path(attempt.log_path).read_text(errors="replace"), 180, "training to start")
    wrapper = read_json(Path(attempt.run_dir) / "wrapper.json")
    r = cli("cancel", job_id[:5])
    assert r.returncode == 0 and "cancelled" in r.stdout, r.stdout + r.stderr
    assert not is_alive(wrapper["pid"], wrapper["start_ticks"])
    assert not is_alive(wrapper["child_pid"], None)
    left = subprocess.run(["pgrep", "-f", str(Path(attempt.run_dir).parent)],
                          capture_output=True, text=True).stdout.split()
    assert left == []  # no launcher or worker of this attempt survives
    assert [a.state for a in store.attempts(job_id)] == ["cancelled"]
    listed = json.loads(cli("list", "--json").stdout)
    assert [(j["id"], j["state"]) for j in listed] == [(job_id, "cancelled")]


class _Cluster:
    """A controller-driven target whose cluster record the test sets (fetch returns it as it is)."""

    name = "cluster"

    def __init__(self, record) -> None:
        self.record = record
        self.withdrawn = 0

    def hand_over(self, job):
        return {}

    def fetch(self, options, name):
        return self.record

    def withdraw(self, options, name) -> None:
        self.withdrawn += 1


def _mirrored(tmp_path: Path):
    from orchestrator.jobs import ByController
    from orchestrator.spec.states import AttemptState, JobState
    from orchestrator.targets.base import ClusterAttempt, ClusterRecord
    from tests.helpers import doc

    store = Store(tmp_path / "state")
    record = store.create_job(name="t", target="kubernetes", spec=doc(), source=None, workdir=str(tmp_path),
                              checkpoint_dir=None, options={"namespace": "ml", "uid": "u1"})
    running = ClusterRecord(JobState.RUNNING, None, [ClusterAttempt(1, AttemptState.RUNNING, doc(), None, "first",
                                                                   "t-a1", started_at=1.0)])
    return store, record, ByController(), _Cluster(running)


def test_the_cluster_mirror_never_moves_a_cancelled_job_back(tmp_path: Path) -> None:
    store, record, driver, cluster = _mirrored(tmp_path)
    driver.catch_up(store, cluster, record)
    assert store.get_job(record.id).state == "running"
    driver.request_cancel(store, cluster, store.get_job(record.id))
    assert cluster.withdrawn == 1 and store.get_job(record.id).state == "cancelled"
    driver.catch_up(store, cluster, store.get_job(record.id))  # a follower's read of the record from before the delete
    stale = store.get_job(record.id)
    assert stale.state == "cancelled" and store.attempts(record.id)[0].state == "cancelled"
    store.mark_running(record.id)  # even a record that was not yet terminal here
    driver.catch_up(store, cluster, store.get_job(record.id))
    assert store.attempts(record.id)[0].state == "cancelled"  # an ended attempt is never reopened


def test_cancelling_a_job_that_already_ended_in_the_cluster_keeps_its_end(tmp_path: Path) -> None:
    from orchestrator.spec.states import AttemptState, JobState
    from orchestrator.targets.base import ClusterAttempt, ClusterRecord
    from tests.helpers import doc

    store, record, driver, cluster = _mirrored(tmp_path)
    driver.catch_up(store, cluster, record)
    cluster.record = ClusterRecord(JobState.SUCCEEDED, "attempt 1 succeeded", [
        ClusterAttempt(1, AttemptState.SUCCEEDED, doc(), None, "first", "t-a1", started_at=1.0, ended_at=2.0)])
    driver.request_cancel(store, cluster, store.get_job(record.id))
    assert cluster.withdrawn == 0  # nothing deleted: its pods' logs stay readable
    assert store.get_job(record.id).state == "succeeded" and store.attempts(record.id)[0].state == "succeeded"


# --- a dry run runs every check a submit runs (issue 20) ----------------------------------------------------


def _with_secret_file(tmp_path: Path, mode: int) -> tuple[Path, Path]:
    secret = tmp_path / "hf.env"
    secret.write_text("HF_TOKEN=hf_not_a_real_token\n")
    secret.chmod(mode)
    text = (ROOT / "examples/quickstart.yaml").read_text().replace(
        "    script: examples/train_tiny.py\n",
        f"    script: examples/train_tiny.py\n    env_from:\n      - file: {secret}\n", 1)
    spec = tmp_path / "job.yaml"
    spec.write_text(text)
    return spec, secret


def test_submit_dry_run_refuses_a_shared_secret_file_with_submits_line_and_records_nothing(
        home: Path, tmp_path: Path) -> None:
    spec, secret = _with_secret_file(tmp_path, 0o644)
    dry = cli("submit", str(spec), "--dry-run", timeout=120)
    assert dry.returncode == 2, (dry.stdout, dry.stderr)
    assert not home.exists()  # a dry run does not even create the store
    real = cli("submit", str(spec), timeout=120)
    assert real.returncode == 2, (real.stdout, real.stderr)
    assert dry.stderr.splitlines() == real.stderr.splitlines()
    assert dry.stderr.splitlines()[-1] == (f"{spec}:12: spec.entrypoint.env_from.0.file: {secret}: mode 0644 lets "
                                           f"other users read it; make it private: chmod 600 {secret}")
    assert dry.stdout == real.stdout == ""
    assert Store(home).list_jobs() == []
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())


def test_submit_dry_run_and_submit_share_one_check_function(home: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The two paths cannot drift: both go through jobs.submit_checks, and the dry run stops there."""
    from orchestrator import jobs
    from orchestrator.api.job import check, dry_run_checked, submit_checked
    from orchestrator.errors import ShardctlError

    calls: list[str] = []
    original = jobs.submit_checks

    def spy(*args, **kwargs):
        calls.append("checks")
        return original(*args, **kwargs)

    monkeypatch.setattr(jobs, "submit_checks", spy)
    spec, _ = _with_secret_file(tmp_path, 0o600)
    checked = check(spec)
    dry = dry_run_checked(checked, str(tmp_path / "run"))
    assert "--- launch.sh" in str(dry) and calls == ["checks"]
    assert not home.exists()  # nothing recorded, nothing copied
    (tmp_path / "hf.env").chmod(0o640)
    with pytest.raises(ShardctlError) as by_dry:
        dry_run_checked(checked, str(tmp_path / "run"))
    with pytest.raises(ShardctlError) as by_submit:
        submit_checked(checked, store=Store(home))
    assert type(by_dry.value) is type(by_submit.value) and by_dry.value.lines() == by_submit.value.lines()
    assert calls == ["checks"] * 3 and Store(home).list_jobs() == []


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_resilience_rules_decide_on_real_runs_an_exit_code_retries_and_a_log_line_fails(home: Path,
                                                                                       tmp_path: Path) -> None:
    """Two real processes under accelerate launch (torchrun hides the workers' exit 75 behind its own 1): the
    exit-code rule restarts the same config until resilience.max_restarts (1) is spent; the log rule, checked
    first, fails a run that prints its custom error at once, without a retry."""
    (tmp_path / "quits.py").write_text(
        "import os, sys\n"
        "print('step 1/4', flush=True)\n"
        "if os.environ.get('SHARDCTL_ATTEMPT') == '1' and os.environ.get('RANK') == '0' and len(sys.argv) > 1:\n"
        "    print('DataCorrupted: shard 17 has a bad header', file=sys.stderr, flush=True)\n"
        "sys.exit(75)\n")
    base = ("apiVersion: shardctl.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: NAME}\nspec:\n"
            "  entrypoint: {script: quits.py, args: ARGS}\n  model: {name_or_path: tiny-lm, parameters: 1.0e6}\n"
            "  backend: deepspeed\n  sharding: grad_op\n  precision: {mixed: 'no', params: fp32}\n"
            "  batch: {micro: 1, global: 2}\n  resources: {nodes: 1, gpus_per_node: 2}\n"
            "  resilience:\n    max_restarts: 1\n    rules:\n"
            "      - {when: {log: 'DataCorrupted: shard [0-9]+'}, then: fail}\n"
            "      - {when: {exit_code: 75}, then: retry}\n")
    for name, args in (("exits-75", "[]"), ("corrupted", "[--corrupt]")):
        (tmp_path / f"{name}.yaml").write_text(base.replace("NAME", name).replace("ARGS", args))
    env = {**os.environ, "SHARDCTL_FORCE_CPU": "1"}
    runs = {}
    for name in ("exits-75", "corrupted"):
        r = subprocess.run([*SHARDCTL, "submit", f"{name}.yaml", "--wait", "--json"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=200)
        assert r.returncode == 1, r.stderr
        runs[name] = json.loads(r.stdout[r.stdout.index("{\n"):])
    retried = runs["exits-75"]
    assert [a["failure"]["rule"] for a in retried["attempts"]] == [1, 1]
    assert retried["attempts"][1]["rung"] is None and "restart 1 of 1" in retried["attempts"][1]["reason"]
    assert "max_restarts: 1" in retried["reason"]
    failed = runs["corrupted"]
    assert len(failed["attempts"]) == 1 and failed["attempts"][0]["failure"]["rule"] == 0
    assert "resilience.rules[0]" in failed["reason"] and "not retried" in failed["reason"]
