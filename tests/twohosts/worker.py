"""One host's executor, as a process: moves on shared jobs through the public store API.

    python -m tests.twohosts.worker moves --store new|legacy --root DIR --jobs FILE --log FILE
        --name A --moves 200 [--drain] [--seed N] [--go FILE]
    python -m tests.twohosts.worker supervise --store new|legacy --root DIR --jobs FILE --log FILE
        --name A --targets DIR [--go FILE] [--deadline S]

`moves` makes the supervisor's moves by hand (read the job and its attempts; claim the next attempt
with add_attempt, StoreError meaning the other host claimed it; mark it running; end it once; ask
for a cancel; finish the job), so two of these, one per host, race on every kind of write the
store takes. Every write is logged to --log (local disk, not the shared filesystem) twice: "do"
with the exact values before the call and "done" after it returns; tests/twohosts/check.py then
judges the store's final state against both hosts' logs. The attempt's `reason` carries a token
unique to that claim, so the store's record names who won it.

A restarted worker (same --name and --log) first reads its own log to find the attempts it claimed,
as a restarted supervisor asks the target's `recover`, and carries on with them.

`reads` ends and finishes every job once from both hosts while listing the store as `shardctl list` and `status`
do, so that both hosts build the store's caches at once (tests/twohosts/check.py `check_reads` judges them).

`create` makes the jobs (on host A, before the others start). `supervise` runs the real
Supervisor.advance() over every job until all have ended, with a target whose submissions are
files on local disk (one shared scheduler both hosts talk to).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from orchestrator.errors import StoreError
from orchestrator.spec.failure import Failure
from orchestrator.spec.states import AttemptState

MAX_ATTEMPTS = 8
FAILURE_KINDS = ("host_oom", "cuda_oom", "preempted", "timeout")


def open_store(kind: str, root: str) -> Any:
    """The store under test, by name: today's orchestrator.store.Store or the legacy SQLite one."""
    if kind == "legacy":
        from tests.store.legacy_sqlite_store import LegacySqliteStore

        return LegacySqliteStore(Path(root))
    from orchestrator.store.jobstore import Store

    return Store(Path(root))


class Log:
    """JSON lines, one os.write each (O_APPEND): a line is whole even if the process is killed."""

    def __init__(self, path: str, name: str) -> None:
        self.name = name
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(self, ev: str, **fields: Any) -> None:
        line = json.dumps({"ev": ev, "w": self.name, "t": time.time(), **fields}) + "\n"
        os.write(self.fd, line.encode())


def read_log(path: str) -> list[dict[str, Any]]:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def wait_for_go(go: str | None) -> None:
    """Both hosts start together: each waits for the test to create the go file."""
    while go and not os.path.exists(go):
        time.sleep(0.01)


