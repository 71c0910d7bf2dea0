"""A Python function as a job's entrypoint, the way submitit users work: `submit(train_fn, *args, job=...)`.

The call (function, arguments) is pickled with submitit's own machinery (`DelayedSubmission`,
`cloudpickle_dump`: cloudpickle, so a function defined in a notebook travels by value) into the
job's directory as `function.pkl`. Every rank runs `accelerate launch --module
orchestrator.entry.run_pickled` (`RUNNER`), which loads the call and makes it; rank 0 writes
`("success", value)`, a failing rank `("error", traceback text)`, to `result.pkl` in the attempt's
run directory. On Kubernetes (`spec.entrypoint.function`) the call travels in a Secret the CLI creates
owned by the TrainingJob (`function_secret`), mounted read-only in every attempt's pods, and rank 0
prints the outcome into its log instead (`entry/logline.py`): pods cannot write to the user's machine.
submitit is imported only here and in the runner, when a function is submitted or run: the CLI never
imports it at start-up.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import FunctionPickleError, ShardctlError

FUNCTION_FILE = "function.pkl"
RESULT_FILE = "result.pkl"
RUNNER = "orchestrator.entry.run_pickled"
MODULE_SCRIPT = f"-m {RUNNER}"  # entrypoint.script for a function: accelerate launch --module RUNNER
# A pickled call is a function and its arguments, not a data set: pass paths to data. The cap also keeps
# the call within what travels with an attempt on a cluster (a ConfigMap holds at most 1 MiB).
MAX_PICKLE_BYTES = 512 << 10
FUNCTION_FILE_ENV = "SHARDCTL_FUNCTION_FILE"  # where the call is, when not in the run or job directory
RESULT_TO_ENV = "SHARDCTL_RESULT_TO"  # "log": the outcome goes to rank 0's log (a pod cannot write home)
FUNCTION_SECRET_KEY = FUNCTION_FILE
_UID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_FUNCTION_SECRET = re.compile(rf".+-function-{_UID}")


def function_secret(job_name: str, uid: str | None) -> str:
    """The Secret that carries a TrainingJob's call: named after its uid, which nobody knows before the
    TrainingJob exists, so no Secret that was there before (anyone's) can be mounted as the call. Without a
    uid (a dry run) the name says where it goes."""
    return f"{job_name}-function-{uid or 'uid'}"


def is_function_secret(name: str) -> bool:
    """True for a name shaped like any TrainingJob's function Secret (which only that TrainingJob mounts)."""
    return bool(_FUNCTION_SECRET.fullmatch(name))


class _OverCap(Exception):
    """Raised by _CappedWriter once the pickle passes the cap: pickling stops there."""


class _CappedWriter:
    """A file-like sink for a pickler that keeps at most `limit` bytes and raises _OverCap at the first write past
    it, so a call over the cap is never built whole in memory (the pickler writes in frames of 64 KiB)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.buffer = io.BytesIO()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = memoryview(data).nbytes
        self.size += size
        if self.size > self.limit:
            raise _OverCap
        self.buffer.write(data)
        return size


def pickle_call(fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any],
                limit: int = MAX_PICKLE_BYTES) -> bytes:
    """The call as bytes: submitit's DelayedSubmission, pickled as its cloudpickle_dump writes it (cloudpickle,
    the highest protocol), but into a writer that stops at the cap."""
    import cloudpickle  # submitit's own dependency, what its cloudpickle_dump uses
    from submitit.core.utils import DelayedSubmission

    delayed = DelayedSubmission(fn, *args, **kwargs)
    name = getattr(fn, "__qualname__", None) or repr(fn)
    sink = _CappedWriter(limit)
    try:
        cloudpickle.dump(delayed, sink, pickle.HIGHEST_PROTOCOL)
    except _OverCap:
        raise FunctionPickleError(
            f"function {name}: the pickled call is over the {limit // 1024} KiB cap: pass large data by path (a "
            "file the job can read), not as an argument or in the function's closure (pickling stopped at the "
            "cap)") from None
    except Exception as exc:  # pickling raises whatever the object's reducer raises
        raise FunctionPickleError(f"function {name}: it or its arguments cannot be pickled: "
                                  f"{type(exc).__name__}: {str(exc)[:300]}") from None
    return sink.buffer.getvalue()


def load_call(path: str | Path) -> Any:
    """The DelayedSubmission written by pickle_call (in the training environment)."""
    from submitit.core.utils import DelayedSubmission

    return DelayedSubmission.load(path)


def find_call(run_dir: str) -> Path:
    """Where the runner finds the call: $SHARDCTL_FUNCTION_FILE (Kubernetes: the mounted Secret), else the
    attempt's run directory, else the job's directory, the run directory's parent (local and Slurm)."""
    if given := os.environ.get(FUNCTION_FILE_ENV):
        if not Path(given).is_file():
            raise FileNotFoundError(f"{FUNCTION_FILE_ENV}={given}: no such file (the function's Secret not mounted?)")
        return Path(given)
    for directory in (Path(run_dir), Path(run_dir).parent):
        if (directory / FUNCTION_FILE).is_file():
            return directory / FUNCTION_FILE
    raise FileNotFoundError(f"no {FUNCTION_FILE} in {run_dir} or its parent: this attempt was not submitted with "
                            "a function")


def encode_outcome(ok: bool, payload: Any) -> bytes:
    """What result.pkl holds: ("success", value) or ("error", traceback text), as submitit keeps results."""
    import cloudpickle  # submitit's own dependency, what its cloudpickle_dump uses

    return cloudpickle.dumps(("success" if ok else "error", payload), pickle.HIGHEST_PROTOCOL)


def read_outcome(run_dir: str) -> tuple[str, Any] | None:
    """The outcome an attempt left in its run directory, or None when it left none."""
    path = Path(run_dir) / RESULT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return decode_outcome(data, str(path))


def decode_outcome(data: bytes, where: str) -> tuple[str, Any]:
    """Unpickle what encode_outcome wrote. As trusted as the submitted function itself: call it only on bytes
    from the job's own run directory or its own rank-0 pod."""
    try:
        outcome = pickle.loads(data)  # noqa: S301 - the job's own output, see above
    except Exception as exc:  # the value's own classes may be missing here, or the data cut short
        raise ShardctlError(f"{where}: the result cannot be read here: {type(exc).__name__}: {str(exc)[:300]}") \
            from None
    if not (isinstance(outcome, tuple) and len(outcome) == 2 and outcome[0] in ("success", "error")):
        raise ShardctlError(f"{where}: not a result written by shardctl's runner")
    return outcome


def rank() -> int:
    """This process's global rank under accelerate launch (torchrun sets RANK)."""
    return int(os.environ.get("RANK", "0"))
