"""The view of a job brought up to date: what `status`, `history` and `logs` show of a job that is not at rest, and
what `shardctl.Job.status()` returns.

The job is moved on first (jobs.catch_up: a dead supervisor replaced, a judge's moves made inline, a controller's
record mirrored), then its view is made (report.job_json). Neither imports the API, nor the spec's pydantic models
for a job whose resident supervisor is alive and whose attempts' configs were worked out before (report.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.errors import TargetError
from orchestrator.store.jobstore import Store

__all__ = ["current_view", "refresh"]


def refresh(store: Store, job_id: str, cluster: dict[str, Any], on_note: Callable[[str], None]) -> None:
    """Move an unfinished job on, or read its record back from its target; a target that cannot be asked is a
    note (the stored record stands)."""
    from orchestrator.jobs import catch_up

    try:
        note = catch_up(store, store.get_job(job_id), cluster)
    except TargetError as exc:
        note = f"warning: could not ask the target: {exc}"
    if note:
        on_note(note)


def current_view(store: Store, job_id: str, cluster: dict[str, Any], on_note: Callable[[str], None],
                 revive: bool = True) -> dict[str, Any]:
    """The job with every attempt (`shardctl status --json`, docs/cli-json.md), refreshed first unless `revive` is
    False."""
    from orchestrator.jobs import supervised
    from orchestrator.views.report import job_json

    if revive:
        refresh(store, job_id, cluster, on_note)
    record = store.get_job(job_id)
    return job_json(record, store.attempts(record.id), supervised=supervised(record), store=store)
