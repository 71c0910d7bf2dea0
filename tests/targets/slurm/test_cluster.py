"""The Slurm target against the real development cluster (slurm/dev/cluster up). Every job runs real
`accelerate launch` CPU processes under slurmd; nothing is faked.

The cluster runs the "site" profile (slurm/dev/profile-site.conf.in): the default partition gives a job
that asks no memory DefMemPerCPU, `gpu` gives DefMemPerGPU, `short` has a 30-minute MaxTime; accounts,
limits and QOS are enforced; GPUs are declared as gpu:h100:8. Every CLI here runs from a shell with
SBATCH_EXPORT=NONE and an allocation's SLURM_MEM_PER_NODE (as a judge job's or a site's login shell
would have), and every judge runs inside its own allocation: no attempt may inherit any of that.

The fallback and timeout tests read the store directly after `shardctl submit` has exited, and never
run another shardctl command until the end: only the judge jobs move those jobs on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.store.jobstore import Store
from orchestrator.targets.slurm.accounting import Poller
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The submitting shell: a site's login profile exports SBATCH_EXPORT=NONE, and a shell inside an allocation
# (a judge's) has SLURM_MEM_PER_NODE. Neither may reach an attempt (orchestrator/targets/slurm/env.py).
SUBMITTING_SHELL = {"SBATCH_EXPORT": "NONE", "SLURM_MEM_PER_NODE": "512"}


@pytest.fixture(scope="session")
def site_profile(slurm_cluster: str) -> str:
    """The cluster runs the site profile; fails where the Slurm tests are required, else skips."""
    out = subprocess.run(["sinfo", "-h", "-o", "%P|%l|%G"], capture_output=True, text=True, timeout=20).stdout
    if "short|30:00|gpu:h100:8" not in out:
        problem = f"the dev cluster does not run the site profile (SLURM_DEV_PROFILE=site slurm/dev/cluster up): {out}"
        if os.environ.get("SHARDCTL_REQUIRE_SLURM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    return slurm_cluster


def submitting_shell(monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    monkeypatch.setenv("SHARDCTL_HOME", str(home))
    monkeypatch.setenv("SHARDCTL_FORCE_CPU", "1")  # the dev cluster's GPUs are fake: train on CPU processes
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for name, value in SUBMITTING_SHELL.items():
        monkeypatch.setenv(name, value)
    return home


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, site_profile: str) -> Path:
    return submitting_shell(monkeypatch, tmp_path / "state")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def spec_file(tmp: Path, example: str, name: str | None = None, **changes) -> Path:
    """An example with spec fields replaced (dotted keys: 'slurm.time'; None removes the field)."""
    data = yaml.safe_load((ROOT / "examples" / example).read_text())
    data["spec"]["target"] = "slurm"
    if name:
        data["metadata"]["name"] = name
    for dotted, value in changes.items():
        node = data["spec"]
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
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


# The README's OOM example without a memory limit of its own: the site's DefMemPerCPU (1 GiB) times the CPUs
# asked for is the limit. Per node, 1 GiB holds one process with activation checkpointing and not without.
def default_memory_oom(tmp: Path, **changes) -> Path:
    return spec_file(tmp, "oom-fallback.yaml", **{"resources.memory_per_node": None, **changes})


def sbatch_lines(attempt_dir: Path) -> list[str]:
    return [line for line in (attempt_dir / "job.sbatch").read_text().splitlines() if line.startswith("#SBATCH")]


def test_two_nodes_fall_back_on_the_sites_default_memory_and_resume(home: Path) -> None:
    """Two nodes, one process each, no memory_per_node: attempt 1 runs out of DefMemPerCPU's limit on its
    nodes; its judge (inside its own allocation, SLURM_MEM_PER_NODE set there) submits attempt 2, whose step
    gets only its own SLURM_MEM_PER_CPU, rendezvouses across both nodes and resumes from step 8."""
    job_id = submit(default_memory_oom(home.parent, **{"resources.nodes": 2, "resources.gpus_per_node": 1,
                                                       "resources.cpus_per_node": 1}))
    store = Store(home)
    wait_for(lambda: store.get_job(job_id).terminal, 480, "the judges to finish the 2-node job")
    job, attempts = store.get_job(job_id), store.attempts(job_id)
    assert job.state == "succeeded", [a.failure for a in attempts]
    assert [(a.state, a.failure and a.failure.kind) for a in attempts] == [("failed", "host_oom"), ("succeeded", None)]
    assert attempts[0].failure is not None and "OUT_OF_MEMORY" in attempts[0].failure.reason
    assert attempts[1].rung == "activation_checkpointing" and (attempts[1].resume_from or "").startswith("step_8")
    for a in attempts:  # no --mem: the partition's DefMemPerCPU decides, 1 GiB per CPU
        assert not [line for line in sbatch_lines(Path(a.run_dir)) if line.startswith("#SBATCH --mem")]
        req = subprocess.run(["sacct", "-n", "-X", "-P", "-j", str(a.external_id), "-o", "ReqMem,AllocTRES"],
                             capture_output=True, text=True, check=True).stdout
        assert req.startswith("2G|") and "node=2" in req, req  # 1 CPU x 1 GiB on each of 2 nodes
    log = Path(attempts[1].log_path).read_text()
    assert "srun: fatal" not in log and "mutually exclusive" not in log
    assert "rank 0/2 is process 0 on machine 0" in log and "rank 1/2 is process 0 on machine 1" in log
    assert "rendezvous node1:" in log and log.count("training complete") == 2  # one per node
    assert "resumed from" in log
    judge_log = (Path(attempts[0].run_dir) / "judge.log").read_text()
    assert "attempt 2 started" in judge_log  # the judge of attempt 1 submitted attempt 2
    status = cli("status", job_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "succeeded"
    logs = cli("logs", job_id)
    assert logs.returncode == 0 and "training complete" in logs.stdout
    history = cli("history", job_id)
    assert history.returncode == 0 and "attempt 2: succeeded after" in history.stdout


def test_srun_refusing_the_step_fails_the_job_as_a_refusal_without_a_fallback(home: Path) -> None:
    """A step srun will not start (here the spec's own entrypoint.env sets SLURM_MEM_PER_NODE beside the
    SLURM_MEM_PER_CPU that DefMemPerCPU gives the job): the attempt is `refused` in Slurm's words, and no
    rung is spent on what would be refused again."""
    job_id = submit(default_memory_oom(home.parent, **{"entrypoint.env": {"SLURM_MEM_PER_NODE": "100"},
                                                       "resources.cpus_per_node": 2}))
    store = Store(home)
    wait_for(lambda: store.get_job(job_id).terminal, 180, "the judge to end the job")
    job, attempts = store.get_job(job_id), store.attempts(job_id)
    assert [(a.state, a.failure and a.failure.kind) for a in attempts] == [("failed", "refused")], \
        [a.failure for a in attempts]
    reason = attempts[0].failure.reason if attempts[0].failure else ""
    assert reason.startswith("Slurm's srun refused to start the job step: srun: fatal: ") and "mutually exclusive" \
        in reason, reason
    assert job.state == "failed" and "the same request would be refused again" in (job.reason or "")
    history = cli("history", job_id)
    assert history.returncode == 0 and "ended: refused: Slurm's srun refused" in history.stdout, history.stdout


def test_a_judge_refused_by_the_qos_is_said_and_the_cli_judges_the_attempt(home: Path) -> None:
    """QOS one-submit (MaxSubmitJobsPerUser=1) takes attempt 1 and refuses its judge: submit says so, `status`
    shows it in the QOS's words while the attempt runs, and the CLI judges the attempt once it has ended."""
    path = spec_file(home.parent, "oom-fallback.yaml", "qos-judge", **{
        "entrypoint.args": ["--steps", "4", "--dim", "32", "--heads", "2", "--layers", "1", "--vocab", "64",
                            "--step-sleep", "1", "--checkpoint-dir", "{checkpoint_dir}"],
        "resources": {"nodes": 1, "gpus_per_node": 1, "cpus_per_node": 2},
        "batch": {"micro": 2, "global": 2}, "slurm.qos": "one-submit", "slurm.account": "proj-b"})
    r = cli("submit", str(path), "--json")
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["id"]
    assert "the judge job was refused (" in r.stderr and "QOS policy" in r.stderr, r.stderr
    store = Store(home)
    slurm_id = store.attempts(job_id)[0].external_id
    view = json.loads(cli("status", job_id, "--json").stdout)
    said = view["attempts"][0]["target_state"] or ""
    assert "no judge job follows it (sbatch refused it: " in said and "QOS policy" in said, view
    text = cli("status", job_id).stdout
    assert "slurm: " in text and "no judge job follows it" in text, text
    ended = ["sacct", "-n", "-X", "-P", "-j", str(slurm_id), "-o", "State"]
    wait_for(lambda: subprocess.run(ended, capture_output=True, text=True).stdout.strip() == "COMPLETED", 180,
             "the attempt to end")
    assert not store.get_job(job_id).terminal  # nobody judged it yet
    view = json.loads(cli("status", job_id, "--json").stdout)  # the CLI makes the judge's moves inline
    assert view["state"] == "succeeded" and view["attempts"][0]["target_state"] is None, view


