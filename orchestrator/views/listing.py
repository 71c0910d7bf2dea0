"""What `shardctl list` shows: the newest jobs' views, brought up to date, at a cost that does not grow with the store.

The store reads only the newest `limit` jobs (its index orders them). A job at rest is shown from its kept view
(views/ended.py) and asked nothing; only the others are caught up with their targets (one batched query per
target) and read again, which is the only time the executors' and targets' code is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.errors import StoreError
from orchestrator.store.jobstore import JobRecord, Store
from orchestrator.views.ended import at_rest, ended_view

__all__ = ["list_views"]

_UNREADABLE = (StoreError, ValueError, TypeError, KeyError, AttributeError)


def list_views(store: Store, limit: int | None, warn: Callable[[str], None], cluster: dict[str, str] | None = None,
               group: str | None = None) -> list[dict[str, Any]]:
    """The jobs as `shardctl list --json` shows them, newest first (`group`: a sweep's points only, found by the
    store's index). A damaged record is reported through `warn` and skipped."""
    from orchestrator.views.report import job_json

    damaged: list[str] = []
    records: list[JobRecord] = []
    views: dict[str, dict[str, Any]] = {}
    for record in store.list_jobs(limit, damaged=damaged, group=group):  # a damaged row is reported, skipped
        try:
            if at_rest(record):
                views[record.id] = ended_view(store, record)
            else:
                job_json(record, store.attempts(record.id), store=store)  # everything its rows say can be read
            records.append(record)
        except _UNREADABLE as exc:
            damaged.append(f"job {record.id}: its record cannot be read ({exc})")
        if limit is not None and len(records) == limit:
            break
    if limit is not None:
        records = records[:limit]
    for line in damaged:
        warn(f"warning: {line}; skipped")
    moving = [r for r in records if r.id not in views]
    if moving:
        from orchestrator.jobs import catch_up_all

        try:
            for note in catch_up_all(store, moving, cluster):
                warn(note)
        except _UNREADABLE as exc:
            warn(f"warning: could not bring every job up to date: {exc}")
    out = []
    for r in records:
        if r.id in views:
            out.append(views[r.id])
            continue
        try:
            out.append(job_json(store.get_job(r.id), store.attempts(r.id), store=store))
        except _UNREADABLE as exc:
            warn(f"warning: job {r.id}: its record cannot be read ({exc}); skipped")
    return out
