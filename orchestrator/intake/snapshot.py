"""The user's code, frozen at submit: every attempt of a job runs the same files, whatever is edited later.

`spec.workdir` names the directory holding the code. At submit its files are listed the way git
sees them (`git ls-files`: tracked plus untracked, less what .gitignore, .git/info/exclude and the
global excludes leave out; a directory outside any git work tree is listed through a throw-away
index, so its .gitignore files count the same), checked against a size cap, and copied into

    $SHARDCTL_HOME/snapshots/<sha256>/code/           the files, read-only (0400/0500, dirs 0500)
    $SHARDCTL_HOME/snapshots/<sha256>/snapshot.json   digest, file count, bytes, first source

named by the digest of what was copied (each path, its kind and its content's sha256), so the
points of a sweep share one copy and `status` can say which code an attempt ran. The job's
working directory becomes `code/`: every target starts each attempt there, so the script and
every relative path in its arguments resolve inside the snapshot. The tree is built in a private
temporary directory and published by one rename (atomic on NFS too); a second submit of the same
content keeps the first copy. A symlink is kept only when it points inside the tree; special files,
nested repositories and symlinks out of the tree are skipped, each named in a warning.

Listing and copying a big tree takes a while (100,000 files: about a minute): once one of them has run
for PROGRESS_AFTER_S, it reports the files and bytes so far to a `progress` callback (a Progress, at most
every PROGRESS_EVERY_S, and once more when it is done); the CLI prints them on stderr.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import SnapshotError

if TYPE_CHECKING:  # only annotations: `status` reads a snapshot's manifest without pydantic's models
    from orchestrator.spec.models import TrainingJob

MAX_BYTES = 256 * 2**20
MAX_FILES = 20_000
MAX_BYTES_ENV = "SHARDCTL_SNAPSHOT_MAX_SIZE"
MAX_FILES_ENV = "SHARDCTL_SNAPSHOT_MAX_FILES"
CODE = "code"
MANIFEST = "snapshot.json"
USED = "used"  # its mtime: when a submit last adopted the snapshot (mark_used), for gc's grace period
_CHUNK = 1 << 20
_SHOWN = 5  # offenders named in a cap error
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
PROGRESS_AFTER_S = 2.0  # work shorter than this reports no progress (read at each call: tests lower it)
PROGRESS_EVERY_S = 0.5  # at most one report per this many seconds


@dataclass(frozen=True)
class Progress:
    """Long work on a snapshot so far: `phase` is "listing" (the files and their sizes), "reading" (the digest,
    to find a copy made before) or "copying"; the totals are known once the listing is done."""

    phase: str
    files: int
    bytes: int
    elapsed_s: float
    total_files: int | None = None
    total_bytes: int | None = None
    done: bool = False  # the phase ended (sent only when a report of it was sent before)

    def text(self) -> str:
        """One line: `spec.workdir: copying 1,234 of 100,000 files (1.2 MiB of 80.0 MiB), 5 s`."""
        files = f"{self.files:,}" + (f" of {self.total_files:,}" if self.total_files is not None else "")
        size = size_text(self.bytes) + (f" of {size_text(self.total_bytes)}" if self.total_bytes is not None else "")
        if self.done:
            past = {"listing": "listed", "reading": "read", "copying": "copied"}.get(self.phase, self.phase)
            return f"spec.workdir: {past} {self.files:,} files ({size_text(self.bytes)}) in {self.elapsed_s:.0f} s"
        return f"spec.workdir: {self.phase} {files} files ({size}), {self.elapsed_s:.0f} s"


ProgressFn = Callable[[Progress], None]


class _Reporter:
    """Counts files and bytes as they are done and reports them to `callback` once the work has run for
    `after_s` (default PROGRESS_AFTER_S), at most every PROGRESS_EVERY_S; a phase that reported ends with a
    report marked done."""

    def __init__(self, callback: ProgressFn | None, after_s: float | None = None) -> None:
        self.callback = callback
        self.after_s = PROGRESS_AFTER_S if after_s is None else after_s
        self.started = self.last = time.monotonic()
        self.reported = False
        self.phase = ""
        self.files = self.bytes = 0
        self.total_files: int | None = None
        self.total_bytes: int | None = None

    def begin(self, phase: str, total_files: int | None = None, total_bytes: int | None = None) -> None:
        """A new phase of the same work: the counts start again, the clock does not."""
        self.end()
        self.phase, self.files, self.bytes = phase, 0, 0
        self.total_files, self.total_bytes = total_files, total_bytes

    def step(self, files: int = 1, nbytes: int = 0) -> None:
        self.files += files
        self.bytes += nbytes
        if self.callback is None:
            return
        now = time.monotonic()
        if now - self.started < self.after_s or (self.reported and now - self.last < PROGRESS_EVERY_S):
            return
        self.last, self.reported = now, True
        self.callback(self._progress(now, done=False))

    def end(self) -> None:
        """The phase is over: a last report, only if this phase reported before."""
        if self.callback is not None and self.reported and self.phase:
            self.callback(self._progress(time.monotonic(), done=True))
        self.reported = False

    def _progress(self, now: float, done: bool) -> Progress:
        return Progress(self.phase, self.files, self.bytes, now - self.started, self.total_files, self.total_bytes,
                        done)


@dataclass(frozen=True)
class Entry:
    path: str  # relative, '/'-separated
    kind: str  # "file", "exec" (a file with the owner's execute bit) or "link"
    size: int = 0
    link: str = ""  # a link's target, relative to the link's directory


@dataclass(frozen=True)
class Plan:
    """What a snapshot of `source` will hold, checked against the caps; nothing copied yet."""

    source: Path
    entries: tuple[Entry, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def holds(self, path: str) -> bool:
        """Whether the snapshot will have `path` (relative to the source) among its files."""
        wanted = os.path.normpath(path)
        return any(e.path == wanted for e in self.entries)


@dataclass(frozen=True)
class Snapshot:
    digest: str  # "sha256:<hex>"
    path: str  # the code directory: the job's working directory
    files: int
    bytes: int
    source: str

    def as_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "path": self.path, "files": self.files, "bytes": self.bytes,
                "source": self.source}


def limits(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """The caps: SHARDCTL_SNAPSHOT_MAX_SIZE (e.g. 1GiB) and SHARDCTL_SNAPSHOT_MAX_FILES, else 256 MiB and 20,000."""
    from orchestrator.spec.quantity import parse_bytes

    env = os.environ if env is None else env
    try:
        max_bytes = parse_bytes(env[MAX_BYTES_ENV]) if env.get(MAX_BYTES_ENV) else MAX_BYTES
    except ValueError:
        raise SnapshotError(f"{MAX_BYTES_ENV}={env[MAX_BYTES_ENV]!r} is not a size such as 512MiB or 2GiB") from None
    raw = env.get(MAX_FILES_ENV) or str(MAX_FILES)
    if not raw.isdigit() or int(raw) < 1:
        raise SnapshotError(f"{MAX_FILES_ENV}={raw!r} is not a positive whole number")
    return max_bytes, int(raw)


def resolve_source(workdir: str, spec_file: str | None, cwd: str) -> Path:
    """spec.workdir made absolute: relative to the spec file's directory, or to `cwd` for a spec given as data."""
    base = Path(spec_file).parent if spec_file and not spec_file.startswith("<") else Path(cwd)
    path = (base / Path(workdir).expanduser()).resolve()
    if not path.is_dir():
        raise SnapshotError(f"{workdir!r} ({path}) is not a directory")
    return path


