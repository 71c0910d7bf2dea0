"""The hang watchdog inside a Slurm attempt: `python -m orchestrator.supervise.watch RUN_DIR LOG PID HANG FIRST`.

On Slurm nothing of shardctl runs while an attempt does (its judge starts when it has ended), so the
attempt's batch script starts this beside its srun step. It watches the attempt's log as the local
supervisor does (`lifecycle/hang.py`: no output and no progress for the limit; the log's mtime is the
last output, the step it shows the progress) and, when the run is hung, writes `RUN_DIR/hung.json`
(what it saw) before anything else, says so in the log, and stops the step (SIGTERM to srun, which
forwards it to every task). The judge then reads `hung.json` (the Slurm target's `describe`) and the
attempt ends `hang`: restarted from its checkpoint, not left to hold its nodes until the time limit.
It leaves by itself when the step ends. Stdlib plus the pure lifecycle modules: it starts in well
under a second on a compute node.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from pathlib import Path

from orchestrator.lifecycle import progress
from orchestrator.lifecycle.hang import Watch
from orchestrator.procfiles import write_json
from orchestrator.targets.filelog import read_tail
from orchestrator.targets.slurm.render import HUNG_FILE

WATCH_S = 2.0  # a look at the log costs one stat, and a read of its end when it changed
TAIL_BYTES = 64 * 1024  # what is read of the log's end for the step, when the log changed


def alive(pid: int) -> bool:
    """The step runs (an ended one not yet reaped by its shell, a zombie, has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class LogProgress:
    """A running attempt's log as a hang watchdog sees it: when it last changed (its mtime: a watchdog that
    restarts sees the same) and the step it shows, re-read from its end only when it changed."""

    def __init__(self) -> None:
        self.seen: tuple[int, float] | None = None  # the log's (size, mtime) at the last read
        self.step: int | None = None

    def look(self, log: str | Path) -> float | None:
        """The log's mtime (None: no log yet, or not a plain file); updates `step` when the log changed."""
        try:
            info = os.lstat(log)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        if self.seen != (info.st_size, info.st_mtime):
            self.seen = (info.st_size, info.st_mtime)
            try:
                found = progress.parse(read_tail(str(log), TAIL_BYTES), cut_at_start=info.st_size > TAIL_BYTES)
            except (ValueError, ArithmeticError):  # a log is untrusted: no reading, never a crash
                found = None
            if found is not None and found.step is not None:
                self.step = found.step
        return info.st_mtime


def watch(run_dir: Path, log: Path, pid: int, hang_after: int | None, first_step_within: int | None = None,
          every_s: float = WATCH_S) -> str | None:
    """Until the step `pid` ends (None) or is hung (what was seen: also written to RUN_DIR/hung.json)."""
    started = time.time()
    state: Watch | None = None
    seen = LogProgress()
    while alive(pid):
        output_at = seen.look(log)
        now = time.time()
        state = Watch.begin(now, output_at, started, seen.step) if state is None else \
            state.seen(now, output_at, seen.step)
        if state.is_hung(now, hang_after, first_step_within):
            reason = state.reason(now, hang_after, first_step_within)
            write_json(run_dir / HUNG_FILE, {"reason": reason, "at": now})
            try:
                with log.open("a") as out:
                    out.write(f"[shardctl] hung: {reason}: stopping the run\n")
            except OSError:
                pass
            try:
                os.kill(pid, signal.SIGTERM)  # srun forwards it to every task, and their launchers stop the ranks
            except ProcessLookupError:
                pass
            return reason
        time.sleep(every_s)
    return None


def main() -> None:
    if len(sys.argv) != 6:
        sys.exit("usage: python -m orchestrator.supervise.watch RUN_DIR LOG PID HANG_AFTER_S|- FIRST_STEP_WITHIN_S|-")
    hang_after, first = (None if value == "-" else int(value) for value in sys.argv[4:6])
    watch(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), hang_after, first)


if __name__ == "__main__":
    main()
