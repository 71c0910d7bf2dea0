"""Load a TrainingJob from YAML, reporting every problem as `FILE:LINE: field: message`.

Only `yaml.safe_load`-equivalent parsing is used (SafeLoader), once to build the
values and once to remember where each key sits, so errors can point at a line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from orchestrator.errors import ShardctlError, located
from orchestrator.spec.models import TrainingJob

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

MAX_SPEC_BYTES = 1 << 20  # a job spec is a page of YAML; 1 MiB is generous and bounds the parser


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located as precisely as we can."""

    field: str  # dotted path such as spec.batch.micro, or "" for the whole document
    message: str
    line: int | None = None
    source: str = "<spec>"

    def __str__(self) -> str:
        return located(self.source, self.line, self.field, self.message)


@dataclass
class SpecError(ShardctlError):
    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


@dataclass(frozen=True)
class LoadedSpec:
    job: TrainingJob
    source: str
    lines: dict[str, int]  # dotted path -> 1-based line

    def line_of(self, path: str) -> int | None:
        return _nearest_line(self.lines, path)


def _nearest_line(lines: dict[str, int], path: str) -> int | None:
    """Line of `path`, else of its closest ancestor that appears in the file."""
    parts = path.split(".") if path else []
    while parts:
        key = ".".join(parts)
        if key in lines:
            return lines[key]
        parts.pop()
    return lines.get("")


def _index_lines(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path = f"{prefix}.{key}" if prefix else key
            out[path] = key_node.start_mark.line + 1
            _index_lines(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}.{i}" if prefix else str(i)
            out[path] = item.start_mark.line + 1
            _index_lines(item, path, out)


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    """Pydantic's loc, without the union/validator labels it inserts, as a dotted path."""
    parts: list[str] = []
    for item in loc:
        text = str(item)
        if text.startswith(("function-", "literal[", "list[")) or text in {"str", "int", "float", "bool", "dict"}:
            continue
        parts.append("global" if text == "global_" else text)
    return ".".join(parts)


def _friendly(err: ErrorDetails) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; see `shardctl schema`)"
    if kind == "missing":
        return "required field is missing"
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    if "input" in err and kind.endswith("_type"):
        return f"{msg} (got {type(err['input']).__name__} {err['input']!r})"[:300]
    return msg


def parse_spec_text(text: str, source: str = "<spec>") -> LoadedSpec:
    """Parse and validate; raises SpecError listing every problem found."""
    if len(text.encode("utf-8", errors="replace")) > MAX_SPEC_BYTES:
        raise SpecError([Problem("", f"file is larger than {MAX_SPEC_BYTES // 1024} KiB; a job spec is a short "
                                     "YAML document", source=source)])
    if not text.strip():
        raise SpecError([Problem("", "file is empty; expected a TrainingJob (see `shardctl schema`)", source=source)])
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([Problem("", f"YAML syntax error: {problem}", line=line, source=source)]) from None
    nodes = [n for n in nodes if n is not None]
    documents = [d for d in documents if d is not None]
    if not documents:
        raise SpecError([Problem("", "file is empty (only comments); expected a TrainingJob (see `shardctl schema`)",
                                 source=source)])
    if len(documents) != 1 or len(nodes) != 1:
        raise SpecError([Problem("", f"expected exactly one YAML document, found {len(documents)}", source=source)])
    data, node = documents[0], nodes[0]
    if not isinstance(data, dict):
        raise SpecError([Problem("", "expected a mapping (apiVersion, kind, metadata, spec), "
                                     f"got {type(data).__name__}",
                                 line=node.start_mark.line + 1, source=source)])
    lines: dict[str, int] = {"": node.start_mark.line + 1}
    _index_lines(node, "", lines)
    try:
        job = TrainingJob.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = _loc_to_path(err["loc"])
            problems.append(Problem(path, _friendly(err), _nearest_line(lines, path), source))
        raise SpecError(_dedupe(problems)) from None
    return LoadedSpec(job=job, source=source, lines=lines)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.field, p.message) not in seen:
            seen.add((p.field, p.message))
            out.append(p)
    return out


def load_spec(path: str | Path) -> LoadedSpec:
    """Read a spec file; size is checked before reading it whole."""
    p = Path(path)
    source = str(path)
    try:
        size = p.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError([Problem("", f"file is {size // (1024 * 1024)} MiB; a job spec must be under "
                                         f"{MAX_SPEC_BYTES // 1024} KiB", source=source)])
        raw = p.read_bytes()
    except OSError as exc:
        raise SpecError([Problem("", f"cannot read file: {exc.strerror or exc}", source=source)]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Problem("", f"file is not UTF-8 text (byte {exc.start})", source=source)]) from None
    return parse_spec_text(text, source)
