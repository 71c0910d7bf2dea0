"""Sweeps: one job per point of a grid of overrides, held together by a group label.

`--sweep spec.batch.micro=4,8 --sweep spec.sharding=grad_op,full` is the grid of 4 points (every
combination, the first axis slowest). Each axis's values are read as one YAML flow list by the spec's
bounded loader (`4,8` is `[4, 8]`), so they are typed like the file. Point i is the base spec with its
values set as overrides, named `<base>-<i>` and labelled `shardctl.dev/group=<group>` and
`shardctl.dev/sweep-point=<i>` (metadata.labels: the store records them with the spec, and the
Kubernetes target copies them onto every object), so `list --group` finds the points on every target.
The group is the base name and a random suffix (`quickstart-3fa2c1`); `list --group quickstart` finds
the newest group of that name. A group listed later shows each point's values as the fields in which
the points' recorded specs differ (`settings_of`).
Every value is normalised by the spec model before the grid is built (`spec.sharding=full,zero3` is one
value given twice, refused); every point is validated before the first is submitted: a bad point
submits nothing, and an empty grid is refused.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.api.overrides import Override, OverrideError, apply, check_key, read_value
from orchestrator.spec.models import TrainingJob
from orchestrator.store.index import GROUP_LABEL
from orchestrator.views.report import describe_config

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
    key = check_key(key, shown)
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
    if not out:
        raise OverrideError(["--sweep: no axis to sweep over (give at least one key.path=v1,v2,...)"])
    keys = [a.key for a in out]
    for k in keys:
        if k == "metadata" or k.startswith("metadata."):
            raise OverrideError([f"--sweep {k}: a sweep names and labels its points itself; sweep spec fields"])
        if keys.count(k) > 1:
            raise OverrideError([f"--sweep {k}: swept twice; give all its values in one --sweep"])
    return out


def _field(data: Any, parts: Sequence[str]) -> tuple[bool, Any]:
    """The value at a dotted path of a spec's JSON form: (found, value)."""
    for part in parts:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return False, None
    return True, data


def normalised(base: TrainingJob, a: Axis) -> list[Any]:
    """Each value of the axis as the spec model reads it (`zero3`, `FULL_SHARD` and `3` are all
    `spec.sharding: full`), set alone on the base spec; a value the model refuses stays as given (its
    point is refused, naming it, when the points are checked)."""
    out = []
    for v in a.values:
        try:
            job = apply(base, [Override(a.key, v, f"{a.key}={v!r}", "--sweep")])
        except OverrideError:
            out.append(v)
            continue
        found, value = _field(job.model_dump(mode="json", by_alias=True), a.key.split("."))
        out.append(value if found else v)
    return out


def refuse_duplicates(base: TrainingJob, axes: Sequence[Axis]) -> None:
    """Two values of one axis that the spec reads as the same value would be two identical points: refused
    in one line naming the axis and the values."""
    for a in axes:
        same: dict[str, list[Any]] = {}
        for given, value in zip(a.values, normalised(base, a), strict=True):
            same.setdefault(json.dumps(value, sort_keys=True, default=repr), []).append(given)
        repeated = [(k, [repr(v) for v in vs]) for k, vs in same.items() if len(vs) > 1]
        if repeated:
            told = "; ".join(f"{', '.join(vs[:-1])} and {vs[-1]} are the same {a.key} ({k})" for k, vs in repeated)
            raise OverrideError([f"{a.text}: {told}; give each value once"])


def points(axes: Sequence[Axis]) -> list[list[Override]]:
    """Every combination of the axes' values as overrides (the first axis slowest)."""
    if not axes or any(not a.values for a in axes):
        raise OverrideError(["--sweep: an empty grid; give every axis at least one value"])
    total = 1
    for a in axes:
        total *= len(a.values)
    if total > MAX_POINTS:
        raise OverrideError([f"--sweep: {total} points; at most {MAX_POINTS} are submitted by one command"])
    grid = itertools.product(*[[(a, v) for v in a.values] for a in axes])
    return [[Override(a.key, v, f"{a.key}={v!r}", "--sweep") for a, v in combo] for combo in grid]


def new_group(base: str) -> str:
    """A group value: the base name and a random suffix (a Kubernetes label value: <= 63 characters)."""
    return f"{_group_stem(base)}-{secrets.token_hex(3)}"


def _group_stem(base: str) -> str:
    return base[:50].rstrip("-")


def is_group_of(group: str, base: str) -> bool:
    """Whether `group` is one that `new_group(base)` could have made (`base` is the sweep's name)."""
    return re.fullmatch(re.escape(_group_stem(base)) + r"-[0-9a-f]{6}", group) is not None


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


def point_of(spec_data: Mapping[str, Any]) -> int | None:
    labels = (spec_data.get("metadata") or {}).get("labels") or {}
    value = labels.get(POINT_LABEL)
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _leaves(data: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(data, dict) and data:
        for k, v in data.items():
            _leaves(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = data  # a list is one value: an axis over a whole list, or one of its items, shows it whole


def settings_of(specs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each point's values, read back from the points' recorded specs (a group listed later): the spec fields
    in which the points differ, less the checkpoint directory each point was given under a shared one.
    A field that every point sets alike (a one-point sweep, an axis of one value) is not shown."""
    flat = []
    for spec in specs:
        leaves: dict[str, Any] = {}
        _leaves(spec.get("spec") or {}, "spec", leaves)
        flat.append(leaves)
    keys = list(dict.fromkeys(k for leaves in flat for k in leaves))
    names = [(s.get("metadata") or {}).get("name") for s in specs]
    own_dirs = all(isinstance(d := leaves.get("spec.checkpoint.dir"), str) and isinstance(name, str)
                   and d.endswith(f"/{name}") for leaves, name in zip(flat, names, strict=True))
    differ = [k for k in keys
              if len({(k in leaves, json.dumps(leaves.get(k), sort_keys=True, default=repr)) for leaves in flat}) > 1
              and not (k == "spec.checkpoint.dir" and own_dirs)]
    return [{k: leaves[k] for k in differ if k in leaves} for leaves in flat]


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
