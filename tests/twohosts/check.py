"""Judges a store's final state against the logs of the hosts that wrote it (tests/twohosts/worker.py).

Every write a worker made is logged as "do" (before the call, with the exact values) and "done"
(after it returned), so a worker killed mid-call leaves a "do" without "done": that write may or
may not have happened, and either is accepted. What must hold, per job:
- its attempts are numbered 1..n, no gap, no duplicate;
- each attempt names (by the token in its reason) exactly one logged claim, and no two workers
  were told they won the same number; every claim a worker was told it won is in the store;
- only the winner wrote the attempt's running mark and end, and the record holds exactly the last
  of those writes (an end is never overwritten, nothing the winner was told is written is lost);
- a job that was finished holds one of the logged endings, and never one that started after
  another had already been recorded (the first ending is kept); a logged finish is never lost;
- a cancel request that was recorded is never lost.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

TOKEN = re.compile(r"\[(?:\S+ )?([0-9a-f]{12})\]")


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # what the workers' store calls raised
    info: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.violations and not self.errors

    def summary(self, limit: int = 12) -> str:
        lines = self.violations[:limit] + [f"worker error: {e}" for e in self.errors[:limit]]
        more = len(self.violations) + len(self.errors) - len(lines)
        return "\n".join(lines + ([f"... and {more} more"] if more > 0 else []))


def _token(text: str | None) -> str | None:
    m = TOKEN.search(text or "")
    return m.group(1) if m else None


def check(store: Any, jobs: list[str], logs: list[dict[str, Any]]) -> Verdict:
    """The store as it is now, the jobs the workers moved, and every worker's log lines together."""
    v = Verdict()
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in logs:
        if e["ev"] == "error":
            v.errors.append(f"{e['w']}: {e['error']}")
        elif e["ev"] == "list-missed":
            v.info["list_jobs missed a job"] = v.info.get("list_jobs missed a job", 0) + 1
        elif e["ev"] == "claim-lost" and "already has attempt" not in e["error"]:
            # a lost claim the store reported as another failure (sshfs answers a lost link race with EPERM)
            v.info["claims lost with another error"] = v.info.get("claims lost with another error", 0) + 1
        elif "job" in e:
            by_job[e["job"]].append(e)
    for job_id in jobs:
        try:
            record = store.get_job(job_id)
            attempts = store.attempts(job_id)
        except Exception as exc:  # a store that cannot even be read back has lost everything
            v.violations.append(f"job {job_id}: unreadable: {type(exc).__name__}: {exc}")
            continue
        _check_job(v, job_id, record, attempts, sorted(by_job[job_id], key=lambda e: e["t"]))
    return v


def _check_job(v: Verdict, job_id: str, record: Any, attempts: list[Any], events: list[dict[str, Any]]) -> None:
    numbers = [a.number for a in attempts]
    if numbers != list(range(1, len(numbers) + 1)):
        v.violations.append(f"job {job_id}: attempts numbered {numbers}, not 1..{len(numbers)}")
    claims = {e["token"]: e for e in events if e["ev"] == "claim-do"}
    won: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["ev"] == "claim-won":
            won[e["n"]].append(e)
    stored = {a.number: a for a in attempts}
    for n, winners in sorted(won.items()):
        if len(winners) > 1:
            v.violations.append(f"job {job_id}: attempt {n} won by {len(winners)} claims: "
                                f"{', '.join(w['w'] + ' ' + w['token'] for w in winners)}")
        for w in winners:
            if n not in stored:
                v.violations.append(f"job {job_id}: attempt {n} won by {w['w']} ({w['token']}) is not in the store")
            elif _token(stored[n].reason) != w["token"]:
                v.violations.append(f"job {job_id}: attempt {n} won by {w['w']} ({w['token']}) holds another "
                                    f"claim: {stored[n].reason!r}")
    for a in attempts:
        token = _token(a.reason)
        claim = claims.get(token or "")
        if claim is None or claim["n"] != a.number:
            v.violations.append(f"job {job_id}: attempt {a.number} ({a.reason!r}) matches no logged claim")
            continue
        _check_attempt(v, job_id, a, claim["w"], [e for e in events if e.get("n") == a.number])
    _check_finish(v, job_id, record, events, attempts)
    if any(e["ev"] == "cancel-done" for e in events) and not record.cancel_requested:
        v.violations.append(f"job {job_id}: a recorded cancel request was lost")


