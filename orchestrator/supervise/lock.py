"""The per-job flock a resident supervisor holds (JOB_DIR/supervisor.lock), and asking whether one holds it.

Stdlib only: `status` of a running job asks it without importing the supervisor (jobs.resident_supervisor_alive).
Same-host only, by design: nothing depends on it for correctness (supervise/supervisor.py's module docstring).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Protocol

LOCK_NAME = "supervisor.lock"


class _HasJobDir(Protocol):
    @property
    def job_dir(self) -> str: ...


class JobLock:
    """flock on JOB_DIR/supervisor.lock, held for the supervisor's life; never inherited by attempts. Where the
    filesystem refuses locks (ENOLCK), acquiring succeeds without one."""

    def __init__(self, job_dir: str) -> None:
        self.path = Path(job_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:  # no locks on this filesystem: the store's claims still keep the job right
            os.close(fd)
            return True
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def is_supervised(job: _HasJobDir) -> bool:
    """Whether a process on this host holds the job's lock (a resident supervisor runs it)."""
    lock = JobLock(job.job_dir)
    if lock.acquire():
        lock.release()
        return False
    return True
