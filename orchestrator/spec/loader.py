"""Load a TrainingJob from YAML, reporting every problem as `FILE:LINE: field: message`.

A spec file is untrusted input (a colleague's, an example from the web, a CI artefact), so it is
read by one bounded composer (`load_yaml`, also what `shardctl convert` reads its input with):
PyYAML's safe loader, composed once into nodes (which remember their lines) and constructed from
those nodes, with these limits on top:

- at most `MAX_SPEC_BYTES`, read from a regular file only (never /dev/zero or a FIFO), the read
  itself bounded whatever the file claims to be;
- nesting at most `MAX_DEPTH` levels and at most `MAX_NODES` nodes, checked while composing, so a
  deep or huge document costs at most that much work (PyYAML's composer recurses per level);
- an alias (`*name`) may stand for a scalar only: an alias to a mapping or a list is how a few
  hundred bytes expand into billions of nodes (the "billion laughs"), and `a: &a [*a]` builds a
  cycle; neither is ever needed in a job spec;
- a key given twice in one mapping is an error naming both lines (YAML would keep the last one
  silently: `backend: deepspeed` ... `backend: fsdp`), and so are merge keys (`<<`);
- a value YAML cannot construct (`!!int abc`, a timestamp with month 13) is an error, not a crash.
"""

from __future__ import annotations

import copy
import json
import os
import select
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from orchestrator.errors import SpecError, located
from orchestrator.spec.models import TrainingJob

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