class Mover:
    """The moves one host makes; `mine` maps (job, number) -> token for the attempts it claimed."""

    def __init__(self, store: Any, jobs: list[str], log: Log, rng: random.Random) -> None:
        self.store, self.jobs, self.log, self.rng = store, jobs, log, rng
        self.mine: dict[tuple[str, int], str] = {}
        self.ended: set[tuple[str, int]] = set()

    def recover(self, entries: list[dict[str, Any]]) -> None:
        """After a restart: the claims this host tried whose record names its token are its own."""
        for e in entries:  # (an end logged but perhaps never written: the store says whether it was)
            if e["ev"] == "claim-do":
                attempts = self.store.attempts(e["job"])
                if len(attempts) >= e["n"] and e["token"] in attempts[e["n"] - 1].reason:
                    self.mine[(e["job"], e["n"])] = e["token"]
                    if attempts[e["n"] - 1].ended:
                        self.ended.add((e["job"], e["n"]))
        self.log("recovered", claims=sorted(f"{j}/{n}" for j, n in self.mine))

    def open_claims(self) -> list[str]:
        return sorted({job_id for (job_id, n) in self.mine if (job_id, n) not in self.ended})

    def drained(self) -> bool:
        """Nothing left for this host: every job ended, and every attempt it claimed too."""
        return not self.open_claims() and all(self.store.get_job(j).terminal for j in self.jobs)

    def pick(self) -> str:
        """Half the time the first unfinished job (both hosts then race on it), else any job; an
        attempt of its own still open is looked at first now and then."""
        own = self.open_claims()
        if own and self.rng.random() < 0.3:
            return self.rng.choice(own)
        if self.rng.random() < 0.5:
            return self.jobs[self.rng.randrange(len(self.jobs))]
        for job_id in self.jobs:
            if not self.store.get_job(job_id).terminal:
                return job_id
        return self.jobs[0]

    def move(self) -> str:
        job_id = self.pick()
        job = self.store.get_job(job_id)
        attempts = self.store.attempts(job_id)
        if self.rng.random() < 0.1:
            listed = {j.id for j in self.store.list_jobs()}
            missing = sorted(set(self.jobs) - listed)
            if missing:
                self.log("list-missed", jobs=missing)
        last = attempts[-1] if attempts else None
        if last is not None and not last.ended and (job_id, last.number) in self.mine:
            return self.own_open(job, last)
        if job.terminal:
            return "read"
        if self.rng.random() < 0.01:
            self.log("cancel-do", job=job_id)
            self.store.request_cancel(job_id)
            self.log("cancel-done", job=job_id)
            return "cancel"
        if last is not None and not last.ended:
            return "wait"  # the other host's attempt: it ends it
        decision = self.decide(job, last)
        if decision is not None:
            state, reason = decision
            token = secrets.token_hex(6)
            reason = f"{reason} [{self.log.name} {token}]"
            self.log("finish-do", job=job_id, state=state, reason=reason)
            self.store.finish_job(job_id, state, reason)
            self.log("finish-done", job=job_id, state=state, reason=reason)
            return "finish"
        return self.claim(job_id, 1 if last is None else last.number + 1)

    def decide(self, job: Any, last: Any) -> tuple[str, str] | None:
        """What next_move decides once the last attempt has ended: finish, or None for the next attempt."""
        if last is not None and last.state == "succeeded":
            return "succeeded", f"attempt {last.number} succeeded"
        if job.cancel_requested:
            return "cancelled", "cancelled by the user"
        if last is not None and last.number >= MAX_ATTEMPTS:
            return "failed", f"attempt {last.number} failed: no rung left"
        return None

    def claim(self, job_id: str, number: int) -> str:
        token = secrets.token_hex(6)
        self.log("claim-do", job=job_id, n=number, token=token)
        try:
            self.store.add_attempt(job_id, number, spec={"n": number}, rung=None,
                                   reason=f"claimed by {self.log.name} [{token}]", run_dir=f"/runs/{job_id}/{number}",
                                   log_path=f"/runs/{job_id}/{number}/output.log", artifacts={}, warnings=[],
                                   resume_from=None)
        except StoreError as exc:
            self.log("claim-lost", job=job_id, n=number, token=token, error=str(exc))
            return "lost"
        self.log("claim-won", job=job_id, n=number, token=token)
        self.mine[(job_id, number)] = token
        external_id = f"ext-{token}"  # submitted, then recorded: the supervisor's launch()
        self.log("running-do", job=job_id, n=number, external_id=external_id)
        self.store.start_attempt(job_id, number, external_id=external_id, started_at=time.time())
        self.log("running-done", job=job_id, n=number, external_id=external_id)
        return "claim"

    def own_open(self, job: Any, attempt: Any) -> str:
        """An attempt this host claimed and has not ended: record its end now and then, once."""
        key = (job.id, attempt.number)
        if attempt.state == "starting":  # killed between the claim and marking it running
            external_id = f"ext-{self.mine[key]}"
            self.log("running-do", job=job.id, n=attempt.number, external_id=external_id)
            self.store.start_attempt(job.id, attempt.number, external_id=external_id, started_at=time.time())
            self.log("running-done", job=job.id, n=attempt.number, external_id=external_id)
            return "adopt"
        if key in self.ended or attempt.ended:
            return "read"
        if not (job.terminal or job.cancel_requested) and self.rng.random() < 0.6:
            return "wait"  # still running
        if job.terminal or job.cancel_requested:
            state, kind = "cancelled", "cancelled"
        elif self.rng.random() < 0.15:
            state, kind = "succeeded", None
        else:
            state, kind = "failed", self.rng.choice(FAILURE_KINDS)
        ended_at = time.time()
        self.log("end-do", job=job.id, n=attempt.number, state=state, failure_kind=kind, ended_at=ended_at)
        self.ended.add(key)
        failure = Failure(kind, f"{state} [{self.log.name}]") if kind else None
        recorded = self.store.end_attempt(job.id, attempt.number, state, failure, ended_at=ended_at)
        self.log("end-done", job=job.id, n=attempt.number, state=state, failure_kind=kind, ended_at=ended_at,
                 recorded=recorded is not False)
        return "end"