def test_a_timeout_resumes_the_same_config(home: Path) -> None:
    """--time=1 on partition short (MaxTime 30 minutes), account ml, the partition's default memory: Slurm
    signals the batch script 30 s before the limit (a checkpoint is requested and saved), then ends the job
    TIMEOUT; attempt 2 has the same config and resumes from that checkpoint."""
    path = spec_file(home.parent, "oom-fallback.yaml", **{
        "entrypoint.args": ["--micro-batch", "{micro_batch}", "--grad-accum", "{grad_accum}", "--steps", "90",
                            "--checkpoint-dir", "{checkpoint_dir}", "--dim", "32", "--heads", "2", "--layers", "1",
                            "--vocab", "64", "--step-sleep", "1"],
        "resources": {"nodes": 1, "gpus_per_node": 1, "cpus_per_node": 2},
        "batch": {"micro": 2, "global": 2, "seq_len": 16},
        "checkpoint": {"every_steps": 5},
        "fallback": {"max_attempts": 6},
        "slurm": {"time": "1", "signal_seconds": 30, "partition": "short", "account": "ml"}})
    job_id = submit(path)
    store = Store(home)
    wait_for(lambda: store.get_job(job_id).terminal, 600, "the job to time out and finish")
    attempts = store.attempts(job_id)
    kinds = [a.failure.kind if a.failure else a.state for a in attempts]
    assert store.get_job(job_id).state == "succeeded", [a.failure for a in attempts]
    # 90 s of steps cannot fit in one minute; how many minutes it takes depends on start-up time
    assert kinds[0] == "timeout" and kinds[-1] == "succeeded" and set(kinds[:-1]) == {"timeout"}
    assert all(a.rung is None and a.spec == attempts[0].spec for a in attempts[1:])  # the same config
    first_log = Path(attempts[0].log_path).read_text()
    assert "checkpoint requested (time_limit)" in first_log and "DUE TO TIME LIMIT" in first_log
    resumed = [int(a.resume_from.split()[0].removeprefix("step_")) for a in attempts[1:]]
    assert resumed == sorted(resumed) and resumed[0] >= 5  # each attempt goes on from further along


