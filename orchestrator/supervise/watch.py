"""The hang watchdog inside a Slurm attempt: `python -m orchestrator.supervise.watch RUN_DIR LOG PID HANG FIRST`.

On Slurm nothing of shardctl runs while an attempt does (its judge starts when it has ended), so the
attempt's batch script starts this beside its srun step. It watches the attempt's log as the local
supervisor does (`lifecycle/hang.py`: no output and no progress for the limit; the log's mtime is the
last output, the step it shows the progress) and, when the run is hung, writes `RUN_DIR/hung.json`
(what it saw) before anything else, says so in the log, takes every rank's Python stacks on every node
(`srun --overlap` runs this module's `--stacks` beside the step: frozen, then one SIGABRT at a time to each
rank's faulthandler, as the local wrapper does; `stacks-NODE.txt`, and where each rank waited in hung.json),
and stops the step (SIGTERM to srun, which forwards it to every task). The judge then reads `hung.json`
(the Slurm target's `describe`) and the attempt ends `hang`: restarted from its checkpoint, not left to hold
its nodes until the time limit.
It leaves by itself when the step ends. Stdlib plus the pure lifecycle modules: it starts in well
under a second on a compute node.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
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
STACKS_TIMEOUT_S = 180.0  # every node's ranks dump at once, each rank in turn (wrapper.DUMP_WAIT_S at most)
TRAINING_STEP = "0"  # the batch script's first srun: the training
ENVIRON_MAX = 1024 * 1024


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
            write_json(run_dir / HUNG_FILE, {"reason": reason, "at": now})  # first: the judge reads it whatever follows
            try:
                with log.open("a") as out:
                    out.write(f"[shardctl] hung: {reason}: each rank's stacks, then stopping the run\n")
            except OSError:
                pass
            where = stacks_on_every_node(run_dir, log)
            if where:
                write_json(run_dir / HUNG_FILE, {"reason": reason, "at": now, "where": where})
            try:
                os.kill(pid, signal.SIGTERM)  # srun forwards it to every task, and their launchers stop the ranks
            except ProcessLookupError:
                pass
            return reason
        time.sleep(every_s)
    return None


def stacks_on_every_node(run_dir: Path, log: Path) -> dict[str, str]:
    """Each rank's Python stacks, as the local wrapper takes them (frozen, then one SIGABRT at a time to its
    faulthandler), on every node of the allocation at once: one `srun --overlap` task per node runs `--stacks`
    beside the hung step. Returns rank -> where its main thread waited; {} outside an allocation or if srun fails
    (the run is stopped all the same)."""
    job, nodes = os.environ.get("SLURM_JOB_ID", ""), os.environ.get("SLURM_JOB_NUM_NODES", "")
    if not (job.isdigit() and nodes.isdigit()):
        return {}
    # The hung step holds the allocation's memory: this one asks for none of it (--mem=0 is "no limit
    # of its own" for a step, and the allocation's SLURM_MEM_PER_* would ask for a share that is not free).
    cmd = ["srun", "--overlap", f"--jobid={job}", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
           "--mem=0", "--kill-on-bad-exit=0", sys.executable, "-m", "orchestrator.supervise.watch",
           "--stacks", str(run_dir), str(log), job]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_MEM_PER_")}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=STACKS_TIMEOUT_S, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        _say(log, f"[shardctl] hung: no stacks taken: {exc}")
        return {}
    if done.returncode:
        _say(log, f"[shardctl] hung: no stacks taken: srun exited {done.returncode}: {done.stderr.strip()[-500:]}")
    where: dict[str, str] = {}
    for line in done.stdout.splitlines()[:1000]:
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict) and isinstance(found.get("where"), dict):
            where.update({str(r)[:12]: str(w)[:300] for r, w in list(found["where"].items())[:1000]})
    return where


def _say(log: Path, line: str) -> None:
    try:
        with log.open("a") as out:
            out.write(line.replace("\n", " ") + "\n")
    except OSError:
        pass


def job_step_processes(job: str, step: str, node: str) -> list[int]:
    """This node's processes of the job's step, by what their environment says (slurmstepd gives every task
    SLURM_JOB_ID, SLURM_STEP_ID and SLURMD_NODENAME, and their children inherit them)."""
    want = {b"SLURM_JOB_ID": job.encode(), b"SLURM_STEP_ID": step.encode(), b"SLURMD_NODENAME": node.encode()}
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()[:ENVIRON_MAX]
        except OSError:
            continue
        items = dict(item.split(b"=", 1) for item in environ.split(b"\0") if b"=" in item)
        if all(items.get(k) == v for k, v in want.items()):
            found.append(int(entry.name))
    return sorted(found)


def stacks_here(run_dir: Path, log: Path, job: str) -> dict[str, str]:
    """`--stacks`, on one node: the training step's (step 0, the batch script's first srun) ranks on this node."""
    from orchestrator.targets.local.wrapper import capture_stacks

    node = os.environ.get("SLURMD_NODENAME", "node")
    tree = job_step_processes(job, TRAINING_STEP, node)
    with log.open("ab") as out:
        return capture_stacks(out, log, run_dir, tree=tree, out=f"stacks-{node}.txt", settle_s=3.0)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--stacks":
        where = stacks_here(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
        print(json.dumps({"node": os.environ.get("SLURMD_NODENAME"), "where": where}), flush=True)
        return
    if len(sys.argv) != 6:
        sys.exit("usage: python -m orchestrator.supervise.watch RUN_DIR LOG PID HANG_AFTER_S|- FIRST_STEP_WITHIN_S|-")
    hang_after, first = (None if value == "-" else int(value) for value in sys.argv[4:6])
    watch(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), hang_after, first)


if __name__ == "__main__":
    main()
