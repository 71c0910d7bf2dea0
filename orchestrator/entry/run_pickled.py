"""What `accelerate launch --module orchestrator.entry.run_pickled` starts on every rank.

It loads the call that `submit(fn, *args, job=...)` pickled, makes it, and keeps the outcome: rank 0's
return value, or the traceback of a rank that raised (rank 0's wins when several do). Where it is kept:
the attempt's run directory (`$SHARDCTL_RUN_DIR/result.pkl`, written atomically and privately), or,
with `SHARDCTL_RESULT_TO=log` (Kubernetes: a pod cannot write to the user's machine), marked lines at
the end of the log (`entry/logline.py`). A failure also exits 1 with the traceback on stderr, so the
attempt is classified from its log as any script's. A return value that cannot be pickled (a lock, a
socket) is the function's failure too: a TypeError carrying the pickling error's message.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from orchestrator.entry import RESULT_FILE, RESULT_TO_ENV, encode_outcome, find_call, load_call, rank
from orchestrator.entry.logline import emit
from orchestrator.procfiles import write_files


def _keep(run_dir: Path, me: int, ok: bool, data: bytes) -> None:
    """Keep an encoded outcome: in the run directory, or as marked lines at the end of the log."""
    if os.environ.get(RESULT_TO_ENV) == "log":
        sys.stdout.flush()
        sys.stderr.flush()
        emit(me, data)  # the last thing this rank prints
    elif ok or me == 0 or not (run_dir / RESULT_FILE).exists():
        write_files(run_dir, {RESULT_FILE: data})


def _failed(run_dir: Path, me: int, what: str) -> int:
    """The exception being handled is the function's failure: its traceback on stderr (the attempt is classified
    from its log as any script's) and kept as the outcome; exit 1."""
    text = traceback.format_exc()
    print(f"[shardctl] rank {me}: the function {what}:\n{text}", file=sys.stderr, flush=True)
    try:
        _keep(run_dir, me, False, encode_outcome(False, f"rank {me}:\n{text}"))
    except OSError as exc:  # a read-only run directory: the log has it
        print(f"[shardctl] cannot write {run_dir / RESULT_FILE}: {exc}", file=sys.stderr, flush=True)
    return 1


def main() -> int:
    run_dir = Path(os.environ.get("SHARDCTL_RUN_DIR") or ".")
    me = rank()
    try:
        call = load_call(find_call(str(run_dir)))
        value = call.result()
    except BaseException:  # noqa: B036 - SystemExit and KeyboardInterrupt in the function are its failures too
        return _failed(run_dir, me, "raised")
    if me != 0:
        return 0
    try:
        try:
            data = encode_outcome(True, value)
        except Exception as exc:  # pickling raises whatever the value's reducer raises
            # a TypeError, as pickle's own refusals are: the classifier reads it as the user's error, not retried
            raise TypeError(f"the function's return value cannot be pickled: {type(exc).__name__}: {exc}") from exc
    except TypeError:
        return _failed(run_dir, me, "returned a value that cannot be pickled")
    try:
        _keep(run_dir, me, True, data)
    except Exception as exc:  # the run directory cannot be written: a failure
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
