"""The site's suspect nodes: where a node fault happened, avoided by every later attempt until it expires.

Kept in the job store, so every job of this store (every user of a shared SHARDCTL_HOME, every host)
avoids the node, written as the store writes everything: each change is an event file published once
(`nodes/<node>/<time>-<host>-...json`) and never rewritten, so writers on several hosts never lose one
another's word. A node's state is its newest event: `suspect` until its expiry, or `clear` (`shardctl
nodes --clear`). Expired suspicions are simply not active; nothing has to clean them up.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import BadInput, StoreError
from orchestrator.store.files import event_name, make_dir, publish, read_record

SUSPECT_FOR_S = 24 * 3600.0  # how long a node stays suspect after a fault, unless the site says (a day)
SUSPECT_FOR_ENV = "SHARDCTL_SUSPECT_FOR"  # the site's word: its repair turnaround, in seconds or as 90m, 24h
_DURATION = re.compile(r"([0-9]{1,3}h)?([0-9]{1,4}m)?([0-9]{1,6}s)?")


def suspect_for_s() -> float:
    """How long a faulty node stays suspect: SHARDCTL_SUSPECT_FOR (a site that repairs or drains nodes within an
    hour need not lose a node for a day), else a day. A value that is not a duration is refused in one line."""
    raw = os.environ.get(SUSPECT_FOR_ENV, "").strip()
    if not raw:
        return SUSPECT_FOR_S
    if raw.isdigit():
        seconds = int(raw)
    elif (m := _DURATION.fullmatch(raw)) and any(m.groups()):
        seconds = sum(int(g[:-1]) * unit for g, unit in zip(m.groups(), (3600, 60, 1), strict=True) if g)
    else:
        raise BadInput(f"{SUSPECT_FOR_ENV}={raw[:40]!r} is not a duration; write seconds (600) or 30m, 24h")
    if not 60 <= seconds <= 30 * 86400:
        raise BadInput(f"{SUSPECT_FOR_ENV}: {seconds} s is out of range (1 minute to 30 days)")
    return float(seconds)
_NODE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")


@dataclass(frozen=True)
class Suspect:
    node: str
    target: str
    why: str
    job_id: str | None
    attempt: int | None
    since: float
    until: float

    def as_json(self) -> dict[str, Any]:
        return {"node": self.node, "target": self.target, "why": self.why, "job": self.job_id,
                "attempt": self.attempt, "since": self.since, "until": self.until}


class SuspectNodes:
    def __init__(self, root: Path) -> None:
        self.path = root / "nodes"

    def add(self, node: str, target: str, why: str, *, job_id: str | None = None, attempt: int | None = None,
            for_s: float | None = None, now: float | None = None) -> Suspect:
        now = time.time() if now is None else now
        for_s = suspect_for_s() if for_s is None else for_s
        suspect = Suspect(_checked(node), target, why[:500], job_id, attempt, now, now + for_s)
        self._publish(node, {"action": "suspect", **suspect.as_json()})
        return suspect

    def clear(self, node: str, target: str | None = None, now: float | None = None) -> bool:
        """True when the node was suspect (for `target`, or any) and is cleared now."""
        active = [s for s in self.active(target, now) if s.node == _checked(node)]
        for s in active:
            self._publish(node, {"action": "clear", "node": s.node, "target": s.target,
                                 "at": time.time() if now is None else now})
        return bool(active)

    def active(self, target: str | None = None, now: float | None = None) -> list[Suspect]:
        """Every node suspect now (for `target`, or for every target), soonest to expire last."""
        now = time.time() if now is None else now
        out = []
        try:
            nodes = sorted(p for p in self.path.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot read the suspect nodes in {self.path}: {exc.strerror or exc}") from None
        for directory in nodes:
            latest: dict[str, dict[str, Any]] = {}  # target -> its newest event
            for event in sorted(directory.glob("*.json")):
                try:
                    data = read_record(event)
                except (OSError, ValueError):
                    continue  # a damaged event says nothing; the others still do
                if isinstance(data.get("target"), str):
                    latest[data["target"]] = data
            for name, data in latest.items():
                if data.get("action") != "suspect" or (target is not None and name != target):
                    continue
                try:
                    suspect = Suspect(str(data["node"]), name, str(data["why"]), data.get("job"), data.get("attempt"),
                                      float(data["since"]), float(data["until"]))
                except (KeyError, TypeError, ValueError):
                    continue
                if suspect.until > now:
                    out.append(suspect)
        return sorted(out, key=lambda s: (-s.until, s.node))

    def _publish(self, node: str, data: dict[str, Any]) -> None:
        try:
            directory = make_dir(make_dir(self.path) / _checked(node))
            publish(directory, event_name(), data)
        except OSError as exc:
            raise StoreError(f"cannot write the suspect nodes in {self.path}: {exc.strerror or exc}") from None


def _checked(node: str) -> str:
    if not _NODE.fullmatch(node):
        raise BadInput(f"{node!r} is not a node name (letters, digits, '.', '_' and '-', at most 253)")
    return node
