"""Entry point of a detached supervisor: `python -m orchestrator.supervise.daemon JOB_ID`.

Started by `shardctl submit` (and again by any shardctl command that finds an unfinished job
without one). Its stdout is JOB_DIR/supervisor.log.
"""

from __future__ import annotations

import signal
import sys
import time

from orchestrator.store import Store
from orchestrator.supervise.supervisor import Supervisor
from orchestrator.targets import get_target


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m orchestrator.supervise.daemon JOB_ID")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    store = Store()
    job = store.get_job(sys.argv[1])
    target = get_target(job.target, job.option_data)
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} supervisor pid {__import__('os').getpid()} for job {job.id}",
          flush=True)
    final = Supervisor(store, job.id, target).run()
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} job {job.id}: {final or 'already supervised elsewhere'}",
          flush=True)


if __name__ == "__main__":
    main()
