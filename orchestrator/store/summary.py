"""A summary of an ended job: its fold (job and attempts) in one file, so reading it costs one file, not a dozen.

    jobs/<id>/summary-v1-<fingerprint>.json   {"version": 1, "digest": ..., "job": {...}, "attempts": [{...}, ...]}

A job that has ended never changes, which is what makes this safe; but it is not trusted for that alone.
Its name carries the fingerprint of the record files it was folded from (each one's name, size and mtime:
job.json, running.json, cancel.json, finished.json, events/*, attempts/*), so a file added later (an event
after the end, a record edited by hand) changes the fingerprint, the summary is not found, and the job is
folded from its files again, as if there were no summary. It is published once under that name (link-once:
two hosts writing it at once write the same content and one wins). One that cannot be read (truncated,
damaged: the digest of its content does not match, or written by another version) is removed and written
again. Only a job that has ended, whose attempts have all ended and whose fold reported nothing damaged, is
summarised.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["CACHE_PREFIXES", "CONFIG_PREFIX", "JOB_RECORDS", "PREFIX", "VERSION", "cache_name", "digest", "fingerprint",
           "name_for"]

VERSION = 1
PREFIX = "summary-v"
JOB_RECORDS = frozenset({"job.json", "running.json", "cancel.json", "finished.json"})
CONFIG_PREFIX = "config-v"  # an attempt's config, worked out from its spec (views/report.py attempt_config)
CACHE_PREFIXES = (PREFIX, "view-v", CONFIG_PREFIX)  # a job directory's files that are caches: gc and a fingerprint
# leave them out


def fingerprint(job_dir: Path, attempt_file: re.Pattern[str]) -> str | None:
    """Of the record files a fold reads (names, sizes, mtimes); None when the job directory cannot be listed."""
    entries: list[str] = []
    for sub in ("", "events", "attempts"):
        try:
            listing = os.scandir(job_dir / sub if sub else job_dir)
        except (FileNotFoundError, NotADirectoryError):
            if not sub:
                return None
            continue
        except OSError:
            return None
        with listing:
            for entry in listing:
                name = entry.name
                if name.startswith(".") or (not sub and name not in JOB_RECORDS) or (
                        sub == "attempts" and not attempt_file.fullmatch(name)):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    return None
                entries.append(f"{sub}/{name}\0{info.st_size}\0{info.st_mtime_ns}")
    entries.sort()
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:24]


def digest(job: Any, attempts: Any) -> str:
    """Of a summary's content: a summary whose bytes changed after it was written (a disk error, an edit) is not
    read. Raises TypeError, ValueError for content that is not JSON's."""
    return hashlib.sha256(json.dumps([job, attempts], sort_keys=True).encode()).hexdigest()


def name_for(fp: str) -> str:
    return f"{PREFIX}{VERSION}-{fp}.json"


def cache_name(name: str) -> str:
    """A cache file's name in a job directory: one of CACHE_PREFIXES, a plain file name."""
    if not name.startswith(CACHE_PREFIXES) or "/" in name or not name.endswith(".json"):
        raise ValueError(f"{name!r} is not a cache file's name")
    return name
