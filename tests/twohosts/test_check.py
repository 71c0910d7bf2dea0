"""The two-host checker itself (tests/twohosts/check.py), on one local store: what it must accept from a
worker killed mid-write, and what it must still call a violation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.spec.failure import Failure
from orchestrator.spec.states import AttemptState, FailureKind
from orchestrator.store.jobstore import Store
from tests.twohosts.check import check

pytestmark = pytest.mark.timeout(60)


def _attempt_ended_twice(tmp_path: Path, second_recorded: bool,
                         killed: bool) -> tuple[Store, str, list[dict[str, Any]]]:
    """Job with one attempt won by B; B logs an end, then (restarted or not) logs another."""
    store = Store(tmp_path / "store")
    job_id = store.create_job(name="j", target="twohosts", spec={}, source=None, workdir=str(tmp_path),
                              checkpoint_dir=None).id
    store.add_attempt(job_id, 1, spec={}, rung=None, reason="claimed by B [0123456789ab]", run_dir="/r",
                      log_path="/r/log", artifacts={}, warnings=[], resume_from=None)
    store.start_attempt(job_id, 1, external_id="ext-1", started_at=1.0)
    first = {"job": job_id, "n": 1, "state": "failed", "failure_kind": "host_oom", "ended_at": 10.0}
    second = {"job": job_id, "n": 1, "state": "failed", "failure_kind": "timeout", "ended_at": 20.0}
    recorded = store.end_attempt(job_id, 1, AttemptState.FAILED,
                                 Failure(FailureKind.TIMEOUT, "failed [B]"), ended_at=20.0)
    assert recorded
    events = [{"ev": "claim-do", "w": "B", "t": 1, "job": job_id, "n": 1, "token": "0123456789ab"},
              {"ev": "claim-won", "w": "B", "t": 2, "job": job_id, "n": 1, "token": "0123456789ab"},
              {"ev": "running-do", "w": "B", "t": 3, "job": job_id, "n": 1, "external_id": "ext-1"},
              {"ev": "running-done", "w": "B", "t": 4, "job": job_id, "n": 1, "external_id": "ext-1"},
              {"ev": "end-do", "w": "B", "t": 5, **first}]
    if not killed:
        events.append({"ev": "end-done", "w": "B", "t": 6, **first, "recorded": True})
    events += [{"ev": "end-do", "w": "B", "t": 7, **second},
               {"ev": "end-done", "w": "B", "t": 8, **second, "recorded": second_recorded}]
    return store, job_id, events


def test_an_end_rewritten_by_a_worker_restarted_after_a_kill_is_accepted(tmp_path: Path) -> None:
    """Killed between logging its end and hearing back: the restart finds no end in the store and
    writes one; that is one end in the store, as the rules ask."""
    store, job_id, events = _attempt_ended_twice(tmp_path, second_recorded=True, killed=True)
    verdict = check(store, [job_id], events)
    assert verdict.clean, verdict.summary()


def test_a_live_worker_ending_an_attempt_twice_is_a_violation(tmp_path: Path) -> None:
    store, job_id, events = _attempt_ended_twice(tmp_path, second_recorded=False, killed=False)
    verdict = check(store, [job_id], events)
    assert any("its end was written 2 times" in v for v in verdict.violations), verdict.summary()


def test_two_ends_the_store_said_it_recorded_are_a_violation(tmp_path: Path) -> None:
    store, job_id, events = _attempt_ended_twice(tmp_path, second_recorded=True, killed=False)
    events[5]["recorded"] = True
    verdict = check(store, [job_id], events)
    assert any("recorded 2 times" in v for v in verdict.violations), verdict.summary()
