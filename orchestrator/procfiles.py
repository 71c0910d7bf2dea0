"""Small stdlib helpers shared by the CLI, the supervisor and the attempt wrapper.

Files are written atomically (a reader sees the old file or the new one, never half), and
detached processes start in a session of their own with this very package importable.
Stdlib only: the attempt wrapper imports this, and the gap between attempts stays short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def write_text_atomically(path: Path, text: str, executable: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    if executable:
        tmp.chmod(0o755)
    os.replace(tmp, path)


def write_files(directory: Path, files: Mapping[str, str], executable: Sequence[str] = ()) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_text_atomically(directory / name, text, executable=name in executable)


def write_json(path: Path, data: dict) -> None:
    write_text_atomically(path, json.dumps(data, indent=1) + "\n")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_tail(path: str | Path, limit: int) -> str:
    """The last `limit` bytes of a file as text ('' if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def spawn_detached(module: str, args: Sequence[str], *, cwd: str, log_path: Path,
                   env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """`python -m MODULE ARGS` in a new session (it outlives the terminal and its parent), output
    appended to `log_path`, with this package first on PYTHONPATH even where it is not installed."""
    child_env = {**os.environ, **(env or {})}
    extra = child_env.get("PYTHONPATH")
    child_env["PYTHONPATH"] = f"{PACKAGE_ROOT}{os.pathsep}{extra}" if extra else PACKAGE_ROOT
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                env=child_env)