@dataclass(frozen=True)
class Frozen:
    """A job whose code is to be snapshotted: paths outside the code made absolute, and what the copy holds."""

    job: TrainingJob
    plan: Plan


def prepare(job: TrainingJob, spec_file: str | None, cwd: str, env: Mapping[str, str] | None = None,
            progress: ProgressFn | None = None) -> Frozen | None:
    """Check spec.workdir and list its files (None when it is unset): every check of the snapshot, nothing
    copied. The recorded job names its source absolutely and the script relative to it; a relative
    checkpoint.dir and env_from file keep resolving against `cwd` (the submit's directory, as without a
    snapshot): data and secrets stay out of the copy. `progress`: see Progress."""
    from orchestrator.compile.launch import MODULE_PREFIX

    spec = job.spec
    if spec.workdir is None:
        return None
    max_bytes, max_files = limits(env)
    source = resolve_source(spec.workdir, spec_file, cwd)
    script = spec.entrypoint.script
    if not script.startswith(MODULE_PREFIX):
        given = Path(script).expanduser()
        if given.is_absolute():
            real = given.resolve()
            if not real.is_relative_to(source):
                raise SnapshotError(f"{script} is outside spec.workdir ({source}), so the snapshot would not hold "
                                    "it: give it relative to spec.workdir", "spec.entrypoint.script")
            script = real.relative_to(source).as_posix()
    found = plan(source, max_bytes, max_files, progress=progress)
    if not script.startswith(MODULE_PREFIX) and not found.holds(script):
        why = "left out by .gitignore" if (source / script).is_file() else "no such file"
        raise SnapshotError(f"{script} is not among the files a snapshot of spec.workdir ({source}) holds: {why}",
                            "spec.entrypoint.script")
    base = Path(cwd)
    entry = spec.entrypoint.model_copy(update={"script": script, "env_from": [
        s.model_copy(update={"file": str(base / s.file)}) if s.file and not Path(s.file).expanduser().is_absolute()
        else s for s in spec.entrypoint.env_from]})
    ckpt = spec.checkpoint.dir
    checkpoint = spec.checkpoint.model_copy(update={"dir": str((base / ckpt).resolve()) if ckpt else None})
    notify = [hook.model_copy(update={name: _absolute_file(ref, base) for name in ("url", "signing_secret")
                                      if (ref := getattr(hook, name)) is not None}) for hook in spec.notify]
    return Frozen(job.with_spec(workdir=str(source), entrypoint=entry, checkpoint=checkpoint, notify=notify), found)