def long_job(home: Path, name: str | None = None, **changes) -> Path:
    """A job that trains for minutes (1000 steps of 0.5 s), under account proj-b, the partition's default memory."""
    return spec_file(home.parent, "oom-fallback.yaml", name, **{
        "entrypoint.args": ["--steps", "1000", "--dim", "32", "--heads", "2", "--layers", "1", "--vocab", "64",
                            "--step-sleep", "0.5", "--checkpoint-dir", "{checkpoint_dir}"],
        "resources": {"nodes": 1, "gpus_per_node": 1, "cpus_per_node": 2},
        "batch": {"micro": 2, "global": 2}, "slurm.account": "proj-b", **changes})


def cancel_and_check(job_id: str, store: Store, stopping_s: float = 60) -> None:
    """Cancel from the CLI; the attempt and its judge are gone and nothing is resubmitted."""
    r = cli("cancel", job_id)
    assert r.returncode == 0 and "cancelled" in r.stdout, r.stderr
    wait_for(lambda: slurm_names(job_id) == [], stopping_s, "Slurm to finish stopping the attempt (KillWait)")
    time.sleep(5)  # nothing resubmits after a cancel
    assert slurm_names(job_id) == [] and len(store.attempts(job_id)) == 1
    assert store.get_job(job_id).state == "cancelled" and store.attempts(job_id)[0].state == "cancelled"


