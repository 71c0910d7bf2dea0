"""`--set key.path=value`: change one field of a job spec from the command line or from Python.

An override is typed and validated exactly like the file: its value is read by the spec's bounded
YAML loader (`spec/loader.py`: `micro=8` is the integer 8, `mixed=no` the string the spec means,
`args=[--steps, "5"]` a list), put in place in the spec's data (a list item is `args.2`, or `args[2]`
as Helm and kubectl write it), and the whole TrainingJob is validated
again by the same pydantic model, then by the same cross-field rules. Errors name the override as it
was given (`--set spec.batch.micro=abc: spec.batch.micro: ...`), so a bad one is one line, never
blamed on a line of the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.errors import OverrideError, located
from orchestrator.spec.loader import LoadedSpec, friendly_message, load_yaml, loc_to_path, yaml_problem
from orchestrator.spec.models import TrainingJob

MAX_VALUE_CHARS = 4096  # one field's value; a list of script arguments fits many times over
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$|^[0-9]{1,4}$")  # a field name, or a list index
_INDEX = re.compile(r"(?<=[A-Za-z0-9_\]])\[([0-9]{1,4})\]")  # `name[2]` (and `name[2][0]`): `name.2`
ROOTS = ("metadata", "spec")


@dataclass(frozen=True)
class Override:
    """One `key.path=value`: the dotted path, the value as YAML read it, and the text as given."""

    key: str
    value: Any
    text: str
    flag: str = "--set"
    internal: bool = False  # set by shardctl itself (a sweep point's name and labels): never blamed

    @property
    def parts(self) -> list[str]:
        return self.key.split(".")

    def __str__(self) -> str:
        return f"{self.flag} {self.text}"

    def covers(self, path: str) -> bool:
        """Whether a problem at `path` (a dotted field path) comes from this override."""
        return path == self.key or path.startswith(self.key + ".") or self.key.startswith(path + ".")


def check_key(key: str, shown: str) -> str:
    """A dotted field path under metadata or spec, in its dotted form (a list item `args[2]`, as Helm and
    kubectl write it, is `args.2`); raises OverrideError naming `shown`."""
    given = key
    key = _INDEX.sub(r".\1", key)
    parts = key.split(".")
    if not key or not all(_KEY.fullmatch(p) for p in parts):
        raise OverrideError([f"{shown}: {given[:80]!r} is not a field path (dotted names such as spec.batch.micro; "
                             "a number picks an item of a list: args.2 or args[2])"])
    if parts[0] not in ROOTS or len(parts) < 2:
        raise OverrideError([f"{shown}: only fields under metadata. or spec. can be set (got {key[:80]!r})"])
    return key


def read_value(raw: str, shown: str) -> Any:
    """A value as the spec file would read it (the same bounded YAML loader); raises OverrideError."""
    if len(raw) > MAX_VALUE_CHARS:
        raise OverrideError([f"{shown[:120]}...: the value is longer than {MAX_VALUE_CHARS} characters"])
    try:
        documents = load_yaml(raw)
    except yaml.YAMLError as exc:
        _, message = yaml_problem(exc, raw)
        raise OverrideError([f"{shown}: the value is not valid YAML: {message}"]) from None
    if len(documents) > 1:
        raise OverrideError([f"{shown}: the value is several YAML documents; give one"])
    return documents[0] if documents else None


def parse(text: str, flag: str = "--set") -> Override:
    """`key.path=value` -> Override; raises OverrideError naming the override."""
    shown = f"{flag} {text}" if len(text) <= 200 else f"{flag} {text[:200]}..."
    key, sep, raw = text.partition("=")
    if not sep:
        raise OverrideError([f"{shown}: expected key.path=value (e.g. spec.batch.micro=8)"])
    key = check_key(key.strip(), shown)
    return Override(key, read_value(raw, shown), text, flag)


def from_mapping(values: Mapping[str, Any]) -> list[Override]:
    """Overrides given in Python ({"spec.batch.micro": 8}): the values are taken as they are (typed by the
    caller), and validated with the spec like any other."""
    out = []
    for key, value in values.items():
        text = f"{key}={value!r}"
        out.append(Override(check_key(key, f"overrides[{key!r}]"), value, text, "overrides"))
    return out


def as_overrides(given: Mapping[str, Any] | Iterable[str | Override] | None) -> list[Override]:
    """A mapping, or `key=value` strings (CLI style), or Override objects: the API accepts each."""
    if given is None:
        return []
    if isinstance(given, Mapping):
        return from_mapping(given)
    if isinstance(given, str):
        return [parse(given)]
    return [g if isinstance(g, Override) else parse(g) for g in given]


def _put(data: dict[str, Any], override: Override) -> None:
    node: Any = data
    parts = override.parts
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) > len(node):
                raise OverrideError([f"{override}: {where}: the list has {len(node)} items; an index picks one of "
                                     "them, or the next to append"])
            index = int(part)
            if last:
                node[index:index + 1] = [override.value]
            else:
                if index == len(node):
                    node.append({})
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = override.value
            else:
                if node.get(part) is None:  # a field not set yet: a list where the next part is an index
                    node[part] = [] if parts[depth + 1].isdigit() else {}
                node = node[part]
        else:
            parent = ".".join(parts[:depth])
            raise OverrideError([f"{override}: {parent} is a single value ({node!r:.40}), it has no field {part}"])


def apply(job: TrainingJob, overrides: Iterable[Override], source: str = "<spec>") -> TrainingJob:
    """A new TrainingJob with every override applied, validated like a file; raises OverrideError."""
    overrides = list(overrides)
    if not overrides:
        return job
    data = job.model_dump(mode="json", by_alias=True, exclude_unset=True)
    for o in overrides:
        _put(data, o)
    try:
        return TrainingJob.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            path = loc_to_path(err["loc"])
            culprit = next((o for o in reversed(overrides) if o.covers(path)), None)
            given = ", ".join(str(o) for o in overrides if not o.internal)
            where = str(culprit) if culprit else f"{source} (with {given})" if given else source
            lines.append(f"{where}: {path or 'spec'}: {friendly_message(err)}")
        raise OverrideError(list(dict.fromkeys(lines))) from None


def apply_loaded(loaded: LoadedSpec, overrides: Iterable[Override]) -> LoadedSpec:
    """As apply, keeping the file's source and lines (a field an override set has no line in the file)."""
    overrides = list(overrides)
    if not overrides:
        return loaded
    job = apply(loaded.job, overrides, loaded.source)
    keys = [o.key for o in overrides]
    lines = {p: n for p, n in loaded.lines.items()
             if not any(p == k or p.startswith(k + ".") for k in keys)}
    return LoadedSpec(job=job, source=loaded.source, lines=lines)


def locate(loaded: LoadedSpec, overrides: Iterable[Override], field: str | None, message: str) -> str:
    """A finding on a field as one line: the override that set it, else `FILE:LINE: field: message`."""
    overrides = list(overrides)
    culprit = next((o for o in reversed(overrides) if field and o.covers(field)), None)
    if culprit is not None:
        return f"{culprit}: {field}: {message}"
    given = [str(o) for o in overrides if not o.internal]
    if given:  # the file's field, judged with the overrides' values: say which
        message += f" (with {', '.join(given)})"
    return located(loaded.source, loaded.line_of(field) if field else None, field, message)
