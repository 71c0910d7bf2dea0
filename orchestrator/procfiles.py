"""Small stdlib helpers shared by the CLI, the supervisor and the attempt wrapper.

Files are written atomically (a reader sees the old file or the new one, never half), privately
and without following symlinks (`write_files`), and detached processes start in a session of
their own with this very package importable.
Stdlib only: the attempt wrapper imports this, and the gap between attempts stays short.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


PRIVATE_FILE = 0o600
PRIVATE_EXECUTABLE = 0o700
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeDirectoryError(PermissionError):
    """The directory to write into is another user's, or anyone may replace what is written there."""


def write_files(directory: Path, files: Mapping[str, str | bytes], executable: Sequence[str] = (),
                durable: bool = True) -> None:
    """Write every file into `directory`, atomically, privately and all or nothing.

    The directory is opened once (a missing one is created, 0700, and a symlink in its place is
    refused) and everything happens relative to that descriptor, so the directory cannot be swapped
    for another mid-way. Each file is written under a random temporary name created with
    O_CREAT|O_EXCL|O_NOFOLLOW (a file or symlink planted there makes it fail, never followed), given
    its mode on the descriptor (0600, 0700 for `executable`, whatever the umask: launch.sh and the
    configs may hold the job's environment), fsynced, and renamed over its name only once every
    file is written: rename replaces a symlink at the target name instead of following it. A
    directory that another user owns, or that every user may write without the sticky bit, is
    refused (UnsafeDirectoryError): there anyone could replace the files afterwards."""
    for name in files:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise ValueError(f"{name!r} is not a plain file name")
    make_private_dirs(directory)
    dir_fd = os.open(directory, _OPEN_DIR)
    try:
        _check_directory(dir_fd, directory)
        for name in files:
            try:
                if stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
                    raise IsADirectoryError(errno.EISDIR, f"{directory / name} is a directory")
            except FileNotFoundError:
                pass
        written: list[tuple[str, str]] = []
        try:
            for name, text in files.items():
                mode = PRIVATE_EXECUTABLE if name in executable else PRIVATE_FILE
                data = text if isinstance(text, bytes) else text.encode("utf-8")  # bytes: a pickle
                written.append((_write_temporary(dir_fd, name, data, mode, durable), name))
            for temporary, name in written:
                os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            written = []
        finally:
            for temporary, _ in written:  # a failure before the renames: no file was replaced
                try:
                    os.unlink(temporary, dir_fd=dir_fd)
                except OSError:
                    pass
        try:
            if durable:
                os.fsync(dir_fd)  # the renames themselves survive a crash
        except OSError:
            pass  # some file systems cannot fsync a directory
    finally:
        os.close(dir_fd)


def make_private_dirs(directory: Path) -> None:
    """Create `directory` and every missing parent 0700, whatever the umask (`mkdir -p` gives the parents the
    umask's mode: a job's directory under SHARDCTL_HOME would be 0755 with umask 022). Existing ones are left
    as they are."""
    missing = []
    path = Path(directory)
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_EXECUTABLE)  # the umask only removes bits: never more than 0700
        except FileExistsError:
            continue  # created meanwhile by someone else: left as it is
        fd = os.open(path, _OPEN_DIR)  # never through a symlink swapped in meanwhile
        try:
            os.fchmod(fd, PRIVATE_EXECUTABLE)  # nor less, under an unusual umask such as 0377
        finally:
            os.close(fd)


def _check_directory(dir_fd: int, directory: Path) -> None:
    info = os.fstat(dir_fd)
    if info.st_uid not in (os.geteuid(), 0):
        raise UnsafeDirectoryError(f"{directory} belongs to another user (uid {info.st_uid}), who could replace "
                                   "the files written there: use a directory of your own")
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise UnsafeDirectoryError(f"{directory} may be written by every user (mode {stat.S_IMODE(info.st_mode):o}, "
                                   "no sticky bit), who could replace the files written there: use a directory "
                                   "of your own")


def _write_temporary(dir_fd: int, name: str, data: bytes, mode: int, durable: bool = True) -> str:
    for _ in range(100):
        temporary = f".{name}.{os.urandom(8).hex()}.tmp"
        try:
            fd = os.open(temporary, _CREATE, PRIVATE_FILE, dir_fd=dir_fd)
        except FileExistsError:
            continue
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)  # on the descriptor: never a path another process could have swapped
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(temporary, dir_fd=dir_fd)
            raise
        os.close(fd)
        return temporary
    raise FileExistsError(errno.EEXIST, f"no free temporary name for {name}")


def write_text_atomically(path: Path, text: str, executable: bool = False) -> None:
    write_files(path.parent, {path.name: text}, executable=(path.name,) if executable else ())


def write_json(path: Path, data: dict) -> None:
    write_text_atomically(path, json.dumps(data, indent=1) + "\n")


def publish_once(directory: Path, name: str, text: str, durable: bool = True) -> bool:
    """Publish `name` in `directory` unless that name exists: True when this call published it.

    Written as `write_files` writes (private 0600, fsynced, under a random temporary name, never
    through a symlink, the directory checked), then hard-linked to its name. link(2) fails with
    EEXIST when the name is taken, and the server decides that atomically on NFS as a local disk
    does, so of any number of writers on any number of hosts exactly one publishes, and a reader
    sees the whole file or none. A retransmitted NFS LINK can answer EEXIST for a link that was
    made, so after EEXIST the temporary's link count decides (2: ours), as open(2) advises for lock
    files; a link that succeeded is trusted as it is (sshfs reports a link count of 1 even then), and
    any other refusal while the name exists is a lost race too (sshfs answers EPERM then).
    The directory is fsynced before this returns: a published file survives a crash. With `durable=False`
    (a cache, rebuilt when a crash leaves it empty or cut) nothing is fsynced."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"{name!r} is not a plain file name")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    dir_fd = os.open(directory, _OPEN_DIR)
    try:
        _check_directory(dir_fd, directory)
        temporary = _write_temporary(dir_fd, name, text.encode("utf-8"), PRIVATE_FILE, durable)
        try:
            try:
                os.link(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                published = True
            except FileExistsError:
                published = os.stat(temporary, dir_fd=dir_fd, follow_symlinks=False).st_nlink == 2
            except OSError as refused:  # sshfs answers EPERM for a name it had not seen yet
                try:
                    os.lstat(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    raise refused from None  # no such name: the link itself was refused
                published = False
        finally:
            os.unlink(temporary, dir_fd=dir_fd)
        if published and durable:
            try:
                os.fsync(dir_fd)
            except OSError:
                pass  # some file systems cannot fsync a directory
        return published
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def free_bytes(path: str | Path) -> int | None:
    """Space this process may still write on `path`'s filesystem (root may use the blocks kept for it);
    None when it cannot be asked."""
    try:
        fs = os.statvfs(path)
    except OSError:
        return None
    return (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize


def open_log(path: str | Path, buffering: int = -1) -> BinaryIO:
    """A log opened for appending, created 0600, never through a symlink planted at its name."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    return os.fdopen(fd, "ab", buffering=buffering)


def spawn_detached(module: str, args: Sequence[str], *, cwd: str, log_path: Path,
                   env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """`python -m MODULE ARGS` in a new session (it outlives the terminal and its parent), output
    appended to `log_path`, with this package first on PYTHONPATH even where it is not installed."""
    child_env = {**os.environ, **(env or {})}
    extra = child_env.get("PYTHONPATH")
    child_env["PYTHONPATH"] = f"{PACKAGE_ROOT}{os.pathsep}{extra}" if extra else PACKAGE_ROOT
    with open_log(log_path) as log:
        return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                env=child_env)