def cancel_while_training(home: Path, start_timeout_s: float = 120) -> tuple[str, Store]:
    """Submit a long job, cancel it from the CLI once it trains, and check that the attempt and its judge
    are gone and nothing is resubmitted (tests/twohosts runs it with the judges on another mount). Returns
    the job's id and the store it is in."""
    job_id = submit(long_job(home))
    store = Store(home)
    log = Path(store.attempts(job_id)[0].log_path)
    wait_for(lambda: log.exists() and "step 2/" in log.read_text(), start_timeout_s, "training to start")
    assert len(slurm_names(job_id)) == 2  # the attempt and its judge
    cancel_and_check(job_id, store)
    return job_id, store


def test_a_job_held_by_its_qos_says_why_and_both_cancel_cleanly(home: Path) -> None:
    """QOS single (MaxJobsPerUser=1): while one job trains, a second one's attempt waits in the queue, and
    `status` says why in Slurm's words; cancelling the waiting one and then the training one leaves nothing
    behind, and nothing is resubmitted."""
    first = submit(long_job(home, "qos-first", **{"slurm.qos": "single"}))
    store = Store(home)
    second = None
    try:
        log = Path(store.attempts(first)[0].log_path)
        wait_for(lambda: log.exists() and "step 2/" in log.read_text(), 120, "the first job to train")
        second = submit(long_job(home, "qos-second", **{"slurm.qos": "single"}))

        def held() -> bool:
            view = json.loads(cli("status", second, "--json").stdout)
            return "QOSMaxJobsPerUserLimit" in (view["attempts"][0]["target_state"] or "")
        wait_for(held, 90, "status to say why the second job waits")
        text = cli("status", second).stdout
        assert "slurm: PENDING (QOSMaxJobsPerUserLimit)" in text.splitlines(), text
        assert json.loads(cli("status", second, "--json").stdout)["state"] == "running"  # queued in Slurm: open
        cancel_and_check(second, store)
        cancel_and_check(first, store)
    finally:  # a failure here must not leave minutes of training holding the QOS and the CPUs for later tests
        for job_id in (first, second):
            for name in slurm_names(job_id) if job_id else []:
                subprocess.run(["scancel", "--name", name], capture_output=True, timeout=30)