def _absolute_file(ref: Any, base: Path) -> Any:
    """A spec.notify reference to a relative file, made absolute against the submit's directory (as env_from's)."""
    if ref.file and not Path(ref.file).expanduser().is_absolute():
        return ref.model_copy(update={"file": str(base / ref.file)})
    return ref


# --- listing ---------------------------------------------------------------------------------------------


def plan(source: Path, max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES, *, progress: ProgressFn | None = None,
         progress_after_s: float | None = None) -> Plan:
    """List what a snapshot of `source` holds (as git would), and refuse it past a cap (SnapshotError
    naming the biggest offenders). A listing that takes over `progress_after_s` (PROGRESS_AFTER_S) reports
    to `progress`."""
    source = source.resolve()
    entries: list[Entry] = []
    warnings: list[str] = []
    reporter = _Reporter(progress, progress_after_s)
    reporter.begin("listing")
    for rel in _listed(source):
        entry = _entry(source, rel, warnings)
        if entry is not None:
            entries.append(entry)
            reporter.step(1, entry.size)
    reporter.end()
    entries.sort(key=lambda e: e.path)
    found = Plan(source, tuple(entries), tuple(warnings))
    if found.bytes > max_bytes:
        biggest = sorted((e for e in entries if e.size), key=lambda e: -e.size)[:_SHOWN]
        raise SnapshotError(
            f"{source} holds {size_text(found.bytes)} of code to snapshot, over the cap of {size_text(max_bytes)}: "
            "biggest " + ", ".join(f"{e.path} ({size_text(e.size)})" for e in biggest)
            + f"; list data, checkpoints and outputs in .gitignore (they belong outside the code), or raise the cap "
            f"with {MAX_BYTES_ENV}")
    if len(entries) > max_files:
        per_dir = Counter(e.path.split("/", 1)[0] + ("/" if "/" in e.path else "") for e in entries)
        shown = ", ".join(f"{d} ({n} files)" for d, n in per_dir.most_common(_SHOWN))
        raise SnapshotError(
            f"{source} holds {len(entries)} files to snapshot, over the cap of {max_files}: most in {shown}; list "
            f"what the script does not need in .gitignore, or raise the cap with {MAX_FILES_ENV}")
    return found


# The repository being snapshotted is the user's, not ours to trust: its config may name commands that git
# runs on its own (core.fsmonitor on every index read, hooks). Every git command runs with both off.
NO_REPO_COMMANDS = ("-c", "core.fsmonitor=", "-c", "core.hooksPath=/dev/null")