def run_moves(args: argparse.Namespace) -> int:
    log = Log(args.log, args.name)
    jobs = json.loads(Path(args.jobs).read_text())
    earlier = read_log(args.log)
    store = open_store(args.store, args.root)
    mover = Mover(store, jobs, log, random.Random(args.seed))
    if earlier:
        mover.recover(earlier)
    wait_for_go(args.go)
    log("start", pid=os.getpid())
    errors = 0
    counts: dict[str, int] = {}
    made = 0
    while made < args.moves or (args.drain and made < args.moves + 5000 and not mover.drained()):
        made += 1
        try:
            kind = mover.move()
        except Exception as exc:  # the legacy store on a shared filesystem: "database disk image is malformed"
            errors += 1
            kind = "error"
            log("error", error=f"{type(exc).__name__}: {exc}", tb=traceback.format_exc(limit=3))
            if errors >= 20:
                break
        counts[kind] = counts.get(kind, 0) + 1
    log("stop", counts=counts, errors=errors)
    return 1 if errors else 0


def run_reads(args: argparse.Namespace) -> int:
    """Both hosts end and finish the same open jobs (each once: the store says who won) while listing the store the
    way `shardctl list` and `status` do, so both build its caches (the index, ended jobs' summaries and views) at
    the same time. Every listing is logged: a job missing from one is a violation."""
    from orchestrator.views.ended import at_rest, ended_view

    log = Log(args.log, args.name)
    jobs = json.loads(Path(args.jobs).read_text())
    store = open_store(args.store, args.root)
    order = list(jobs)
    random.Random(args.seed).shuffle(order)
    wait_for_go(args.go)
    log("start", pid=os.getpid())
    errors = 0
    for job_id in order:
        try:
            listed = {j.id for j in store.list_jobs()}
            if set(jobs) - listed:
                log("list-missed", jobs=sorted(set(jobs) - listed))
            newest = [ended_view(store, r)["id"] if at_rest(r) else r.id for r in store.list_jobs(5)]  # as `list`
            log("newest", ids=newest)
            ended = store.end_attempt(job_id, 1, AttemptState.SUCCEEDED, None, ended_at=time.time(), exit_code=0)
            finished = store.finish_job(job_id, "succeeded", f"attempt 1 succeeded [{args.name}]")
            log("finish-done", job=job_id, ended=ended, finished=finished)
            record = store.resolve(job_id)
            if at_rest(record):
                ended_view(store, record)
        except Exception as exc:
            errors += 1
            log("error", error=f"{type(exc).__name__}: {exc}", tb=traceback.format_exc(limit=3))
    log("stop", errors=errors)
    return 1 if errors else 0


def run_answers(args: argparse.Namespace) -> int:
    """What this host's reads answer now, as JSON in --log: every job and attempt, the listing, the newest views."""
    import dataclasses

    from orchestrator.views.ended import at_rest, ended_view

    jobs = json.loads(Path(args.jobs).read_text())
    store = open_store(args.store, args.root)
    records = {j: [dataclasses.asdict(store.resolve(j)), [dataclasses.asdict(a) for a in store.attempts(j)]]
               for j in jobs}
    answers = {"list": [[j.id, j.state, j.reason] for j in store.list_jobs()], "records": records,
               "newest": [ended_view(store, r) if at_rest(r) else r.id for r in store.list_jobs(5)],
               "named": store.resolve("storm-3").id}
    Path(args.log).write_text(json.dumps(answers, sort_keys=True, default=str))
    return 0


def run_create(args: argparse.Namespace) -> int:
    """The jobs both hosts will move, created on this host; their ids go to --jobs."""
    store = open_store(args.store, args.root)
    spec = json.loads(Path(args.spec).read_text())
    jobs = [store.create_job(name=f"storm-{i}", target="twohosts", spec=spec, source=None,
                             workdir=str(Path(args.jobs).parent), checkpoint_dir=None).id for i in range(args.count)]
    Path(args.jobs).write_text(json.dumps(jobs))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.twohosts.worker")
    parser.add_argument("mode", choices=["create", "moves", "supervise", "reads", "answers"])
    parser.add_argument("--store", choices=["new", "legacy"], required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--moves", type=int, default=200)
    parser.add_argument("--drain", action="store_true", help="after --moves, go on until every job has ended")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--go")
    parser.add_argument("--targets")
    parser.add_argument("--spec")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.mode == "create":
        return run_create(args)
    if args.mode == "moves":
        return run_moves(args)
    if args.mode == "reads":
        return run_reads(args)
    if args.mode == "answers":
        return run_answers(args)
    from tests.twohosts.supervise import run_supervise

    return run_supervise(args, open_store(args.store, args.root), Log(args.log, args.name))


if __name__ == "__main__":
    sys.exit(main())
