"""The secret environment of `entrypoint.env_from` on local and Slurm: checked at submit, read at launch.

Values are only ever held in memory and passed through process environments: never written to a
file, a record or a log (messages name the variable, the file and the line, never a value). A source
is a plain dict as the spec and the attempt request carry it: `{"env": NAME}` or `{"file": PATH}`.
Stdlib only: the attempt wrapper imports this.

A file holds KEY=VALUE lines: blank lines and `#` comments are skipped, an optional `export ` prefix is
allowed, one pair of matching surrounding quotes is removed from the value, and nothing else is
interpreted (no `$` expansion, no escapes), so that the Slurm batch script's reader (slurm_render) and
this one agree. It must be a regular file of the user's, readable by its owner only: a secret that
others can read is refused rather than spread further.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 64 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LINE = re.compile(r"[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)")


class SecretSourceError(ValueError):
    """A source cannot be used: the message names the variable or file, never a value."""


def resolve_path(path: str, workdir: str) -> str:
    """`~` is the user's home; a relative path is relative to the submit directory."""
    expanded = Path(path).expanduser()
    return str(expanded if expanded.is_absolute() else Path(workdir) / expanded)


def parse_env_file(text: str, source: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            raise SecretSourceError(f"{source}, line {number}: not a KEY=VALUE line")
        value = m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[m.group(1)] = value
    return out


def read_env_file(path: str) -> dict[str, str]:
    """The file's variables, once it is known to be a private regular file of this user's."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretSourceError(f"{path}: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        os.close(fd)
        raise SecretSourceError(f"{path}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        if info.st_uid != os.geteuid():
            raise SecretSourceError(f"{path}: belongs to another user (uid {info.st_uid})")
        if info.st_mode & 0o077:
            raise SecretSourceError(f"{path}: mode {stat.S_IMODE(info.st_mode):04o} lets other users read it; "
                                    f"make it private: chmod 600 {path}")
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise SecretSourceError(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; expected KEY=VALUE lines")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretSourceError(f"{path}: not UTF-8 text") from None
    return parse_env_file(text, path)


def check(source: Mapping[str, str], environ: Mapping[str, str], workdir: str) -> str | None:
    """Why this source cannot be used here (None when it can)."""
    if "env" in source:
        name = source["env"]
        if not _ENV_NAME.fullmatch(name):
            return f"{name!r} is not a variable name"
        if name not in environ:
            return f"{name} is not set in this environment (export it in the shell that runs shardctl)"
        return None
    if "file" in source:
        try:
            read_env_file(resolve_path(source["file"], workdir))
        except SecretSourceError as exc:
            return str(exc)
        return None
    return None  # a Kubernetes Secret: the cluster resolves it


def environment(sources: Iterable[Mapping[str, str]], environ: Mapping[str, str], workdir: str) -> dict[str, str]:
    """The variables to add to the run's environment, in order (a later source wins); raises SecretSourceError."""
    out: dict[str, str] = {}
    for source in sources:
        if "env" in source:
            name = source["env"]
            if name not in environ:
                raise SecretSourceError(f"{name} is not set in the environment of the process that starts the run "
                                        "(a shardctl started from a shell without it)")
            out[name] = environ[name]
        elif "file" in source:
            out.update(read_env_file(resolve_path(source["file"], workdir)))
    return out


def references(sources: Iterable[Any]) -> list[dict[str, str]]:
    """The spec's env_from items as plain dicts (what an attempt request carries): names and paths only."""
    return [{s.kind: getattr(s, s.kind)} for s in sources]
