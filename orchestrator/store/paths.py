"""Where shardctl keeps its state on this machine (a leaf: imported by the store and by targets)."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """$SHARDCTL_HOME, else $XDG_STATE_HOME/shardctl, else ~/.local/state/shardctl."""
    if os.environ.get("SHARDCTL_HOME"):
        return Path(os.environ["SHARDCTL_HOME"]).expanduser().resolve()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser().resolve() / "shardctl"


def private_state_dir() -> Path:
    """The state directory, created 0700 whatever the umask, and made private if it exists with access for
    others (a directory created by an earlier version under umask 022): every record under it may name a
    job's secrets' sources, and its logs are the user's. Another user's directory is left alone (writing
    there is refused later), and so is the home directory itself."""
    from orchestrator.procfiles import make_private_dirs

    path = state_dir()
    make_private_dirs(path)
    info = path.stat()
    if info.st_uid == os.geteuid() and info.st_mode & 0o077 and path != Path.home().resolve():
        os.chmod(path, info.st_mode & 0o700)
    return path
