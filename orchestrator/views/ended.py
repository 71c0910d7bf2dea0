"""The view of a job that has ended, kept next to its records so that `status`, `history` and `list` read one file.

A job that has ended and has nothing left to deliver (no spec.notify, whose outbox a finished job's supervisor
may still be emptying) is at rest: nothing moves it on, so its view (`report.job_json`) is a function of its
record files, its attempts' logs (their progress) and this version of shardctl. It is kept as

    jobs/<id>/view-v2-<key>.json

where the key is the digest of the store's fingerprint of the record files (names, sizes, mtimes), each log's
size and mtime, the shardctl version and VIEW_VERSION. Any change to what the view is made of changes the key,
so a view kept before is never shown for a job that changed; it is only not found, and the view is made again
(importing pydantic's models to work out each attempt's config: the cost this saves). `code`, the snapshot the
job ran, is read live: gc may have removed it since. A view that cannot be read is removed and made again.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from orchestrator import __version__
from orchestrator.store.jobstore import JobRecord, Store

__all__ = ["VIEW_VERSION", "at_rest", "ended_view"]

VIEW_VERSION = 2  # bump when report.job_json shows something else for the same records (2: stalled)


def at_rest(record: JobRecord) -> bool:
    """Ended, with nothing that moves it on: `jobs.catch_up` does nothing for it (a finished job is moved on only
    while notifications of it wait to be delivered, which needs spec.notify)."""
    return record.terminal and not (isinstance(record.spec, dict) and (record.spec.get("spec") or {}).get("notify"))


def _log_stat(path: str) -> list[int] | None:
    if not path:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def ended_view(store: Store, record: JobRecord, with_progress: bool = True) -> dict[str, Any]:
    """`report.job_json(record, its attempts)` of a job at rest, from its kept view when one matches."""
    from orchestrator.intake import snapshot

    fp, found = store.summarised(record.id)  # one listing of its files and one file, when it has a summary
    if found is not None:
        record, attempts = found
    else:
        attempts = store.attempts(record.id)
    if fp is None or not all(a.ended for a in attempts):
        return _made(record, attempts, with_progress)
    from orchestrator.views import report

    key = hashlib.sha256(json.dumps([fp, [_log_stat(a.log_path) for a in attempts], __version__, VIEW_VERSION,
                                     report.FORMAT, with_progress]).encode()).hexdigest()[:24]
    name = f"view-v{VIEW_VERSION}-{key}.json"
    kept = store.cached(record.id, name)
    view = kept.get("view") if kept is not None else None
    if not isinstance(view, dict) or view.get("id") != record.id:
        if kept is not None:
            store.drop_cached(record.id, name)
        view = {**_made(record, attempts, with_progress), "code": None}  # read live below, in its place
        store.keep_cached(record.id, name, {"version": VIEW_VERSION, "view": view})
        view = json.loads(json.dumps(view))  # as a kept one reads: the same whether it was kept or not
    view = dict(view)
    view["code"] = snapshot.of_workdir(record.workdir)
    return view


def _made(record: JobRecord, attempts: list[Any], with_progress: bool) -> dict[str, Any]:
    from orchestrator.views.report import job_json

    return job_json(record, attempts, supervised=None, with_progress=with_progress)
