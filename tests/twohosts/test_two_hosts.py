"""The job store shared by two hosts through one network filesystem (scripts/twohosts).

Two worker processes, one per host (each through its own sshfs client: its own caches, its own
lock table, so an flock on one host does not exclude the other), make the supervisor's moves on
the same 20 jobs at once. The acceptance test: 200 moves from each side end with every job's
attempts numbered 1..n without gaps or duplicates, each attempt won by exactly one claim, every
end and every finish recorded once and never overwritten, nothing any worker was told is written
lost (tests/twohosts/check.py). The same run on the old SQLite store must break those rules: that
is this test's proof that it can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.spec.states import AttemptState, JobState
from orchestrator.supervise.supervisor import job_to_json
from tests.helpers import job
from tests.twohosts.check import Verdict, check, check_reads
from tests.twohosts.conftest import TwoHosts
from tests.twohosts.worker import open_store, read_log

REPO = Path(__file__).parents[2]
JOBS = 20
MOVES = 200
CREATE_S = 30


# The SQLite negative controls (the legacy store, tests/store/legacy_sqlite_store.py): deselected unless
# SHARDCTL_SQLITE_CONTROLS=1 (tests/conftest.py).
LEGACY = pytest.param("legacy", marks=[pytest.mark.sqlite_control, pytest.mark.timeout(1800)])


@dataclass
class Storm:
    """One run of both workers: where everything is, and what came of it."""

    hosts: TwoHosts
    kind: str
    root: str
    work: Path
    jobs: list[str]

    def worker(self, side: str, mode: str = "moves", *extra: str, host: str | None = None) -> subprocess.Popen:
        """Worker `side` ("A" or "B"), run on its own host unless `host` names another."""
        argv = [sys.executable, "-m", "tests.twohosts.worker", mode, "--store", self.kind, "--root", self.root,
                "--jobs", str(self.work / "jobs.json"), "--log", str(self.work / f"{side}.log"), "--name", side,
                "--go", str(self.work / "go"), *extra]
        return subprocess.Popen(self.hosts.command(host or side, argv), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def logs(self) -> list[dict[str, Any]]:
        return [e for side in ("A", "B") for e in read_log(str(self.work / f"{side}.log"))]

    def final_store(self) -> Any:
        """The store read back without either client's cache (the server's view), when the rig says where."""
        view = self.hosts.server_view(self.root)
        if view is None:
            time.sleep(21)  # sshfs's directory cache (dcache_timeout=20 s) has expired
        return open_store(self.kind, str(view or self.root))

    def verdict(self) -> Verdict:
        return check(self.final_store(), self.jobs, self.logs())


def new_storm(hosts: TwoHosts, kind: str, work: Path, spec: dict | None = None) -> Storm:
    """JOBS jobs created on host A, in a fresh store root on the shared filesystem (in a process of its
    own, with a time limit: a store that cannot write through the rig must fail here, not hang)."""
    root = hosts.fresh_dir(f"store-{kind}")
    storm = Storm(hosts, kind, root, work, [])
    (work / "spec.json").write_text(json.dumps(spec or {"kind": "TrainingJob", "metadata": {"name": "storm"}}))
    argv = [sys.executable, "-m", "tests.twohosts.worker", "create", "--store", kind, "--root", root,
            "--jobs", str(work / "jobs.json"), "--log", str(work / "create.log"), "--name", "A",
            "--spec", str(work / "spec.json"), "--count", str(JOBS)]
    try:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=CREATE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"creating {JOBS} jobs in the {kind} store through {hosts.a} took over {CREATE_S} s")
    assert done.returncode == 0, done.stdout + done.stderr
    storm.jobs = json.loads((work / "jobs.json").read_text())
    return storm


def finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    """The worker's output once it exits; past `timeout` it is killed and the test fails."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"a worker ran over {timeout} s:\n{out[-2000:]}")
    return out


