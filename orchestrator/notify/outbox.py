"""Each job's outbox: JOB_DIR/notify/, written as the job store is (link-once files, never rewritten), so that
what was queued, tried, delivered or given up on survives a supervisor's restart and is decided once even when
several processes (a Slurm judge and the CLI, on two hosts) look at the same job.

For notification STEM (`<event>-<attempt>.h<webhook index>`):

    STEM.json               queued: the notification's fields and which webhook wants it (no URL, no secret)
    STEM.try-K.json         try K claimed: only the process that links it sends try K
    STEM.try-K.failed.json  how try K failed, in words that never hold the URL (the delivery failure)
    STEM.delivered.json     the receiver accepted it: never sent again
    STEM.undelivered.json   given up (tries used up, or a refusal no retry can change): never sent again
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.notify.events import Notification
from orchestrator.procfiles import publish_once
from orchestrator.store.files import Owner, make_dir

DIRECTORY = "notify"
_FILE = re.compile(r"([a-z_]+-[0-9]+\.h[0-9]+)(?:\.(try-([0-9]+)(\.failed)?|delivered|undelivered))?\.json")


@dataclass(frozen=True)
class Item:
    """A queued notification and what has happened to it so far."""

    stem: str
    hook: int
    notification: Notification
    tries: int  # tries claimed
    last_try: dict[str, Any] | None  # the newest claim (at, by)
    last_failure: dict[str, Any] | None  # how the newest try failed, if it is known to have
    done: bool  # delivered or given up


def stem(n: Notification, hook: int) -> str:
    return f"{n.event.value}-{n.attempt}.h{hook}"


class Outbox:
    def __init__(self, job_dir: str | Path) -> None:
        self.path = Path(job_dir) / DIRECTORY

    def _publish(self, name: str, data: dict[str, Any]) -> bool:
        make_dir(self.path)
        return publish_once(self.path, name, json.dumps(data, sort_keys=True) + "\n")

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / name).read_bytes()[:1 << 20])
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def queue(self, n: Notification, hook: int) -> bool:
        """Queue the notification for webhook `hook` once (True when this call queued it). One already queued
        costs a stat, not a write and an fsync: every sync asks again for everything due."""
        if (self.path / f"{stem(n, hook)}.json").exists():
            return False
        return self._publish(f"{stem(n, hook)}.json", {"notification": n.to_json(), "hook": hook,
                                                       "queued_at": time.time()})

    def items(self) -> list[Item]:
        """Every queued notification with its tries, oldest first; damaged ones are left out."""
        try:
            names = os.listdir(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        groups: dict[str, dict[str, Any]] = {}
        for name in names:
            m = _FILE.fullmatch(name)
            if not m:
                continue
            group = groups.setdefault(m[1], {"tries": {}, "failed": set(), "done": False, "queued": False})
            if m[2] is None:
                group["queued"] = True
            elif m[2] in ("delivered", "undelivered"):
                group["done"] = True
            elif m[4]:
                group["failed"].add(int(m[3]))
            else:
                group["tries"][int(m[3])] = name
        out = []
        for key, group in groups.items():
            queued = self._read(f"{key}.json") if group["queued"] else None
            if queued is None:
                continue
            try:
                n = Notification.from_json(queued["notification"])
                hook = int(queued["hook"])
            except (KeyError, TypeError, ValueError):
                continue
            tries = max(group["tries"], default=0)
            last = self._read(group["tries"][tries]) if tries else None
            failed = self._read(f"{key}.try-{tries}.failed.json") if tries in group["failed"] else None
            out.append(Item(key, hook, n, tries, last, failed, group["done"]))
        return sorted(out, key=lambda i: (i.notification.at, i.stem))

    def claim_try(self, item: Item) -> int | None:
        """Claim the next try: its number, or None when another process claimed it first."""
        number = item.tries + 1
        return number if self._publish(f"{item.stem}.try-{number}.json",
                                       {"at": time.time(), "by": Owner.me().as_json()}) else None

    def failed(self, item: Item, number: int, error: str, retry: bool) -> None:
        self._publish(f"{item.stem}.try-{number}.failed.json", {"at": time.time(), "error": error, "retry": retry})

    def delivered(self, item: Item, number: int, status: int) -> None:
        self._publish(f"{item.stem}.delivered.json", {"at": time.time(), "try": number, "status": status})

    def give_up(self, item: Item, tries: int, error: str) -> None:
        self._publish(f"{item.stem}.undelivered.json", {"at": time.time(), "tries": tries, "error": error})

    def failures(self) -> list[dict[str, Any]]:
        """Every recorded delivery failure (what status or a person reads): stem, try, when, why."""
        out = []
        try:
            names = sorted(os.listdir(self.path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        for name in names:
            m = _FILE.fullmatch(name)
            if m and (m[4] or m[2] == "undelivered") and (data := self._read(name)) is not None:
                out.append({"notification": m[1], "try": int(m[3]) if m[3] else None, **data})
        return out
