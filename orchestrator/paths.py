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
