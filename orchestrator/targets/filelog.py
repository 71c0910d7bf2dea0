"""An attempt's output as a growing file (local and Slurm write every process's output to one log).

Reads are bounded: at most READ_CHUNK bytes per call (a log that grew by gigabytes between two
reads is caught up over several calls, never loaded at once), and an unfinished line never holds
more than MAX_PARTIAL bytes: a progress bar redrawn with `\\r` for hours keeps only its latest
redraw, and a line with no end at all is passed on in pieces.

Every read opens the log without following a symlink (O_NOFOLLOW) and reads only a regular file:
a link planted at the log's name (`output.log -> /etc/shadow`) reads as nothing, with one note
saying so, never as the content of what it points to; a FIFO there never blocks the reader.
"""

from __future__ import annotations

import errno
import os
import stat

READ_CHUNK = 1 << 20
MAX_PARTIAL = 64 << 10
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotAPlainFile(OSError):
    """The log's name is a symlink or something other than a regular file: not read."""


def open_log_for_reading(path: str) -> int:
    """A file descriptor of the regular file at `path`, never through a symlink (NotAPlainFile), or OSError."""
    try:
        fd = os.open(path, _READ)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotAPlainFile(f"{path} is a symbolic link: not followed, not read") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotAPlainFile(f"{path} is not a regular file: not read")
    return fd


def read_tail(path: str, limit: int) -> str:
    """The last `limit` bytes of the log as text ('' if it cannot be read, or is not a plain file)."""
    try:
        fd = open_log_for_reading(path)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
        return f.read(limit).decode("utf-8", "replace")


class FileLog:
    """Yields complete new lines of a growing file; a missing file is simply empty so far."""

    poll_s = 0.0  # a local read costs nothing: read whenever the follower looks

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.noted = False

    def lines(self) -> list[str]:
        try:
            with os.fdopen(open_log_for_reading(self.path), "rb") as f:
                f.seek(self.offset)
                data = f.read(READ_CHUNK)
        except NotAPlainFile as exc:
            if self.noted:
                return []
            self.noted = True
            return [f"[shardctl] {exc}"]
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        out = [c.decode("utf-8", "replace") for c in complete]
        if len(self.partial) > MAX_PARTIAL:
            cut = self.partial.rfind(b"\r")
            if cut > 0:  # keep the latest redraw of a `\r` progress bar, drop the ones it replaced
                self.partial = self.partial[cut:]
            if len(self.partial) > MAX_PARTIAL:  # a line with no end in sight: pass it on in pieces
                out.append(self.partial.decode("utf-8", "replace"))
                self.partial = b""
        return out

    def rest(self) -> list[str]:
        out = self.lines()
        if self.partial:
            out.append(self.partial.decode("utf-8", "replace"))
            self.partial = b""
        return out
