"""The Slurm target against the real development cluster (slurm/dev/cluster up): the acceptance of
issue 4. Every job runs real `accelerate launch` CPU processes under slurmd; nothing is faked.

The OOM and timeout tests read the store directly after `shardctl submit` has exited, and never
run another shardctl command until the end: only the judge jobs move those jobs on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.store import Store
from orchestrator.targets.slurm_accounting import Poller
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]
pytest.importorskip("deepspeed")


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slurm_cluster: str) -> Path:
    monkeypatch.setenv("SHARDCTL_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("SHARDCTL_FORCE_CPU", "1")  # the dev cluster's GPUs are fake: train on CPU processes
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    return tmp_path / "state"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def spec_file(tmp: Path, example: str, **changes) -> Path:
    """An example with spec fields replaced (dotted keys: 'slurm.time')."""
    data = yaml.safe_load((ROOT / "examples" / example).read_text())
    data["spec"]["target"] = "slurm"
    for dotted, value in changes.items():
        node = data["spec"]
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = tmp / f"{data['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def submit(path: Path) -> str:
    r = cli("submit", str(path), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["id"]


def slurm_names(job_id: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, check=True).stdout
    return [n for n in out.split() if f".{job_id}." in n]


def test_two_nodes_rendezvous_and_train(home: Path) -> None:
    job_id = submit(ROOT / "examples/slurm-2node.yaml")
    store = Store(home)
    wait_for(lambda: store.get_job(job_id).terminal, 240, "the 2-node job to end")
    job, attempts = store.get_job(job_id), store.attempts(job_id)
    log = Path(attempts[0].log_path).read_text()
    assert job.state == "succeeded", log[-3000:]
    assert "rank 0/2 is process 0 on machine 0" in log and "rank 1/2 is process 0 on machine 1" in log
    assert "rendezvous node1:" in log and log.count("training complete") == 2  # one per node
    assert attempts[0].state == "succeeded" and attempts[0].failure_kind is None  # a success is not a failure
    status = cli("status", job_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "succeeded"
    logs = cli("logs", job_id)
    assert logs.returncode == 0 and "training complete" in logs.stdout
    history = cli("history", job_id)
    assert history.returncode == 0 and "attempt 1: succeeded after" in history.stdout


def test_oom_falls_back_and_resumes_with_nobody_logged_in(home: Path) -> None:
    """Attempt 1 runs out of its Slurm memory limit (--mem, a cgroup); its judge job classifies it and
    submits attempt 2 with the next rung, which resumes from the step-8 checkpoint. The CLI that
    submitted has long exited, and no shardctl command runs meanwhile."""
    job_id = submit(spec_file(home.parent, "oom-fallback.yaml"))
    store = Store(home)
    wait_for(lambda: store.get_job(job_id).terminal, 400, "the judges to finish the job")
    job, attempts = store.get_job(job_id), store.attempts(job_id)
    assert job.state == "succeeded", [(a.failure_kind, a.failure_reason) for a in attempts]
    assert [(a.state, a.failure_kind) for a in attempts] == [("failed", "host_oom"), ("succeeded", None)]
    assert "OUT_OF_MEMORY" in attempts[0].failure_reason
    assert attempts[1].rung == "activation_checkpointing" and attempts[1].resume_from.startswith("step_8")
    assert "resumed from" in Path(attempts[1].log_path).read_text()
    judge_log = (Path(attempts[0].run_dir) / "judge.log").read_text()
    assert "attempt 2 started" in judge_log  # the judge of attempt 1 submitted attempt 2


def test_a_timeout_resumes_the_same_config(home: Path) -> None:
    """--time=1: Slurm signals the batch script 30 s before the limit (a checkpoint is requested and
    saved), then ends the job TIMEOUT; attempt 2 has the same config and resumes from that checkpoint."""
    path = spec_file(home.parent, "oom-fallback.yaml", **{
        "entrypoint.args": ["--micro-batch", "{micro_batch}", "--grad-accum", "{grad_accum}", "--steps", "90",
                            "--checkpoint-dir", "{checkpoint_dir}", "--dim", "32", "--heads", "2", "--layers", "1",
                            "--vocab", "64", "--step-sleep", "1"],
        "resources": {"nodes": 1, "gpus_per_node": 1, "memory_per_node": "2GiB"},
        "batch": {"micro": 2, "global": 2, "seq_len": 16},
        "checkpoint": {"every_steps": 5},
        "fallback": {"max_attempts": 6},
        "slurm": {"time": "1", "signal_seconds": 30}})
    job_id = submit(path)
    store = Store(home)
    wait_for(lambda: store.get_job(job_id).terminal, 600, "the job to time out and finish")
    attempts = store.attempts(job_id)
    kinds = [a.failure_kind or a.state for a in attempts]
    assert store.get_job(job_id).state == "succeeded", [(a.failure_kind, a.failure_reason) for a in attempts]
    # 90 s of steps cannot fit in one minute; how many minutes it takes depends on start-up time
    assert kinds[0] == "timeout" and kinds[-1] == "succeeded" and set(kinds[:-1]) == {"timeout"}
    assert all(a.rung is None and a.spec == attempts[0].spec for a in attempts[1:])  # the same config
    first_log = Path(attempts[0].log_path).read_text()
    assert "checkpoint requested before the time limit" in first_log and "DUE TO TIME LIMIT" in first_log
    resumed = [int(a.resume_from.split()[0].removeprefix("step_")) for a in attempts[1:]]
    assert resumed == sorted(resumed) and resumed[0] >= 5  # each attempt goes on from further along


def cancel_while_training(home: Path, start_timeout_s: float = 120) -> tuple[str, Store]:
    """Submit a long job, cancel it from the CLI once it trains, and check that the attempt and its judge
    are gone and nothing is resubmitted (shared with tests/twohosts: the same with the judges on another
    mount). Returns the job's id and the store it is in."""
    path = spec_file(home.parent, "oom-fallback.yaml", **{
        "entrypoint.args": ["--steps", "1000", "--dim", "32", "--heads", "2", "--layers", "1", "--vocab", "64",
                            "--step-sleep", "0.5", "--checkpoint-dir", "{checkpoint_dir}"],
        "resources": {"nodes": 1, "gpus_per_node": 1, "memory_per_node": "2GiB"},
        "batch": {"micro": 2, "global": 2}})
    job_id = submit(path)
    store = Store(home)
    log = Path(store.attempts(job_id)[0].log_path)
    wait_for(lambda: log.exists() and "step 2/" in log.read_text(), start_timeout_s, "training to start")
    assert len(slurm_names(job_id)) == 2  # the attempt and its judge
    r = cli("cancel", job_id)
    assert r.returncode == 0 and "cancelled" in r.stdout, r.stderr
    wait_for(lambda: slurm_names(job_id) == [], 60, "Slurm to finish stopping the attempt (KillWait)")
    time.sleep(5)  # nothing resubmits after a cancel
    assert slurm_names(job_id) == [] and len(store.attempts(job_id)) == 1
    assert store.get_job(job_id).state == "cancelled" and store.attempts(job_id)[0].state == "cancelled"
    return job_id, store