@pytest.mark.parametrize("changes,field,words", [
    ({"slurm.partition": "nope"}, "spec.slurm.partition", "invalid partition"),
    ({"resources.gpus_per_node": 16, "batch.global": 128}, "spec.resources",
     "Requested node configuration is not available"),
    ({"slurm.account": "nope"}, "spec.slurm.account", "Invalid account or account/partition combination"),
    ({"slurm.qos": "bogus"}, "spec.slurm.qos", "Invalid qos specification"),
    ({"slurm.partition": "short", "slurm.time": "02:00:00"}, "spec.slurm.time", "Requested time limit is invalid"),
])
def test_a_request_the_site_forbids_is_refused_at_submit_in_one_line(home: Path, changes: dict, field: str,
                                                                    words: str) -> None:
    r = cli("submit", str(spec_file(home.parent, "oom-fallback.yaml", **changes)))
    refusals = [line for line in r.stderr.splitlines() if "nothing was submitted" in line]
    assert r.returncode == 2 and len(refusals) == 1, r.stderr
    assert f": {field}: " in refusals[0] and words in refusals[0], refusals[0]
    assert "Traceback" not in r.stderr and not (home / "jobs").exists() or Store(home).list_jobs(10) == []


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
    """`scontrol requeue` of a running attempt (what a preemption with --requeue does) on partition gpu, whose
    DefMemPerGPU gives the memory: Slurm restarts the
    same job id, the script resumes from its newest checkpoint, the judge waits for the real end, and the
    record keeps one attempt that succeeds. Slurm holds a requeued job ~2 min (BeginTime); the test releases
    it at once with `scontrol update StartTime=now`, as an admin may."""
    path = spec_file(home.parent, "oom-fallback.yaml", **{
        "entrypoint.args": ["--steps", "30", "--dim", "32", "--heads", "2", "--layers", "1", "--vocab", "64",
                            "--step-sleep", "0.5", "--checkpoint-dir", "{checkpoint_dir}"],
        "resources": {"nodes": 1, "gpus_per_node": 1},
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
               for w in store.attempts(job_id)[0].warnings)
    scontrol = subprocess.run(["scontrol", "show", "job", slurm_id], capture_output=True, text=True).stdout
    assert "NumCPUs=12" in scontrol and "Partition=gpu" in scontrol, scontrol
    assert re.search(r"\bmem=4G\b", scontrol), scontrol  # no memory_per_node: partition gpu's DefMemPerGPU
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


def sacct_nodes(slurm_id: str) -> str:
    return subprocess.run(["sacct", "-n", "-X", "-P", "-j", slurm_id, "-o", "NodeList"], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_a_node_fault_moves_the_next_attempt_and_later_jobs_off_the_node(home: Path) -> None:
    """Attempt 1 dies of CUDA's own words for a broken GPU (an uncorrectable ECC error) on its node: attempt 2
    runs on the other node with the same config, resumed from its checkpoint, and the node is suspect for the
    site: a job submitted afterwards avoids it too, until `shardctl nodes --clear`."""
    tiny = ["--dim", "32", "--heads", "2", "--layers", "1", "--vocab", "64", "--checkpoint-dir", "{checkpoint_dir}"]
    single = {"resources": {"nodes": 1, "gpus_per_node": 1, "cpus_per_node": 2}, "batch": {"micro": 2, "global": 2},
              "checkpoint": {"every_steps": 2}}
    path = spec_file(home.parent, "oom-fallback.yaml", "ecc", **single, **{
        "entrypoint.args": ["--steps", "8", *tiny, "--fault-at-step", "5", "--fault-on-attempt", "1",
                            "--fault", "RuntimeError: CUDA error: uncorrectable ECC error encountered"]})
    job_id = submit(path)
    store = Store(home)
    suspects = []
    try:
        wait_for(lambda: store.get_job(job_id).terminal, 300, "the judges to finish the job")
        attempts = store.attempts(job_id)
        assert [(a.state, a.failure and a.failure.kind) for a in attempts] == [("failed", "node_fault"),
                                                                                ("succeeded", None)], attempts
        bad = sacct_nodes(str(attempts[0].external_id))
        suspects = [bad]
        assert attempts[0].failure is not None and attempts[0].failure.node == bad
        other = sacct_nodes(str(attempts[1].external_id))
        assert other and other != bad, (bad, other)
        assert attempts[1].rung is None and (attempts[1].resume_from or "").startswith("step_4")
        assert f"#SBATCH --exclude={bad}" in sbatch_lines(Path(attempts[1].run_dir))
        listed = json.loads(cli("nodes", "--json").stdout)
        assert [(s["node"], s["target"], s["job"]) for s in listed] == [(bad, "slurm", job_id)]
        history = cli("history", job_id).stdout
        assert "ended: node_fault" in history and f"away from node {bad}" in history, history
        later = submit(spec_file(home.parent, "oom-fallback.yaml", "after-ecc", **single,
                                 **{"entrypoint.args": ["--steps", "2", *tiny]}))
        wait_for(lambda: store.get_job(later).terminal, 240, "the later job to end")
        first = store.attempts(later)[0]
        assert store.get_job(later).state == "succeeded"
        assert f"#SBATCH --exclude={bad}" in sbatch_lines(Path(first.run_dir))
        assert sacct_nodes(str(first.external_id)) != bad
        cleared = cli("nodes", "--clear", bad)
        assert cleared.returncode == 0 and json.loads(cli("nodes", "--json").stdout) == []
        suspects = []
    finally:  # the suspect list is the store's (this test's home): nothing outlives it
        for node in suspects:
            cli("nodes", "--clear", node)


def test_a_hung_attempt_is_stopped_by_its_watchdog_and_restarted_not_left_to_the_time_limit(home: Path) -> None:
    """Rank 1 blocks at step 3 of attempt 1 (a sleep, as a deadlocked loader would); rank 0 waits for it in the
    step's collective. The watchdog the batch script starts beside srun finds no output and no progress for
    hang_after (20 s), records what it saw, takes both ranks' stacks (srun --overlap beside the step) and stops
    the step; the judge ends the attempt `hang`, saying where each rank waited, and attempt 2 resumes from step 2
    and finishes, well before the 30-minute time limit that would otherwise have ended it."""
    path = spec_file(home.parent, "oom-fallback.yaml", "hangs", **{
        "entrypoint.args": ["--steps", "5", "--dim", "32", "--heads", "2", "--layers", "1", "--vocab", "64",
                            "--checkpoint-dir", "{checkpoint_dir}", "--hang-at-step", "3", "--hang-rank", "1"],
        "resources": {"nodes": 1, "gpus_per_node": 2, "cpus_per_node": 2}, "batch": {"micro": 2, "global": 4},
        "checkpoint": {"every_steps": 2}, "resilience": {"hang_after": "20s"},
        "slurm.partition": "short", "slurm.time": "30:00"})
    job_id = submit(path)
    store = Store(home)
    t0 = time.monotonic()
    wait_for(lambda: store.get_job(job_id).terminal, 240, "the hang to be found and the job to finish")
    took = time.monotonic() - t0
    attempts = store.attempts(job_id)
    assert [(a.state, a.failure and a.failure.kind) for a in attempts] == [("failed", "hang"), ("succeeded", None)], \
        [a.failure for a in attempts]
    assert attempts[0].failure is not None
    assert attempts[0].failure.reason.startswith("hung: no output and no progress for ")
    assert "last step seen: 2" in attempts[0].failure.reason
    assert "[shardctl] hung: " in Path(attempts[0].log_path).read_text()
    reason = attempts[0].failure.reason
    assert re.search(r"rank 0 in \S+:\d+ \S+; rank 1 in \S*train_tiny\.py:\d+ hang_here", reason), reason
    assert "hang_here" not in reason.split("rank 1 in")[0]  # rank 0 waited elsewhere: in the collective
    stacks = list(Path(attempts[0].run_dir).glob("stacks-*.txt"))
    assert len(stacks) == 1 and stacks[0].read_text().count("=== rank ") == 2, stacks
    assert attempts[1].rung is None and (attempts[1].resume_from or "").startswith("step_2")
    assert took < 200, took  # minutes before the time limit


@pytest.mark.timeout(600)
def test_a_preempted_attempt_saves_on_the_notice_and_the_job_resumes_from_that_checkpoint(home: Path) -> None:
    """A real preemption (the site profile's `urgent` partition, PriorityTier 10, preempts `debug`, GraceTime 30 s):
    Slurm sends SIGTERM to every task at once; the ranks save a checkpoint at the end of their step and stop; the
    attempt is recorded as preempted and the job goes on, with the same config, from that checkpoint: no step
    done before the notice is done again. No periodic checkpoint: the notice's is the only one."""
    path = spec_file(home.parent, "oom-fallback.yaml", name="preempted", **{
        "entrypoint.args": ["--steps", "24", "--dim", "32", "--heads", "2", "--layers", "1", "--vocab", "64",
                            "--step-sleep", "0.5", "--checkpoint-dir", "{checkpoint_dir}"],
        "resources": {"nodes": 1, "gpus_per_node": 2, "memory_per_node": "4GiB"},
        "batch": {"micro": 2, "global": 4}, "checkpoint": {"every_steps": 1000}})
    job_id = submit(path)
    store = Store(home)
    log = Path(store.attempts(job_id)[0].log_path)
    wait_for(lambda: log.exists() and re.search(r"^step [6-9]/24", log.read_text(), re.MULTILINE), 240,
             "step 6 of attempt 1")
    urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-N2", "--exclusive", "--wrap", "sleep 1",
                             "-o", str(home.parent / "urgent.out")], capture_output=True, text=True, timeout=30)
    assert urgent.returncode == 0, urgent.stderr
    wait_for(lambda: store.get_job(job_id).terminal, 420, "the job to finish after its preemption")
    attempts = store.attempts(job_id)
    first = log.read_text()
    saved = re.findall(r"checkpoint requested \(terminate\): saving now", first)
    stopped = re.search(r"stopping after the checkpoint at step (\d+)", first)
    assert saved and stopped, first[-4000:]
    notice_step = int(stopped.group(1))
    assert store.get_job(job_id).state == "succeeded", [(a.number, a.state, a.failure) for a in attempts]
    assert [a.number for a in attempts] == [1, 2]
    assert attempts[0].failure is not None and attempts[0].failure.kind == "preempted", attempts[0].failure
    assert attempts[1].rung is None and attempts[1].spec["spec"] == attempts[0].spec["spec"]  # no rung spent
    text = "".join(Path(a.log_path).read_text() for a in attempts if a.log_path)
    resumed = re.findall(r"resumed from \S*step_(\d+)", text)
    assert resumed and int(resumed[-1]) == notice_step, (notice_step, resumed)
    assert text.count("no checkpoint: starting from step 0") == 1
    assert text.count("training complete") == 1


