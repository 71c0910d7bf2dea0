"""Entry point of a supervisor: `python -m orchestrator.supervise.daemon JOB_ID [--once]`.

Without --once (local target) it is detached by `shardctl submit`, and again by any shardctl
command that finds an unfinished job without one; its stdout is JOB_DIR/supervisor.log.
With --once it makes every move that needs no waiting and exits: the Slurm judge job runs it.
"""

from __future__ import annotations

import signal
import sys
import time

from orchestrator.store import Store
from orchestrator.supervise.supervisor import Supervisor
from orchestrator.targets import get_target


def main() -> None:
    once = sys.argv[2:] == ["--once"]
    if len(sys.argv) != 2 and not once:
        sys.exit("usage: python -m orchestrator.supervise.daemon JOB_ID [--once]")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    store = Store()
    job = store.get_job(sys.argv[1])
    target = get_target(job.target, job.option_data)
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} supervisor pid {__import__('os').getpid()} for job {job.id}",
          flush=True)
    supervisor = Supervisor(store, job.id, target)
    final = supervisor.advance() if once else supervisor.run()  # --once: the Slurm judge
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} job {job.id}: {final or 'supervised elsewhere'}",
          flush=True)


if __name__ == "__main__":
    main()
