"""An attempt's output as a growing file (local and Slurm write every process's output to one log).

Reads are bounded: at most READ_CHUNK bytes per call (a log that grew by gigabytes between two
reads is caught up over several calls, never loaded at once), and an unfinished line never holds
more than MAX_PARTIAL bytes: a progress bar redrawn with `\\r` for hours keeps only its latest
redraw, and a line with no end at all is passed on in pieces.
"""

from __future__ import annotations

READ_CHUNK = 1 << 20
MAX_PARTIAL = 64 << 10


class FileLog:
    """Yields complete new lines of a growing file; a missing file is simply empty so far."""

    poll_s = 0.0  # a local read costs nothing: read whenever the follower looks

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(READ_CHUNK)
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
