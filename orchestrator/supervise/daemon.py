"""Entry point of a supervisor: `python -m orchestrator.supervise.daemon JOB_ID [--once]`.

Without --once (local target) it is detached by `shardctl submit`, and again by any shardctl
command that finds an unfinished job without one; its stdout is JOB_DIR/supervisor.log.
With --once it makes every move that needs no waiting and exits: the Slurm judge job runs it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

from orchestrator.store.jobstore import Store
from orchestrator.supervise.supervisor import Supervisor
from orchestrator.targets import get_target

JUDGE_NOTIFY_WAIT_S = 60.0  # a judge retries undelivered notifications this long; the next process sends the rest


def record_failure(store: Store, job_id: str, who: str, exc: BaseException) -> None:
    """Put this process's failure on the job's newest attempt (`supervisor_error`), so that `status` and
    `history` say why nothing moved, in its own words, and not only this log. Best effort: the store may
    be what failed."""
    words = " ".join(str(exc).split())[:1000]  # one line: status shows it as one
    message = f"the {who} (pid {os.getpid()} on {socket.gethostname()}) failed: {type(exc).__name__}: {words}"
    try:
        attempts = store.attempts(job_id)
        if attempts:
            store.note_attempt(job_id, attempts[-1].number, supervisor_error=message)
    except Exception as again:  # noqa: BLE001 - nothing more to be done than to say so here
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} could not record that in the job store: {again}",
              file=sys.stderr, flush=True)


def main() -> None:
    once = sys.argv[2:] == ["--once"]
    if len(sys.argv) != 2 and not once:
        sys.exit("usage: python -m orchestrator.supervise.daemon JOB_ID [--once]")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    store = Store()
    job = store.get_job(sys.argv[1])
    target = get_target(job.target, job.options)
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} supervisor pid {os.getpid()} for job {job.id}",
          flush=True)
    supervisor = Supervisor(store, job.id, target)
    try:
        final = supervisor.advance(JUDGE_NOTIFY_WAIT_S) if once else supervisor.run()  # --once: the Slurm judge
    except Exception as exc:  # the traceback stays in this log; the job's record says it in one line
        record_failure(store, job.id, "judge" if once else "supervisor", exc)
        raise
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} job {job.id}: {final or 'supervised elsewhere'}",
          flush=True)


if __name__ == "__main__":
    main()