@pytest.mark.timeout(300)
def test_a_job_pending_on_a_partition_that_is_down_is_recorded_stalled_and_told_once(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partition `short` set DOWN by the administrator: the attempt pends with reason PartitionDown, which no
    amount of waiting resolves. `status` says so, the attempt records the stall once, and a webhook that asked
    for `stalled` hears it once (the CLI's inline moves queue and send it: no judge runs before the attempt)."""
    from orchestrator.notify.events import stamp_of
    from tests.notify.receiver import Receiver

    def partition(state: str) -> None:
        subprocess.run(["scontrol", "update", "partitionname=short", f"state={state}"], check=True, timeout=30,
                       capture_output=True)

    job_id = None
    with Receiver() as receiver:
        monkeypatch.setenv("TEST_STALL_URL", receiver.url + "/stall")
        path = long_job(home, "stalls", **{"slurm.partition": "short", "slurm.time": "30:00",
                                           "notify": [{"url": {"env": "TEST_STALL_URL"}, "format": "slack",
                                                       "events": ["stalled"]}]})
        partition("down")
        try:
            job_id = submit(path)
            store = Store(home)

            def stalled() -> bool:
                cli("status", job_id)
                return store.attempts(job_id)[0].stalled is not None
            wait_for(stalled, 90, "the attempt to be recorded stalled")
            attempt = store.attempts(job_id)[0]
            assert "PartitionDown" in (attempt.stalled or "") and attempt.stalled_at is not None
            assert "PENDING (PartitionDown)" in cli("status", job_id).stdout
            wait_for(lambda: any(r.accepted for r in receiver.requests), 60, "the stall to be told")
            for _ in range(2):  # read again: nothing is told twice
                cli("status", job_id)
            [told] = [r for r in receiver.requests if r.accepted]
            stamp = stamp_of(store.get_job(job_id).created_at)
            assert told.path == "/stall" and told.key == f"shardctl-{job_id}-{stamp}-stalled-1", told
            assert "attempt 1 is stalled" in told.json()["text"] and "PartitionDown" in told.json()["text"]
        finally:
            partition("up")
            if job_id is not None:
                cancel_and_check(job_id, Store(home))