def run_storm(hosts: TwoHosts, kind: str, work: Path, one_host: bool = False) -> tuple[Storm, float]:
    """Both workers at once, each on its own host (or both on host A, with `one_host`)."""
    work.mkdir(parents=True, exist_ok=True)
    storm = new_storm(hosts, kind, work)
    procs = [storm.worker(side, "moves", "--moves", str(MOVES), host="A" if one_host else side) for side in ("A", "B")]
    time.sleep(0.5)  # both have opened the store and wait for the go
    t0 = time.monotonic()
    (work / "go").touch()
    for p in procs:
        finish(p)
    return storm, time.monotonic() - t0


def moves_made(storm: Storm) -> dict[str, dict[str, int]]:
    return {e["w"]: e["counts"] for e in storm.logs() if e["ev"] == "stop"}


@pytest.mark.parametrize("kind", ["new", LEGACY])
def test_200_concurrent_moves_from_each_host_lose_and_repeat_nothing(two_hosts: TwoHosts, tmp_path: Path,
                                                                     kind: str) -> None:
    """On the new store the checker finds nothing; on the SQLite store it must find something (its
    locks do not cross hosts), which is the proof that this test can fail. A lucky interleaving can
    pass once, so the legacy side gets three runs."""
    for run in range(1 if kind == "new" else 3):
        storm, seconds = run_storm(two_hosts, kind, tmp_path / f"run{run}")
        verdict = storm.verdict()
        counts = moves_made(storm)
        print(f"{kind} store, run {run + 1}: 2 x {MOVES} moves in {seconds:.1f} s; {counts}; {verdict.info}; "
              f"{len(verdict.violations)} violations, {len(verdict.errors)} worker errors\n{verdict.summary(8)}")
        if kind == "legacy":
            if not verdict.clean:
                return
            continue
        assert verdict.clean, verdict.summary()
        assert sorted(counts) == ["A", "B"] and all(sum(c.values()) == MOVES for c in counts.values())
        # the run really raced: both hosts won attempts of the same jobs
        owners: dict[str, set[str]] = {}
        for e in storm.logs():
            if e["ev"] == "claim-won":
                owners.setdefault(e["job"], set()).add(e["w"])
        assert any(len(w) == 2 for w in owners.values()), owners
    if kind == "legacy":
        pytest.fail("the SQLite store passed three two-host runs: this checker cannot tell a broken store")


@pytest.mark.sqlite_control
def test_the_checker_passes_the_sqlite_store_on_one_host(two_hosts: TwoHosts, tmp_path: Path) -> None:
    """The control: the same two workers on ONE host share its lock table, where SQLite is correct; the
    checker then finds nothing, so what it finds across two hosts is the hosts' doing, not its own."""
    storm, seconds = run_storm(two_hosts, "legacy", tmp_path, one_host=True)
    verdict = storm.verdict()
    print(f"legacy store on one host: {seconds:.1f} s; {moves_made(storm)}; {verdict.info}")
    assert verdict.clean, verdict.summary()
    writers = {e["w"] for e in storm.logs() if e["ev"].endswith("-done")}
    assert writers == {"A", "B"}  # both wrote: the run was not one worker alone


def test_a_host_killed_mid_run_is_replaced_and_the_jobs_end_consistently(two_hosts: TwoHosts,
                                                                          tmp_path: Path) -> None:
    """Host B's worker is SIGKILLed mid-run while A goes on; B restarted (its claims recovered from
    its own log, as a supervisor's from its target) and A then drive every job to its end: the
    checker finds nothing, every job and every attempt has ended."""
    storm = new_storm(two_hosts, "new", tmp_path)
    a = storm.worker("A", "moves", "--moves", str(MOVES), "--drain")
    b = storm.worker("B", "moves", "--moves", str(MOVES))
    time.sleep(0.5)
    (tmp_path / "go").touch()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(e["ev"].endswith("-done") for e in read_log(
            str(tmp_path / "B.log"))) < 40:
        time.sleep(0.05)
    b.send_signal(signal.SIGKILL)  # mid-run, mid-write as likely as not
    b.wait()
    assert b.returncode == -signal.SIGKILL
    killed_at = len(read_log(str(tmp_path / "B.log")))
    b2 = storm.worker("B", "moves", "--moves", str(MOVES), "--drain")  # the restarted host B
    out_a, out_b2 = finish(a), finish(b2)
    assert a.returncode == 0 and b2.returncode == 0, out_a + out_b2
    verdict = storm.verdict()
    print(f"killed B after {killed_at} log lines; then {moves_made(storm)}; {verdict.info}")
    assert verdict.clean, verdict.summary()
    store = storm.final_store()
    assert all(store.get_job(j).terminal for j in storm.jobs)
    assert all(a.ended for j in storm.jobs for a in store.attempts(j))
    recovered = [e for e in read_log(str(tmp_path / "B.log"))[killed_at:] if e["ev"] == "recovered"]
    assert recovered, "the restarted worker did not read its log"


