"""The job index: each job's creation time, name and sweep group, so `list` (`--group` too) and a look-up by name
read no job.json.

    index/jobs-v2.json   {"version": 2, "digest": sha256 of "jobs", "jobs": {id: [created_at, name, group]}}

(group: the `shardctl.dev/group` label of the job's spec, which a sweep puts on each of its points; null without.)

What it holds comes from job.json, which never changes once published, so an entry is never out of date:
the index can only be incomplete (jobs created since it was written, which the reader then reads from
their job.json). It is a cache: rebuilt from the job directories whenever it is missing, truncated,
damaged (its digest does not match), or written by another version; nothing in it is trusted over the
job directory it names (a job's directory, not the index, says whether it exists). It is replaced whole
by one rename (`procfiles.write_files`), so a reader sees an old index or the new one, never a mix; two
hosts writing it at once each write a complete one, and whichever rename comes last stands. It is not fsynced:
one a crash left empty or cut fails its digest and is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from orchestrator.procfiles import write_files

__all__ = ["FILE", "VERSION", "Entry", "load", "save"]

VERSION = 2  # 1: [created_at, name] (no group): not read, rebuilt as 2
FILE = f"jobs-v{VERSION}.json"
GROUP_LABEL = "shardctl.dev/group"  # the label a sweep puts on each of its points (api/sweep.py)
Entry = tuple[float, str, str | None]  # (created_at, name, group)


def group_of(spec: Any) -> str | None:
    """The sweep group a job's stored spec carries (None: none, or not a string)."""
    metadata = spec.get("metadata") if isinstance(spec, dict) else None
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    group = labels.get(GROUP_LABEL) if isinstance(labels, dict) else None
    return group if isinstance(group, str) else None


def _digest(jobs_text: str) -> str:
    return hashlib.sha256(jobs_text.encode()).hexdigest()


def load(directory: Path) -> dict[str, Entry]:
    """The entries of the index in `directory`; empty when there is none or it cannot be trusted."""
    try:
        data = json.loads((directory / FILE).read_bytes())
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("jobs"), dict):
            return {}
        jobs: dict[str, Any] = data["jobs"]
        if data.get("digest") != _digest(json.dumps(jobs, sort_keys=True)):
            return {}
        out: dict[str, Entry] = {}
        for job_id, entry in jobs.items():
            if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], int | float)
                    or isinstance(entry[0], bool) or not isinstance(entry[1], str)
                    or not isinstance(entry[2], str | None)):
                return {}
            out[job_id] = (entry[0], entry[1], entry[2])
        return out
    except (OSError, ValueError, RecursionError):
        return {}


def save(directory: Path, entries: dict[str, Entry]) -> None:
    """Replace the index with `entries` (atomically). A failure to write it is not an error: it is a cache."""
    jobs = {job_id: [created, name, group] for job_id, (created, name, group) in entries.items()}
    text = json.dumps(jobs, sort_keys=True)
    try:
        write_files(directory, {FILE: json.dumps({"version": VERSION, "digest": _digest(text), "jobs": jobs},
                                                 sort_keys=True, separators=(",", ":")) + "\n"}, durable=False)
    except OSError:
        pass