MAX_SPEC_BYTES = 128 << 10  # a job spec is a page of YAML; 128 KiB is generous and bounds the parser's time
MAX_DEPTH = 64  # a spec nests 5 levels deep
MAX_NODES = 5_000  # every scalar, list and mapping, aliases included; a spec has a few hundred
MAX_PROBLEMS = 50  # problems listed for one file; the rest are counted
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlRefused(yaml.MarkedYAMLError):
    """The document is over one of the limits, or uses what this loader refuses (an alias to a
    collection, a duplicate or merge key, a value that cannot be constructed)."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts nodes and depth and refuses aliases to collections, and whose
    constructor refuses duplicate keys and merge keys."""

    def __init__(self, stream: str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
        super().__init__(stream)
        self.max_depth, self.max_nodes = max_depth, max_nodes
        self.depth = self.nodes = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # The scanner looks ahead while a `[` or `{` may still start a key, and its bookkeeping is quadratic
        # in the open ones: stop it at the depth limit, before the composer would.
        if self.flow_level >= self.max_depth:
            raise YamlRefused(None, None, f"nested more than {self.max_depth} levels deep", self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        mark: Any = event.start_mark  # yaml.error.Mark (the stubs also allow the C parser's, unused here)
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise YamlRefused(None, None, f"more than {self.max_nodes} values: a job spec is a short document",
                              mark)
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None and not isinstance(target, ScalarNode):
                # an alias to its own unfinished collection (`&a [*a]`) lands here too
                kind = "mapping" if isinstance(target, MappingNode) else "list"
                raise YamlRefused(None, None, f"the alias *{event.anchor} stands for a {kind}: aliases may only "
                                  "repeat a single value (write the mapping or list out)", mark)
            if target is not None:  # a copy of the scalar where the alias is: its own line, no shared node
                end: Any = self.get_event().end_mark
                return ScalarNode(target.tag, target.value, mark, end, style=target.style)
            return super().compose_node(parent, index)  # an undefined alias: PyYAML's own error
        self.depth += 1
        if self.depth > self.max_depth:
            raise YamlRefused(None, None, f"nested more than {self.max_depth} levels deep", mark)
        node = super().compose_node(parent, index)
        self.depth -= 1
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # `!!int abc`, `2001-13-01`, `!!timestamp x`, `!!bool maybe`: PyYAML's own crashes
            raise YamlRefused(None, None, f"cannot read this value: {_one_line(str(exc))}",
                              node.start_mark) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                raise YamlRefused(None, None, "merge keys (<<) are not supported: write the keys out",
                                  key_node.start_mark)
        mapping = super().construct_mapping(node, deep)
        if len(mapping) != len(node.value):
            first: dict[Any, Node] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in first:
                    raise YamlRefused(
                        None, None, f"duplicate key {_shown(key)} (first on line {first[key].start_mark.line + 1}): "
                                    "YAML would keep only the last value, so give it once", key_node.start_mark)
                first[key] = key_node
        return mapping


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _one_line(text: str, limit: int = 300) -> str:
    """A message fit for one line: control characters escaped, long text cut."""
    out = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


def compose(text: str) -> list[Node]:
    """The documents of `text` as nodes, within the limits above; raises yaml.YAMLError."""
    loader = _BoundedLoader(text)
    try:
        nodes = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                nodes.append(node)
        return nodes
    finally:
        loader.dispose()


def construct(node: Node) -> Any:
    """The Python value of one composed document; raises yaml.YAMLError (a duplicate key, say)."""
    loader = _BoundedLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(text: str) -> Any:
    """Every YAML document of untrusted text, bounded as described above (None for an empty one);
    raises yaml.YAMLError, with a line where one is known."""
    return [construct(node) for node in compose(text)]


def load_json(text: str) -> Any:
    """Untrusted JSON with the same limits as YAML: depth, size, no duplicate keys (DeepSpeed refuses
    them too) and no NaN or Infinity (not JSON). Raises ValueError with a one-line message."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"duplicate key {_shown(key)}: give it once")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"line {exc.lineno}: {exc.msg}") from None
    nodes, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
        if nodes > MAX_NODES:
            raise ValueError(f"more than {MAX_NODES} values")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return value


def yaml_problem(exc: yaml.YAMLError, text: str = "") -> tuple[int | None, str]:
    """(line, one-line message) for any error PyYAML or the limits above raise."""
    if isinstance(exc, yaml.reader.ReaderError):
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        line = text.count("\n", 0, exc.position) + 1 if text else None
        return line, f"unacceptable character {char}: {exc.reason}"
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc)
    return line, _one_line(problem)


def _yaml_kind(exc: yaml.YAMLError) -> str:
    return "YAML" if isinstance(exc, YamlRefused) else "YAML syntax error"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located as precisely as we can."""

    field: str  # dotted path such as spec.batch.micro, or "" for the whole document
    message: str
    line: int | None = None
    source: str = "<spec>"

    def __str__(self) -> str:
        return located(_one_line(self.source, 500), self.line, _one_line(self.field, 200), _one_line(self.message))


class InvalidFieldRead(Exception):
    """A cross-field rule read a field of a partial spec whose value was invalid: its verdict means nothing."""


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


def _index_lines(root: Node, source: str) -> tuple[dict[str, int], list[Problem]]:
    """Dotted path -> line of every key and item, and a problem for each key given twice in a mapping.
    Iterative, and it visits each node once: an alias (the same node again) is never followed."""
    out: dict[str, int] = {"": root.start_mark.line + 1}
    problems: list[Problem] = []
    seen: set[int] = set()
    stack: list[tuple[Node, str]] = [(root, "")]
    while stack:
        node, prefix = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    continue
                key = str(key_node.value)
                path = f"{prefix}.{key}" if prefix else key
                line = key_node.start_mark.line + 1
                ident = (key_node.tag, key)
                if ident in first:
                    problems.append(Problem(path, f"duplicate key (also on line {first[ident]}): YAML would keep only "
                                                  "the last value, so give it once", line, source))
                    continue
                first[ident] = line
                out[path] = line
                stack.append((value_node, path))
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                path = f"{prefix}.{i}" if prefix else str(i)
                out[path] = item.start_mark.line + 1
                stack.append((item, path))
    problems.sort(key=lambda p: p.line or 0)
    return out, problems


_LABELS = {"str", "int", "float", "bool", "dict"}


def _is_label(item: Any) -> bool:
    text = str(item)
    return text.startswith(("function-", "literal[", "list[", "model[")) or text in _LABELS


def loc_to_path(loc: tuple[Any, ...]) -> str:
    """A pydantic error's loc as the spec's dotted field path (`spec.batch.global`), without the union and validator
    labels pydantic inserts: how every spec error names its field (the loader, --set, the Python API)."""
    return ".".join("global" if str(item) == "global_" else str(item) for item in loc if not _is_label(item))


def friendly_message(err: ErrorDetails) -> str:
    """A pydantic error in the words a spec error shows: an unknown or missing field said plainly, a validator's
    message without pydantic's "Value error, " prefix, a wrong type with the value that was given."""
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; see `shardctl schema`)"
    if kind == "missing":
        return "required field is missing"
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    if "input" in err and kind.endswith("_type"):
        return f"{msg} (got {type(err['input']).__name__} {_shown(err['input'], 100)})"
    return msg


def parse_spec_text(text: str, source: str = "<spec>") -> LoadedSpec:
    """Parse and validate; raises SpecError listing every problem found."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_SPEC_BYTES:
        raise SpecError([Problem("", f"file is larger than {MAX_SPEC_BYTES // 1024} KiB; a job spec is a short "
                                     "YAML document", source=source)])
    if not text.strip():
        raise SpecError([Problem("", "file is empty; expected a TrainingJob (see `shardctl schema`)", source=source)])
    try:
        nodes = compose(text)
    except yaml.YAMLError as exc:
        line, message = yaml_problem(exc, text)
        raise SpecError([Problem("", f"{_yaml_kind(exc)}: {message}", line=line, source=source)]) from None
    nodes = [n for n in nodes if not (isinstance(n, ScalarNode) and n.tag == "tag:yaml.org,2002:null")]
    if not nodes:
        raise SpecError([Problem("", "file is empty (only comments); expected a TrainingJob (see `shardctl schema`)",
                                 source=source)])
    if len(nodes) != 1:
        raise SpecError([Problem("", f"expected exactly one YAML document, found {len(nodes)}", source=source)])
    node = nodes[0]
    if not isinstance(node, MappingNode):
        kind = "list" if isinstance(node, SequenceNode) else "scalar"
        raise SpecError([Problem("", f"expected a mapping (apiVersion, kind, metadata, spec), got a {kind}",
                                 line=node.start_mark.line + 1, source=source)])
    lines, duplicates = _index_lines(node, source)
    if duplicates:
        raise SpecError(_capped(duplicates, source))
    try:
        data = construct(node)
    except yaml.YAMLError as exc:
        line, message = yaml_problem(exc)
        raise SpecError([Problem("", f"{_yaml_kind(exc)}: {message}", line=line, source=source)]) from None
    try:
        job = TrainingJob.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = loc_to_path(err["loc"])
            problems.append(Problem(path, friendly_message(err), _nearest_line(lines, path), source))
        partial = _partial(data, exc.errors())
        raise SpecError(_capped(_dedupe(problems), source),
                        LoadedSpec(partial, source, lines) if partial is not None else None) from None
    return LoadedSpec(job=job, source=source, lines=lines)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.field, p.message) not in seen:
            seen.add((p.field, p.message))
            out.append(p)
    return out


def _capped(problems: list[Problem], source: str) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    rest = len(problems) - MAX_PROBLEMS
    return [*problems[:MAX_PROBLEMS], Problem("", f"... and {rest} more problems", source=source)]


# Schema errors and cross-field rule errors in one round: the spec with every invalid field taken out
# (its default in its place) is validated again; where that succeeds, each field that was taken out
# is replaced by a value that raises InvalidFieldRead as soon as a rule reads it. A rule that runs to
# the end then never depended on an invalid field, and its verdict stands whatever the fix will be.

_MAX_ROUNDS = 6


def _partial(data: Any, errors: list[ErrorDetails]) -> TrainingJob | None:
    if not isinstance(data, dict):
        return None
    data = copy.deepcopy(data)  # at most MAX_DEPTH deep
    taken: list[tuple[Any, ...]] = []
    for _ in range(_MAX_ROUNDS):
        for err in errors:
            loc = tuple(item for item in err["loc"] if not _is_label(item))
            if err["type"] == "missing" and loc in taken:
                _put(data, loc, "x")  # a required field taken out below: any stand-in, it is replaced by an _Invalid
                continue
            if err["type"] in ("missing", "extra_forbidden"):
                loc = loc[:-1]  # the object that lacks a field or has an unknown one: its intent is unknown
            while loc and isinstance(loc[-1], int):
                loc = loc[:-1]  # an item of a list: the whole list
            if len(loc) < 2 or loc in taken:
                return None  # the whole spec or its metadata is wrong, or taking the field out does not help
            _take_out(data, loc)
            taken.append(loc)
        try:
            job = TrainingJob.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
            continue
        for loc in taken:
            job = _poisoned(job, [str(p) for p in loc])
        return job
    return None


def _parent(data: Any, loc: tuple[Any, ...]) -> Any:
    node = data
    for part in loc[:-1]:
        if not isinstance(node, dict) or part not in node:
            return None  # already gone with an ancestor taken out in the same round
        node = node[part]
    return node if isinstance(node, dict) else None


def _take_out(data: Any, loc: tuple[Any, ...]) -> None:
    parent = _parent(data, loc)
    if parent is not None:
        parent.pop(loc[-1], None)


def _put(data: Any, loc: tuple[Any, ...], value: Any) -> None:
    parent = _parent(data, loc)
    if parent is not None:
        parent[loc[-1]] = value


class _Invalid:
    """Stands for a field whose value was invalid; reading it in any way raises InvalidFieldRead."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __getattr__(self, name: str) -> Any:
        raise InvalidFieldRead(self.path)

    def __repr__(self) -> str:
        return f"<invalid {self.path}>"


def _read_invalid(self: _Invalid, *_: Any) -> Any:
    raise InvalidFieldRead(self.path)


for _name in ("eq", "ne", "lt", "le", "gt", "ge", "hash", "bool", "len", "iter", "contains", "getitem", "int",
              "float", "index", "str", "format", "add", "radd", "sub", "rsub", "mul", "rmul", "mod", "rmod",
              "floordiv", "rfloordiv", "truediv", "rtruediv", "neg", "abs"):
    setattr(_Invalid, f"__{_name}__", _read_invalid)


def _poisoned(model: BaseModel, parts: list[str], prefix: str = "") -> Any:
    """A copy of `model` with the field at `parts` (or the deepest model field on the way: a list, a
    map) replaced by an _Invalid; list items and map entries poison their whole field."""
    name = next((n for n, f in type(model).model_fields.items() if parts and parts[0] in (n, f.alias)), None)
    if name is None:
        return _Invalid(prefix or "<spec>")
    path = f"{prefix}.{parts[0]}" if prefix else parts[0]
    value = getattr(model, name)
    if len(parts) > 1 and isinstance(value, BaseModel):
        replacement = _poisoned(value, parts[1:], path)
    else:
        replacement = _Invalid(path)
    return model.model_copy(update={name: replacement})


PIPE_IDLE_S = 10.0  # a pipe (`... | shardctl validate /dev/stdin`) that sends nothing for this long is given up on


def read_input_file(path: str | Path, limit: int = MAX_SPEC_BYTES) -> bytes:
    """At most `limit` bytes of a regular file or a pipe, else SpecError. The read itself is bounded
    (a file's size may say nothing: /proc, a growing file); a device (/dev/zero, a terminal), a
    directory or a socket is refused without reading from it. A pipe or FIFO is opened without
    waiting for a writer and read without blocking: no writer is an empty file, a writer that sends
    nothing for PIPE_IDLE_S an error."""
    source = str(path)

    def problem(message: str) -> SpecError:
        return SpecError([Problem("", message, source=source)])

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise problem(f"cannot read file: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        pipe = stat.S_ISFIFO(info.st_mode)
        if not (stat.S_ISREG(info.st_mode) or pipe):
            kind = ("a directory" if stat.S_ISDIR(info.st_mode)
                    else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                    else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a file")
            raise problem(f"cannot read file: it is {kind}, not a regular file")
        if info.st_size > limit:
            raise problem(f"file is {_size(info.st_size)}; it must be under {limit // 1024} KiB")
        chunks, total = [], 0
        while total <= limit:
            try:
                chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            except BlockingIOError:  # a pipe whose writer has not written yet
                if not select.select([fd], [], [], PIPE_IDLE_S)[0]:
                    raise problem(f"nothing arrived on the pipe for {PIPE_IDLE_S:.0f} s") from None
                continue
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise problem(f"file is larger than {limit // 1024} KiB; a job spec is a short YAML document")
        return b"".join(chunks)
    except OSError as exc:
        raise problem(f"cannot read file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _size(n: int) -> str:
    return f"{n // (1 << 20)} MiB" if n >= 1 << 20 else f"{n // 1024} KiB"


def decode_text(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Problem("", f"file is not UTF-8 text (byte {exc.start})", source=source)]) from None


def load_spec(path: str | Path) -> LoadedSpec:
    """Read a spec file (a regular file, its read bounded) and parse it."""
    source = str(path)
    return parse_spec_text(decode_text(read_input_file(path), source), source)
