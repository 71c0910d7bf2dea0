"""Which checkpoint the next attempt resumes from: the newest complete one.

A run killed while saving (a node fault, a kill, a full disk) leaves a newest checkpoint that is half
written, and a script that trusts "the newest directory" or a marker written before the files dies
again on load, or silently trains from garbage. Before an attempt starts, the supervisor lists the
checkpoint directory's candidates newest first and takes the first one whose files are whole; the
attempt gets it as SHARDCTL_RESUME_FROM and its history says which newer ones were passed over, and
why.

Candidates: the directory the `latest.json` marker names (the convention of examples/train_tiny.py),
then every subdirectory whose name ends in a number (`step_40`, `checkpoint-40`, `global_step40`),
highest number first. "Whole" is read from the files' own formats, without loading them (no torch
here; a checkpoint may be tens of GB): a torch.save file (`.pt`, `.bin`, `.pth`) is a zip archive
whose central directory sits at its very end, so a cut file has none (so are accelerate's `.pkl` RNG
states: any file that starts as a zip is checked as one); a safetensors file's header
gives the end of its last tensor, which the file must reach; a pickle ends with the STOP opcode; a
DeepSpeed `latest` tag names a directory that exists; no file is empty. Other files are only read.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "latest.json"
MAX_FILES = 10_000  # a checkpoint with more files than this is taken as it is (checked no further)
_NUMBERED = re.compile(r".*?([0-9]+)$")
_TORCH = (".pt", ".bin", ".pth")
_SAFETENSORS_HEADER_MAX = 100 * 2**20


@dataclass(frozen=True)
class Choice:
    path: Path | None  # the newest complete checkpoint, None when there is none
    passed_over: list[tuple[str, str]] = field(default_factory=list)  # (newer candidate, why not)

    def summary(self) -> str | None:
        """One line for the attempt's record (`resume_from`); None when there is nothing to resume from and
        nothing was passed over."""
        skipped = "; ".join(f"{name} passed over: {why}" for name, why in self.passed_over)
        if self.path is None:
            return f"nothing complete ({skipped})" if skipped else None
        return f"{self.path.name}" + (f" ({skipped})" if skipped else "")


def choose(checkpoint_dir: str | Path | None) -> Choice:
    if not checkpoint_dir:
        return Choice(None)
    root = Path(checkpoint_dir)
    passed: list[tuple[str, str]] = []
    for candidate in candidates(root):
        problem = incomplete(candidate)
        if problem is None:
            return Choice(candidate, passed)
        passed.append((candidate.name, problem))
    return Choice(None, passed)


def candidates(root: Path) -> list[Path]:
    """Newest first: the marker's directory, then the numbered subdirectories by their number."""
    out: list[Path] = []
    try:
        marker = json.loads((root / MARKER).read_text())
        named = root / str(marker["dir"])
        if named.is_dir() and named.parent == root:
            out.append(named)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        numbered = [(int(m[1]), p) for p in root.iterdir()
                    if p.is_dir() and not p.is_symlink() and (m := _NUMBERED.fullmatch(p.name))]
    except OSError:
        numbered = []
    for _, path in sorted(numbered, key=lambda item: item[0], reverse=True):
        if path not in out:
            out.append(path)
    return out


def incomplete(path: Path) -> str | None:
    """Why the checkpoint at `path` is not whole, or None when every file checks out."""
    files = []
    for directory, _, names in os.walk(path):
        files += [Path(directory) / n for n in names]
        if len(files) > MAX_FILES:
            return None
    if not files:
        return "it is empty"
    for f in sorted(files):
        if (why := _file_problem(f)) is not None:
            return f"{f.relative_to(path)} {why}"
    return None


def _file_problem(f: Path) -> str | None:
    try:
        size = f.stat().st_size
        if size == 0:
            return "is empty"
        name = f.name
        with f.open("rb") as fh:
            zipped = fh.read(4) == b"PK\x03\x04"
        if name.endswith(_TORCH) or zipped:  # accelerate's random_states_N.pkl are torch.save files too
            return _zip_problem(f)
        if name.endswith(".safetensors"):
            return _safetensors_problem(f, size)
        if name.endswith(".pkl"):
            with f.open("rb") as fh:
                fh.seek(-1, os.SEEK_END)
                return None if fh.read(1) == b"." else "is cut short (a pickle ends with its STOP opcode)"
        if name == "latest":  # DeepSpeed's tag file: the name of the directory beside it that holds the states
            tag = f.read_text(errors="replace").strip()[:200]
            return None if tag and (f.parent / tag).is_dir() else f"names {tag!r}, which is not there"
        with f.open("rb") as fh:  # readable at all
            fh.read(1)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def _zip_problem(f: Path) -> str | None:
    """torch.save's format since 1.6 is a zip: a file cut anywhere has no end-of-central-directory record.
    (The legacy pickle format, not a zip, is taken as it is.)"""
    with f.open("rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":
        return None
    try:
        with zipfile.ZipFile(f) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        return f"is cut short ({exc})"
    return None


def _safetensors_problem(f: Path, size: int) -> str | None:
    with f.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            return "is cut short (no header)"
        (length,) = struct.unpack("<Q", raw)
        if length > min(size - 8, _SAFETENSORS_HEADER_MAX):
            return "is cut short (its header runs past the end)"
        try:
            header = json.loads(fh.read(length))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "has a damaged header"
    if 8 + length + end > size:
        return f"is cut short ({size} bytes of {8 + length + end})"
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m orchestrator.supervise.checkpoints DIR`: the newest complete checkpoint's path on stdout (nothing
    when there is none), and what was passed over on stderr. A requeued Slurm attempt restarts its batch script
    without a supervisor in between: the script asks this to choose what to resume from."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m orchestrator.supervise.checkpoints CHECKPOINT_DIR", file=sys.stderr)
        return 2
    choice = choose(args[0])
    for name, why in choice.passed_over:
        print(f"[shardctl] checkpoint {name} passed over: {why}", file=sys.stderr)
    if choice.path is not None:
        print(choice.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