@pytest.mark.parametrize("kind", ["new", LEGACY])
def test_real_supervisors_on_both_hosts_submit_each_attempt_once(two_hosts: TwoHosts, tmp_path: Path,
                                                                 kind: str) -> None:
    """Supervisor.advance() from both hosts at once on the same 20 jobs (attempt 1 dies of host OOM,
    attempt 2 succeeds): each attempt is submitted once and every job ends as the policy says. Its
    per-job flock does not cross hosts, so only the store can keep them apart; on the SQLite store
    they submit attempts twice (asserted: this test can fail)."""
    spec = job_to_json(job(backend="deepspeed", sharding="grad_op", batch={"micro": 8, "global": 16},
                           resources={"gpus_per_node": 2}))
    for run in range(1 if kind == "new" else 3):
        work = tmp_path / f"run{run}"
        work.mkdir()
        storm = new_storm(two_hosts, kind, work, spec=spec)
        procs = [storm.worker(side, "supervise", "--targets", str(work)) for side in ("A", "B")]
        time.sleep(0.5)
        t0 = time.monotonic()
        (work / "go").touch()
        outs = [finish(p) for p in procs]
        lines = (work / "submissions.log").read_text().splitlines()
        submits = [json.loads(line) for line in lines if '"submit"' in line]
        problems = _supervised_problems(storm, submits) + [e["error"] for e in storm.logs() if e["ev"] == "error"]
        print(f"{kind}: both supervisors done in {time.monotonic() - t0:.1f} s, {len(submits)} submissions, "
              f"{len(problems)} problems")
        if kind == "legacy":
            if problems:
                return
            continue
        assert not problems, "\n".join(problems[:12]) + "\n" + "\n".join(outs)
        assert {s["host"] for s in submits} == {"A", "B"}  # both hosts really drove the jobs
    if kind == "legacy":
        pytest.fail("two supervisors on the SQLite store made no mistake in three runs: this test cannot fail")


def _supervised_problems(storm: Storm, submits: list[dict[str, Any]]) -> list[str]:
    problems = []
    store = storm.final_store()
    per_attempt: dict[tuple[str, int], list[str]] = {}
    for s in submits:
        per_attempt.setdefault((s["job"], s["n"]), []).append(s["host"])
    for (job_id, n), hosts in sorted(per_attempt.items()):
        if len(hosts) != 1:
            problems.append(f"job {job_id}: attempt {n} submitted {len(hosts)} times (by {', '.join(hosts)})")
    for job_id in storm.jobs:
        try:
            record, attempts = store.get_job(job_id), store.attempts(job_id)
        except Exception as exc:
            problems.append(f"job {job_id}: unreadable: {exc}")
            continue
        states = [(a.number, a.state, a.failure and a.failure.kind) for a in attempts]
        if record.state != JobState.SUCCEEDED or states != [(1, AttemptState.FAILED, "host_oom"),
                                                            (2, AttemptState.SUCCEEDED, None)]:
            problems.append(f"job {job_id}: {record.state} ({record.reason}) with attempts {states}")
        elif attempts[1].rung != "shard_more":
            problems.append(f"job {job_id}: attempt 2 came from rung {attempts[1].rung}, not shard_more")
    return problems