def _check_attempt(v: Verdict, job_id: str, a: Any, winner: str, events: list[dict[str, Any]]) -> None:
    where = f"job {job_id}: attempt {a.number}"
    writes = [e for e in events if e["ev"] in ("running-do", "running-done", "end-do", "end-done")]
    others = {e["w"] for e in writes} - {winner}
    if others:
        v.violations.append(f"{where}: written by {sorted(others)} though {winner} won it")
    # An end is written once, except by a worker killed between logging it and being told it was
    # written: its restart cannot know whether it landed unless the store shows it, and writes it
    # again (the store keeps the first). Two ends the store said it recorded are always wrong.
    ends = [e for e in writes if e["ev"] == "end-do"]
    told = [e for e in writes if e["ev"] == "end-done"]
    unanswered = [e for e in ends if not any(d["w"] == e["w"] and d["ended_at"] == e["ended_at"] for d in told)]
    rewritten_after_kill = [e for e in unanswered if any(o["t"] > e["t"] for o in ends)]
    if len(ends) - len(rewritten_after_kill) > 1:
        v.violations.append(f"{where}: its end was written {len(ends)} times")
    recorded = [e for e in told if e.get("recorded", True)]
    if len(recorded) > 1:
        v.violations.append(f"{where}: its end was recorded {len(recorded)} times (the first must stand)")
    # the last write the winner was told is done, and whether one more may have happened after it
    done = [e for e in writes if e["ev"].endswith("-done")]
    pending = [e for e in writes if e["ev"].endswith("-do") and not any(
        d["ev"] == e["ev"][:-2] + "done" and d["t"] >= e["t"] and d["w"] == e["w"] and _same_write(d, e)
        for d in done)]
    candidates = ([done[-1]] if done else [None]) + pending[-1:]
    if not any(_matches(a, c) for c in candidates):
        want = " or ".join(_describe(c) for c in candidates)
        v.violations.append(f"{where}: holds state={a.state} external_id={a.external_id} "
                            f"failure_kind={_kind(a)} ended_at={a.ended_at}; its winner wrote {want}")


def _same_write(done: dict[str, Any], do: dict[str, Any]) -> bool:
    """A "done" answers the "do" with the same values (a restarted worker logs under the same name)."""
    keys = ("external_id",) if do["ev"].startswith("running") else ("state", "failure_kind", "ended_at")
    return all(done.get(k) == do.get(k) for k in keys)


def _matches(a: Any, e: dict[str, Any] | None) -> bool:
    if e is None:
        return a.state == "starting" and a.external_id is None
    if e["ev"].startswith("running"):
        return a.state == "running" and a.external_id == e["external_id"] and a.ended_at is None
    return (a.state == e["state"] and _kind(a) == e["failure_kind"] and a.ended_at == e["ended_at"]
            and a.external_id is not None)


def _kind(a: Any) -> str | None:
    return a.failure.kind if a.failure else None


def _describe(e: dict[str, Any] | None) -> str:
    if e is None:
        return "nothing (starting)"
    if e["ev"].startswith("running"):
        return f"running {e['external_id']}"
    return f"{e['state']} {e['failure_kind']} at {e['ended_at']}"


def _check_finish(v: Verdict, job_id: str, record: Any, events: list[dict[str, Any]], attempts: list[Any]) -> None:
    tries = [e for e in events if e["ev"] == "finish-do"]
    done = [e for e in events if e["ev"] == "finish-done"]
    if not record.terminal:
        if done:
            v.violations.append(f"job {job_id}: finished by {done[0]['w']} ({done[0]['state']}) but the store "
                                f"says {record.state}: the finish was lost")
        return
    chosen = [e for e in tries if e["reason"] == record.reason and e["state"] == record.state]
    if not chosen:
        v.violations.append(f"job {job_id}: ended {record.state} ({record.reason!r}), which no worker wrote")
        return
    start = chosen[0]["t"]
    earlier = [d for d in done if d["t"] < start and d["reason"] != record.reason]
    if earlier:
        v.violations.append(f"job {job_id}: its ending {record.reason!r} replaced {earlier[0]['reason']!r}, "
                            "recorded before it was written")
    finished_at = min(d["t"] for d in done) if done else start
    late = [e for e in events if e["ev"] == "claim-won" and e["t"] > finished_at]
    if late:
        v.info["attempts claimed after their job finished"] = (
            v.info.get("attempts claimed after their job finished", 0) + len(late))
    if record.state == "succeeded" and (not attempts or attempts[-1].state != "succeeded"):
        if not any(a.state == "succeeded" for a in attempts):
            v.violations.append(f"job {job_id}: succeeded without a succeeded attempt")


def check_reads(jobs: list[str], logs: list[dict[str, Any]], answers: dict[str, Any], truth: Any) -> Verdict:
    """Two hosts finished the same jobs while listing them (worker `reads`): each job's attempt end and its finish
    were recorded once, no listing missed a job, and each host's answers now (`answers`: side -> worker
    `answers`), read through the caches both hosts built at once, are the records' own (`truth`: the same
    answers from a copy of the store without its caches)."""
    v = Verdict()
    for e in logs:
        if e["ev"] == "error":
            v.errors.append(f"{e['w']}: {e['error']}")
        elif e["ev"] == "list-missed":
            v.violations.append(f"{e['w']}: a listing missed {e['jobs']}")
    done = [e for e in logs if e["ev"] == "finish-done"]
    for job_id in jobs:
        for what in ("ended", "finished"):
            won = [e["w"] for e in done if e["job"] == job_id and e[what]]
            if len(won) != 1:
                v.violations.append(f"job {job_id}: {what} recorded by {len(won)} writers ({won})")
    for side, got in sorted(answers.items()):
        for key in sorted(truth):
            if got.get(key) != truth[key]:
                v.violations.append(f"host {side}: its {key} differs from the records' own")
    v.info["listings"] = sum(e["ev"] == "newest" for e in logs)
    return v
