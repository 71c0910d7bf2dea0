"""What `accelerate launch --module orchestrator.entry.run_pickled` starts on every rank.

It loads the call that `submit(fn, *args, job=...)` pickled, makes it, and keeps the outcome: rank 0's
return value, or the traceback of a rank that raised (rank 0's wins when several do). Where it is kept:
the attempt's run directory (`$SHARDCTL_RUN_DIR/result.pkl`, written atomically and privately), or,
with `SHARDCTL_RESULT_TO=log` (Kubernetes: a pod cannot write to the user's machine), marked lines at
the end of the log (`entry/logline.py`). A failure also exits 1 with the traceback on stderr, so the
attempt is classified from its log as any script's.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from orchestrator.entry import RESULT_FILE, RESULT_TO_ENV, encode_outcome, find_call, load_call, rank
from orchestrator.entry.logline import emit
from orchestrator.procfiles import write_files


def _keep(run_dir: Path, me: int, ok: bool, payload: object) -> None:
    data = encode_outcome(ok, payload)
    if os.environ.get(RESULT_TO_ENV) == "log":
        sys.stdout.flush()
        sys.stderr.flush()
        emit(me, data)  # the last thing this rank prints
    elif ok or me == 0 or not (run_dir / RESULT_FILE).exists():
        write_files(run_dir, {RESULT_FILE: data})


def main() -> int:
    run_dir = Path(os.environ.get("SHARDCTL_RUN_DIR") or ".")
    me = rank()
    try:
        call = load_call(find_call(str(run_dir)))
        value = call.result()
    except BaseException:  # noqa: B036 - SystemExit and KeyboardInterrupt in the function are its failures too
        text = traceback.format_exc()
        print(f"[shardctl] rank {me}: the function raised:\n{text}", file=sys.stderr, flush=True)
        try:
            _keep(run_dir, me, False, f"rank {me}:\n{text}")
        except OSError as exc:  # a read-only run directory: the log has it
            print(f"[shardctl] cannot write {run_dir / RESULT_FILE}: {exc}", file=sys.stderr, flush=True)
        return 1
    if me == 0:
        try:
            _keep(run_dir, me, True, value)
        except Exception as exc:  # the value cannot be pickled, or the directory written: a failure
            print(f"[shardctl] rank 0: cannot keep the function's return value: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without the interpreter's teardown: on CPU a rank sometimes aborts there after finishing
    # (docs/design.md, "Ending a CPU run"), which would fail a call that succeeded.
    os._exit(code)