@pytest.mark.timeout(300)
def test_two_hosts_listing_and_finishing_jobs_at_once_give_the_answers_of_one(two_hosts: TwoHosts,
                                                                               tmp_path: Path) -> None:
    """Both hosts end and finish the same 20 running jobs (each once) while listing the store as `list` and
    `status` do, so both build its caches at once (the index, every ended job's summary and view). Then each
    host's answers, read through those caches, are the answers of the records alone: a copy of the store
    without its caches, read on one host."""
    spec = job_to_json(job(backend="deepspeed", sharding="grad_op", batch={"micro": 8, "global": 16}))
    storm = new_storm(two_hosts, "new", tmp_path, spec=spec)
    store = open_store("new", storm.root)
    for j in storm.jobs:
        store.add_attempt(j, 1, spec=spec, rung=None, reason="first", run_dir=f"/runs/{j}",
                          log_path=f"/runs/{j}/output.log", artifacts={}, warnings=[], resume_from=None)
        store.start_attempt(j, 1, external_id=f"ext-{j}", started_at=time.time())
    procs = [storm.worker(side, "reads", "--seed", str(seed)) for seed, side in enumerate("AB")]
    time.sleep(0.5)
    (tmp_path / "go").touch()
    outs = [finish(p) for p in procs]
    time.sleep(21)  # sshfs's directory cache (dcache_timeout=20 s) has expired: each host lists what the other wrote
    answers = {side: _answers(two_hosts, side, storm.root, tmp_path) for side in ("A", "B")}
    records = tmp_path / "records"
    shutil.copytree(two_hosts.server_view(storm.root) or storm.root, records)  # mtimes kept: the same fingerprints
    shutil.rmtree(records / "index", ignore_errors=True)
    for cache in [*records.glob("jobs/*/summary-v*"), *records.glob("jobs/*/view-v*")]:
        cache.unlink()
    truth = _answers(two_hosts, "A", str(records), tmp_path)
    verdict = check_reads(storm.jobs, storm.logs(), answers, truth)
    cached = len(list((two_hosts.server_view(storm.root) or Path(storm.root)).glob("jobs/*/summary-v*")))
    print(f"{verdict.info}; {cached} summaries written; {len(verdict.violations)} violations")
    assert verdict.clean, verdict.summary() + "\n" + "\n".join(outs)
    assert cached >= len(storm.jobs) and len(truth["list"]) == len(storm.jobs)


def _answers(hosts: TwoHosts, side: str, root: str, work: Path) -> dict[str, Any]:
    out = work / f"answers-{side}-{Path(root).name}.json"
    argv = [sys.executable, "-m", "tests.twohosts.worker", "answers", "--store", "new", "--root", root, "--jobs",
            str(work / "jobs.json"), "--log", str(out), "--name", side]
    done = subprocess.run(hosts.command(side, argv), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())


def test_a_record_is_published_once_across_the_hosts(two_hosts: TwoHosts) -> None:
    """The store's one claim primitive, through two clients: the first link wins and is told so, the
    other host's link onto the same name loses and is told so, and the winner's content stands."""
    from orchestrator.procfiles import publish_once

    shared = two_hosts.fresh_dir("publish")
    side_b = Path(shared.replace(str(two_hosts.a), str(two_hosts.b), 1))
    assert publish_once(Path(shared), "claim.json", "A\n") is True
    assert publish_once(side_b, "claim.json", "B\n") is False
    assert (side_b / "claim.json").read_text() == "A\n"
    assert publish_once(side_b, "other.json", "B\n") is True


def test_the_rig_shares_files_but_not_locks(two_hosts: TwoHosts) -> None:
    """What the tests above rely on: the other host sees a file at once, and does not see its flock."""
    import fcntl

    shared = two_hosts.fresh_dir("rig")
    side_b = Path(shared.replace(str(two_hosts.a), str(two_hosts.b), 1))
    (Path(shared) / "note").write_text("from A")
    assert (side_b / "note").read_text() == "from A"
    with open(Path(shared) / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with open(side_b / "lock") as other:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise BlockingIOError on one host
        with open(Path(shared) / "lock") as same, pytest.raises(BlockingIOError):
            fcntl.flock(same, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (Path(shared) / "claimed").write_text("A")
    (side_b / "mine").write_text("B")
    with pytest.raises(FileExistsError):
        os.link(side_b / "mine", side_b / "claimed")
    assert (Path(shared) / "claimed").read_text() == "A"
