"""The outcome of a function as marked lines at the end of rank 0's log, where nothing can be written home.

On Kubernetes the pods cannot write to the submitting machine and the controller reads no Secret or log,
so the runner prints the outcome (what `result.pkl` would hold) as base64 in lines of its own:

    SHARDCTL-RESULT v1 RANK I/N SHA256 CHUNK      (I = 1..N; the chunks joined are the pickle)
    SHARDCTL-RESULT v1 RANK too-big BYTES         (the value is over MAX_RESULT_BYTES: not printed)

Each line is under PIPE_BUF and written with one write(2), so the other ranks of the pod, which share its
stdout, cannot tear it; the digest tells a cut or mixed set from a whole one. The CLI reads them from the
final attempt's rank-0 pod (`targets/kubernetes/function.py`) and unpickles nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass

from orchestrator.errors import ResultTooBig as ResultTooBig  # kept importable here (tests)

MARK = "SHARDCTL-RESULT v1"
# A log is not a store: a bigger value belongs on a volume (its path is the result). Base64 adds a third.
MAX_RESULT_BYTES = 256 << 10
CHUNK = 3000  # base64 characters per line: with the header, under PIPE_BUF (4096), one atomic write


@dataclass(frozen=True)
class Found:
    """One rank's outcome in a log: the pickle, or only its size when it was too big to print."""

    rank: int
    data: bytes | None
    size: int


def lines(rank: int, data: bytes, limit: int = MAX_RESULT_BYTES) -> list[str]:
    """The marked lines that carry `data` (an encoded outcome), or the one line saying it is too big."""
    if len(data) > limit:
        return [f"{MARK} {rank} too-big {len(data)}"]
    text = base64.b64encode(data).decode("ascii")
    digest = hashlib.sha256(data).hexdigest()
    chunks = [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
    return [f"{MARK} {rank} {i}/{len(chunks)} {digest} {chunk}" for i, chunk in enumerate(chunks, 1)]


def emit(rank: int, data: bytes, fd: int = 1, limit: int = MAX_RESULT_BYTES) -> None:
    """Write the lines to `fd` (stdout), each with a single write so that no other rank's output tears it."""
    for line in lines(rank, data, limit):
        os.write(fd, ("\n" + line + "\n").encode("ascii"))  # a line of its own even after a partial line


def parse(log: str) -> list[Found]:
    """Every complete, intact outcome in `log`, in the order they end (a set with a chunk missing or a digest
    that does not match is not one)."""
    sets: dict[tuple[int, str], dict[int, str]] = {}
    counts: dict[tuple[int, str], int] = {}
    found: list[Found] = []
    for raw in log.splitlines():
        line = raw.strip()
        if not line.startswith(MARK + " "):
            continue
        words = line[len(MARK) + 1:].split(" ")
        try:
            rank = int(words[0])
            if words[1] == "too-big" and len(words) == 3:
                found.append(Found(rank, None, int(words[2])))
                continue
            index, _, total = words[1].partition("/")
            digest, chunk = words[2], words[3] if len(words) > 3 else ""
            key = (rank, digest)
            sets.setdefault(key, {})[int(index)] = chunk
            counts[key] = int(total)
        except (IndexError, ValueError):
            continue  # a line that only looks like one
        parts = sets[key]
        if len(parts) == counts[key] and all(i in parts for i in range(1, counts[key] + 1)):
            try:
                data = base64.b64decode("".join(parts[i] for i in range(1, counts[key] + 1)), validate=True)
            except ValueError:
                del sets[key]
                continue
            del sets[key]
            if hashlib.sha256(data).hexdigest() == digest:
                found.append(Found(rank, data, len(data)))
    return found


def choose(found: list[Found]) -> Found | None:
    """Rank 0's last outcome, else the lowest rank's (a rank that raised before rank 0 said anything)."""
    if not found:
        return None
    zero = [f for f in found if f.rank == 0]
    return zero[-1] if zero else min(found, key=lambda f: f.rank)