def test_cancel_ends_the_attempt_and_its_judge(home: Path) -> None:
    cancel_while_training(home)


@pytest.mark.parametrize("changes,message", [
    ({"slurm.partition": "nope"}, "invalid partition"),
    ({"resources.gpus_per_node": 16, "batch.global": 128}, "Requested node configuration is not available"),
])
def test_an_impossible_request_is_refused_at_submit(home: Path, changes: dict, message: str) -> None:
    r = cli("submit", str(spec_file(home.parent, "oom-fallback.yaml", **changes)))
    assert r.returncode == 2 and message in r.stderr and "nothing was submitted" in r.stderr, r.stderr
    assert not (home / "shardctl.db").exists() or Store(home).list_jobs(10) == []


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_sbatch_test_only_accepts_every_rendered_example(tmp_path: Path, slurm_cluster: str, example: str) -> None:
    out = tmp_path / "render"
    r = cli("render", f"examples/{example}", "--target", "slurm", "--out", str(out))
    assert r.returncode == 0, r.stderr
    for script in ("job.sbatch", "judge.sbatch"):
        check = subprocess.run(["sbatch", "--test-only", str(out / script)], capture_output=True, text=True)
        assert check.returncode == 0 and "to start at" in check.stderr, (script, check.stderr)


def _squeue_state(slurm_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", slurm_id, "-o", "%T"], capture_output=True, text=True).stdout
    return out.strip()


def test_a_requeued_attempt_resumes_from_its_checkpoint_as_the_same_attempt(home: Path) -> None:
    """`scontrol requeue` of a running attempt (what a preemption with --requeue does): Slurm restarts the
    same job id, the script resumes from its newest checkpoint, the judge waits for the real end, and the
    record keeps one attempt that succeeds. Slurm holds a requeued job ~2 min (BeginTime); the test releases
    it at once with `scontrol update StartTime=now`, as an admin may."""
    path = spec_file(home.parent, "oom-fallback.yaml", **{
        "entrypoint.args": ["--steps", "30", "--dim", "32", "--heads", "2", "--layers", "1", "--vocab", "64",
                            "--step-sleep", "0.5", "--checkpoint-dir", "{checkpoint_dir}"],
        "resources": {"nodes": 1, "gpus_per_node": 1, "memory_per_node": "2GiB"},
        "batch": {"micro": 2, "global": 2}, "checkpoint": {"every_steps": 5}, "slurm.partition": "gpu"})
    job_id = submit(path)
    store = Store(home)
    log = Path(store.attempts(job_id)[0].log_path)
    wait_for(lambda: log.exists() and "checkpoint saved" in log.read_text(), 180, "a first checkpoint")
    slurm_id = store.attempts(job_id)[0].external_id
    assert slurm_id and "#SBATCH --requeue" in (log.parent / "job.sbatch").read_text()
    # the site defaults on the way: CPUs per task from the nodes' CPUs per GPU (96 / 8 = 12, x 1 GPU), with a
    # warning kept with the attempt; the attempt on partition gpu, its judge on the site's default (debug)
    assert "#SBATCH --cpus-per-task=12" in (log.parent / "job.sbatch").read_text()
    assert any("--cpus-per-task=12 (12 CPUs per GPU x 1 GPUs per node, derived from partition gpu's nodes: 96 "
               "CPUs, 8 GPUs each)" in w
               for w in json.loads(store.attempts(job_id)[0].warnings))
    scontrol = subprocess.run(["scontrol", "show", "job", slurm_id], capture_output=True, text=True).stdout
    assert "NumCPUs=12" in scontrol and "Partition=gpu" in scontrol, scontrol
    r = subprocess.run(["scontrol", "requeue", slurm_id], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: _squeue_state(slurm_id) == "PENDING", 60, "Slurm to requeue the attempt")
    wait_for(lambda: (info := Poller(interval_s=0).get(slurm_id)) is not None and info.requeues == 1, 30,
             "accounting to list the earlier run (sacct -D)")
    pending = Poller(interval_s=0).get(slurm_id)
    assert pending is not None and pending.phase == "pending", pending  # an open attempt, not an end
    # while it waits, a CLI read makes its moves inline: the attempt must stay open, nothing resubmitted
    status = cli("status", job_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "running", status.stdout
    assert [(a.number, a.state.value) for a in store.attempts(job_id)] == [(1, "running")]
    subprocess.run(["scontrol", "update", f"JobId={slurm_id}", "StartTime=now"], check=True)
    wait_for(lambda: store.get_job(job_id).terminal, 300, "the requeued attempt to finish")
    attempts = store.attempts(job_id)
    text = log.read_text()
    assert store.get_job(job_id).state == "succeeded", text[-3000:]
    assert [(a.number, a.state.value, a.external_id) for a in attempts] == [(1, "succeeded", slurm_id)]
    assert attempts[0].preemptions == 1  # recorded as a preemption of the attempt, not a failure and a new one
    assert "DUE TO JOB REQUEUE" in text and f"Slurm job {slurm_id} on" in text and "(restart 1)" in text
    resumed = re.findall(r"resumed from \S*step_(\d+)", text)
    assert len(resumed) == 1 and int(resumed[0]) >= 5 and text.count("no checkpoint: starting from step 0") == 1
    assert text.count("training complete") == 1
    runs = subprocess.run(["sacct", "-n", "-P", "-D", "-X", "-j", slurm_id, "-o", "State"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert runs[0] == "REQUEUED" and runs[-1] == "COMPLETED", runs
    info = Poller(interval_s=0).get(slurm_id)
    assert info is not None and (info.state, info.requeues) == ("COMPLETED", 1), info
    judge = ["sacct", "-n", "-P", "-D", "-X", "--name", f"oom-fallback.{job_id}.1.judge", "-o", "State,Partition"]
    wait_for(lambda: subprocess.run(judge, capture_output=True, text=True).stdout.split() == ["COMPLETED|debug"], 60,
             "the one judge to have run once, after the real end, on the default partition")
