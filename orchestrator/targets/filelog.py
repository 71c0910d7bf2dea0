"""An attempt's output as a growing file (local and Slurm write every process's output to one log)."""

from __future__ import annotations


class FileLog:
    """Yields complete new lines of a growing file; a missing file is simply empty so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        return [c.decode("utf-8", "replace") for c in complete]

    def rest(self) -> list[str]:
        out = self.lines()
        if self.partial:
            out.append(self.partial.decode("utf-8", "replace"))
            self.partial = b""
        return out
