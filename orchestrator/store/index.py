"""The job index: each job's creation time and name, so `list` and a look-up by name read no job.json.

    index/jobs-v1.json   {"version": 1, "digest": sha256 of "jobs", "jobs": {id: [created_at, name]}}

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

VERSION = 1
FILE = f"jobs-v{VERSION}.json"
Entry = tuple[float, str]  # (created_at, name)


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
            if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], int | float)
                    or isinstance(entry[0], bool) or not isinstance(entry[1], str)):
                return {}
            out[job_id] = (entry[0], entry[1])
        return out
    except (OSError, ValueError, RecursionError):
        return {}


def save(directory: Path, entries: dict[str, Entry]) -> None:
    """Replace the index with `entries` (atomically). A failure to write it is not an error: it is a cache."""
    jobs = {job_id: [created, name] for job_id, (created, name) in entries.items()}
    text = json.dumps(jobs, sort_keys=True)
    try:
        write_files(directory, {FILE: json.dumps({"version": VERSION, "digest": _digest(text), "jobs": jobs},
                                                 sort_keys=True, separators=(",", ":")) + "\n"}, durable=False)
    except OSError:
        pass