def _listed(source: Path) -> list[str]:
    """Relative paths as `git ls-files -co --exclude-standard` gives them; a tree outside git through a
    throw-away index. Without git, every file, unless a .gitignore would have to be read."""
    git = shutil.which("git")
    if git is None:
        found = [str(p.relative_to(source)) for p in source.rglob("*") if ".git" not in p.relative_to(source).parts]
        if any(Path(p).name == ".gitignore" for p in found):
            raise SnapshotError(f"{source} has .gitignore files, and git (which reads them) is not installed: "
                                "install git")
        return [p for p in found if not (source / p).is_dir() or (source / p).is_symlink()]
    inside = subprocess.run([git, *NO_REPO_COMMANDS, "-C", str(source), "rev-parse", "--is-inside-work-tree"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if inside.returncode == 0 and inside.stdout.strip() == "true":
        out = _git([git, *NO_REPO_COMMANDS, "-C", str(source), "ls-files", "-z", "-co", "--exclude-standard"], source)
    else:
        with tempfile.TemporaryDirectory(prefix="shardctl-index-") as tmp:
            _git([git, *NO_REPO_COMMANDS, "init", "-q", tmp], source)
            out = _git([git, *NO_REPO_COMMANDS, f"--git-dir={tmp}/.git", f"--work-tree={source}", "ls-files", "-z",
                        "-o", "--exclude-standard"], source)
    return sorted({os.fsdecode(p).rstrip("/") for p in out.split(b"\0") if p})


def _git(argv: list[str], source: Path) -> bytes:
    proc = subprocess.run(argv, cwd=source, capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SnapshotError(f"cannot list the files of {source} with git: {why[-1] if why else proc.returncode}")
    return proc.stdout


def _entry(source: Path, rel: str, warnings: list[str]) -> Entry | None:
    path = source / rel
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None  # tracked but deleted in the work tree
    if stat.S_ISREG(info.st_mode):
        return Entry(rel, "exec" if info.st_mode & stat.S_IXUSR else "file", info.st_size)
    if stat.S_ISLNK(info.st_mode):
        target = os.path.realpath(path)
        if not (target == str(source) or target.startswith(str(source) + os.sep)):
            warnings.append(f"{rel} is a symlink out of spec.workdir ({os.readlink(path)}): not in the snapshot")
            return None
        return Entry(rel, "link", link=os.path.relpath(target, os.path.realpath(path.parent)))
    if stat.S_ISDIR(info.st_mode):
        warnings.append(f"{rel}/ is a nested git repository or submodule: not in the snapshot")
        return None
    warnings.append(f"{rel} is not a regular file (a socket, FIFO or device): not in the snapshot")
    return None


# --- copying -------------------------------------------------------------------------------------------


def take(found: Plan, root: Path, max_bytes: int = MAX_BYTES, *, progress: ProgressFn | None = None,
         progress_after_s: float | None = None) -> Snapshot:
    """Copy the planned files into `root`/<digest>/code (read-only) and publish it; the copy of the same
    content that is already there is reused. Raises SnapshotError (nothing left behind) on failure. Reading
    and copying that take over `progress_after_s` (PROGRESS_AFTER_S) together report to `progress`."""
    from orchestrator.procfiles import make_private_dirs, write_files

    make_private_dirs(root)
    tmp = root / f".tmp-{secrets.token_hex(8)}"
    reporter = _Reporter(progress, progress_after_s)
    try:
        reporter.begin("reading", len(found.entries), found.bytes)
        digest, size = _copy(found, None, max_bytes, reporter)  # read only: the points of a sweep copy the code once
        reporter.end()
        known = root / digest.removeprefix("sha256:")
        if (known / MANIFEST).is_file() and mark_used(known):
            return Snapshot(digest, str(known / CODE), len(found.entries), size, str(found.source))
        tmp.mkdir(mode=0o700)
        code = tmp / CODE
        code.mkdir(mode=0o700)
        reporter.begin("copying", len(found.entries), found.bytes)
        digest, copied = _copy(found, code, max_bytes, reporter)
        reporter.end()
        write_files(tmp, {MANIFEST: json.dumps({"digest": digest, "files": len(found.entries), "bytes": copied,
                                                 "source": str(found.source), "created_at": time.time()})})
        _freeze(code)
        final = root / digest.removeprefix("sha256:")
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not (final / MANIFEST).is_file():
                raise
            remove(tmp)  # the same content was published before: keep that copy
            if not mark_used(final):
                raise SnapshotError(f"the snapshot {final} was removed (shardctl gc) as it was adopted: submit "
                                    "again") from None
        return Snapshot(digest, str(final / CODE), len(found.entries), copied, str(found.source))
    except SnapshotError:
        remove(tmp)
        raise
    except OSError as exc:
        remove(tmp)
        raise SnapshotError(f"cannot snapshot {found.source} into {root}: {exc}") from None


def mark_used(snapshot_dir: Path) -> bool:
    """Say that a submit is adopting this snapshot now (its USED file's mtime), before the job that will run it is
    recorded: `shardctl gc` leaves a snapshot used within its grace period alone, and checks this mark again after
    moving the snapshot aside, putting it back if it was used meanwhile. False when the snapshot is gone (gc took
    it): the caller copies the code again."""
    try:
        fd = os.open(snapshot_dir / USED, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        os.utime(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return (snapshot_dir / MANIFEST).is_file()


def _copy(found: Plan, code: Path | None, max_bytes: int, reporter: _Reporter | None = None) -> tuple[str, int]:
    """Copy the files into `code` (None: only read them); the digest of what was read, and its size."""
    total = hashlib.sha256()
    copied = 0
    for e in found.entries:
        dest = None if code is None else code / e.path
        if code is not None and dest is not None:
            _make_parents(code, dest.parent)
        if e.kind == "link":
            if dest is not None:
                os.symlink(e.link, dest)
            total.update(f"link\0{e.path}\0{e.link}\n".encode())
            if reporter is not None:
                reporter.step()
            continue
        content, size = _copy_file(found.source / e.path, dest, e.kind == "exec")
        copied += size
        if copied > max_bytes:  # grew since it was listed
            raise SnapshotError(f"{found.source} grew past the snapshot cap of {size_text(max_bytes)} while it was "
                                f"copied (at {e.path}); submit again once it is quiet, or raise {MAX_BYTES_ENV}")
        total.update(f"{e.kind}\0{e.path}\0{content}\n".encode())
        if reporter is not None:
            reporter.step(1, size)
    return f"sha256:{total.hexdigest()}", copied


def _make_parents(code: Path, directory: Path) -> None:
    missing = []
    while directory != code and not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700)


def _copy_file(src: Path, dest: Path | None, executable: bool) -> tuple[str, int]:
    """Copy one file (None: read it) without following a symlink swapped in since it was listed; its sha256
    and size."""
    digest = hashlib.sha256()
    size = 0
    fd_in = os.open(src, _READ)
    fd_out = None
    try:
        if not stat.S_ISREG(os.fstat(fd_in).st_mode):
            raise SnapshotError(f"{src} changed into something other than a file while it was copied")
        fd_out = None if dest is None else os.open(dest, _CREATE, 0o600)
        while chunk := os.read(fd_in, _CHUNK):
            digest.update(chunk)
            size += len(chunk)
            view = memoryview(chunk)
            while fd_out is not None and view:
                view = view[os.write(fd_out, view):]
        if fd_out is not None:
            os.fchmod(fd_out, 0o500 if executable else 0o400)
            os.fsync(fd_out)
    finally:
        os.close(fd_in)
        if fd_out is not None:
            os.close(fd_out)
    return digest.hexdigest(), size


def _freeze(code: Path) -> None:
    """Directories read-only, deepest first (files were made so as they were written)."""
    for directory, _, _ in sorted(os.walk(code), key=lambda w: -len(w[0])):
        os.chmod(directory, 0o500)


def remove(tree: Path) -> None:
    """Remove a (possibly read-only) snapshot tree; what cannot be removed is left."""
    if not tree.exists():
        return
    for directory, _, _ in os.walk(tree):
        try:
            os.chmod(directory, 0o700)
        except OSError:
            pass
    shutil.rmtree(tree, ignore_errors=True)


# --- reading back --------------------------------------------------------------------------------------


def of_workdir(workdir: str | None) -> dict[str, Any] | None:
    """The snapshot a job's working directory is (digest, path, files, bytes, source), or None when the job
    runs in a directory of the user's (no spec.workdir) or the snapshot is gone."""
    if not workdir:
        return None
    code = Path(workdir)
    if code.name != CODE or code.parent.parent.name != "snapshots":
        return None
    try:
        data = json.loads((code.parent / MANIFEST).read_text())
        return Snapshot(str(data["digest"]), str(code), int(data["files"]), int(data["bytes"]),
                        str(data["source"])).as_json()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def size_text(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.1f} KiB" if n >= 2**10 else f"{n} B"
