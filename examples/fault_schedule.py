"""Scripted faults for examples/train_tiny.py (`--fault-schedule FILE --fault-state DIR`): the goodput benchmark's
run meets, at given steps, the faults large runs meet, each once, whichever launcher restarts it.

FILE is JSON: `[{"step": 120, "kind": "gpu", "broken_s": 240}, {"step": 300, "kind": "hang"}, ...]`. Kinds:
`gpu` (every rank dies with CUDA's uncorrectable-ECC message; with `broken_s`, the node stays broken that long:
a run that starts on it meanwhile dies the same way at once, as on a dead GPU), `network` (every rank dies with
NCCL's ncclRemoteError), `oom` (every rank dies of torch.OutOfMemoryError), `hang` (rank 1 blocks forever in a
sleep, rank 0 waits in its next collective). DIR keeps which faults happened (`fired-N`) and which nodes are
broken until when (`broken-NODE`), so a restart (torchrun's in place, or shardctl's next attempt) meets each
fault once. Every rank reads DIR when it starts, so the ranks of one run agree on what is still to come.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

ECC = "RuntimeError: CUDA error: uncorrectable ECC error encountered"
NETWORK = ("torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:2046, remote process exited or "
           "there was a network error, NCCL version 2.21.5\nncclRemoteError: A call failed possibly due to a network "
           "error or a remote process exiting prematurely.")
OOM = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
       "79.10 GiB of which 1.20 GiB is free. Of the allocated memory 74.12 GiB is allocated by PyTorch, and 1.90 "
       "GiB is reserved by PyTorch but unallocated.")


def node() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


class Schedule:
    def __init__(self, path: str, state: str, rank: int) -> None:
        self.faults: list[dict] = json.loads(Path(path).read_text()) if path else []
        self.state = Path(state) if state else None
        self.rank = rank
        self.fired = {i for i in range(len(self.faults)) if self.state and (self.state / f"fired-{i}").exists()}

    def at_start(self) -> None:
        """Die at once on a node that a `gpu` fault with `broken_s` left broken."""
        if self.state is None:
            return
        try:
            until = float((self.state / f"broken-{node()}").read_text())
        except (OSError, ValueError):
            return
        if time.time() < until:
            print(f"[fault-schedule] node {node()} is still broken ({until - time.time():.0f} s left)", flush=True)
            self._die(ECC)

    def at_step(self, step: int) -> None:
        for i, fault in enumerate(self.faults):
            if i in self.fired or fault["step"] != step:
                continue
            self.fired.add(i)
            if self.state is not None and self.rank == 0:
                self.state.mkdir(parents=True, exist_ok=True)
                (self.state / f"fired-{i}").write_text(f"{time.time()} {node()}\n")
            kind = fault["kind"]
            print(f"[fault-schedule] {kind} at step {step} on {node()}", flush=True)
            if kind == "gpu":
                if fault.get("broken_s") and self.state is not None and self.rank == 0:
                    (self.state / f"broken-{node()}").write_text(str(time.time() + float(fault["broken_s"])))
                self._die(ECC)
            elif kind == "network":
                self._die(NETWORK)
            elif kind == "oom":
                self._die(OOM)
            elif kind == "hang" and self.rank == 1:
                while True:
                    time.sleep(3600)

    def _die(self, words: str) -> None:
        time.sleep(0.5)  # rank 0 has written the state first
        print(words, file=sys.stderr, flush=True)
        sys.exit(1)
