"""Sweeps: one job per point of a grid of overrides, held together by a group label.

`--sweep spec.batch.micro=4,8 --sweep spec.sharding=grad_op,full` is the grid of 4 points (every
combination, the first axis slowest). Each axis's values are read as one YAML flow list by the spec's
bounded loader (`4,8` is `[4, 8]`), so they are typed like the file. Point i is the base spec with its
values set as overrides, named `<base>-<i>` and labelled `shardctl.dev/group=<group>` and
`shardctl.dev/sweep-point=<i>` (metadata.labels: the store records them with the spec, and the
Kubernetes target copies them onto every object), so `list --group` finds the points on every target.
Every point is validated before the first is submitted: a bad point submits nothing.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.api.overrides import Override, OverrideError, check_key, read_value
from orchestrator.views.report import describe_config

GROUP_LABEL = "shardctl.dev/group"
POINT_LABEL = "shardctl.dev/sweep-point"
MAX_POINTS = 256  # a grid is multiplied out before anything runs; this bounds what one command submits
_NAME_MAX = 63  # a DNS-1123 label (it names pods, Slurm jobs and run directories)


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[Any, ...]
    text: str


def parse_axis(text: str, flag: str = "--sweep") -> Axis:
    """`key.path=v1,v2,...` -> Axis; raises OverrideError naming the option."""
    shown = f"{flag} {text}" if len(text) <= 200 else f"{flag} {text[:200]}..."
    key, sep, raw = text.partition("=")
    if not sep or not raw.strip():
        raise OverrideError([f"{shown}: expected key.path=v1,v2,... (e.g. spec.batch.micro=4,8)"])
    key = check_key(key.strip(), shown)
    body = raw.strip()
    values = read_value(body if body.startswith("[") else f"[{body}]", shown)
    return axis(key, values, shown)


def axis(key: str, values: Any, shown: str | None = None) -> Axis:
    """An axis from Python values (the API's `sweep={"spec.batch.micro": [4, 8]}`)."""
    shown = shown or f"sweep[{key!r}]"
    check_key(key, shown)
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise OverrideError([f"{shown}: the values must be a list (got {type(values).__name__})"])
    if not values:
        raise OverrideError([f"{shown}: no values to sweep over"])
    seen: list[Any] = []
    for v in values:
        if v in seen:
            raise OverrideError([f"{shown}: {v!r} is given twice"])
        seen.append(v)
    return Axis(key, tuple(values), shown)


def axes_of(given: Mapping[str, Sequence[Any]] | Sequence[str | Axis]) -> list[Axis]:
    if isinstance(given, Mapping):
        out = [axis(k, v) for k, v in given.items()]
    else:
        out = [g if isinstance(g, Axis) else parse_axis(g) for g in given]
    keys = [a.key for a in out]
    for k in keys:
        if k == "metadata" or k.startswith("metadata."):
            raise OverrideError([f"--sweep {k}: a sweep names and labels its points itself; sweep spec fields"])
        if keys.count(k) > 1:
            raise OverrideError([f"--sweep {k}: swept twice; give all its values in one --sweep"])
    return out


def points(axes: Sequence[Axis]) -> list[list[Override]]:
    """Every combination of the axes' values as overrides (the first axis slowest)."""
    total = 1
    for a in axes:
        total *= len(a.values)
    if total > MAX_POINTS:
        raise OverrideError([f"--sweep: {total} points; at most {MAX_POINTS} are submitted by one command"])
    grid = itertools.product(*[[(a, v) for v in a.values] for a in axes])
    return [[Override(a.key, v, f"{a.key}={v!r}", "--sweep") for a, v in combo] for combo in grid]


def new_group(base: str) -> str:
    """A group value: the base name and a random suffix (a Kubernetes label value: <= 63 characters)."""
    return f"{base[:50].rstrip('-')}-{secrets.token_hex(3)}"


def point_name(base: str, index: int) -> str:
    """`<base>-<index>`, shortened so that it stays a DNS-1123 label."""
    suffix = f"-{index}"
    return base[: _NAME_MAX - len(suffix)].rstrip("-") + suffix


def point_overrides(base: str, labels: Mapping[str, str], group: str, index: int) -> list[Override]:
    """What makes point `index` one of the group: its name, and its two labels added to the base's."""
    name = point_name(base, index)
    return [Override("metadata.name", name, f"metadata.name={name}", "--sweep", internal=True),
            Override("metadata.labels", {**labels, GROUP_LABEL: group, POINT_LABEL: str(index)},
                     f"metadata.labels: {GROUP_LABEL}={group}, {POINT_LABEL}={index}", "--sweep", internal=True)]


def group_of(spec_data: Mapping[str, Any]) -> str | None:
    labels = (spec_data.get("metadata") or {}).get("labels") or {}
    return labels.get(GROUP_LABEL)


def point_of(spec_data: Mapping[str, Any]) -> int | None:
    labels = (spec_data.get("metadata") or {}).get("labels") or {}
    value = labels.get(POINT_LABEL)
    return int(value) if isinstance(value, str) and value.isdigit() else None


def steps_per_second(view: Mapping[str, Any]) -> float | None:
    """The final attempt's steps per second, as its progress reads in the job's view (report.job_json:
    the rate the log shows, else the average since the attempt started); None where it has none."""
    if not view["attempts"]:
        return None
    progress = view["attempts"][-1].get("progress") or {}
    rate = progress.get("steps_per_s")
    return float(rate) if isinstance(rate, int | float) else None


_SHORT = re.compile(r"^(spec|metadata)\.")


def summary_rows(views: Sequence[Mapping[str, Any]], settings: Sequence[Mapping[str, Any]] = (),
                 points: Sequence[int | None] = ()) -> list[dict[str, Any]]:
    """One row per point (views in point order): its values (when known), state, attempts, final config
    and steps/s."""
    rows = []
    for i, v in enumerate(views):
        last = v["attempts"][-1] if v["attempts"] else None
        point = points[i] if i < len(points) else None
        rows.append({
            "point": i if point is None else point,
            "id": v["id"], "name": v["name"], "state": v["state"],
            "set": dict(settings[i]) if i < len(settings) else {},
            "attempts": len(v["attempts"]),
            "config": describe_config(last) if last else "-",
            "steps_per_s": steps_per_second(v),
        })
    return rows


def summary_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a plain table (the CLI prints it with rich; notebooks print this)."""
    head = ["POINT", "NAME", "STATE", "ATTEMPTS", "STEPS/S", "FINAL CONFIG", "SET"]
    body = [[str(r["point"]), r["name"], str(r["state"]), str(r["attempts"]),
             "-" if r["steps_per_s"] is None else f"{r['steps_per_s']:.2f}", r["config"],
             " ".join(f"{_SHORT.sub('', k)}={v}" for k, v in r["set"].items())] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in [head, *body])
