"""Time from a failing attempt's exit to the next attempt's process start (goal: under 2 s).

Submits real jobs on this machine whose every attempt really runs out of memory (2048-token
sequences under a 1.5 GiB limit), so the supervisor walks the fallback ladder until
max_attempts. For every pair of consecutive attempts it reads the times the wrappers recorded:
`exit.json` ended_at (the run's last process was reaped) and the next `wrapper.json`
launched_at (the next run's first process was started). Both are wall-clock times written on
the spot, so nothing of the CLI's own polling is counted.

    .venv/bin/python benchmarks/fallback_gap.py --jobs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
apiVersion: shardctl.dev/v1alpha1
kind: TrainingJob
metadata: {name: gap-bench}
spec:
  entrypoint:
    script: examples/train_tiny.py
    args: ["--micro-batch", "{micro_batch}", "--grad-accum", "{grad_accum}", "--steps", "4", "--seq-len", "2048",
           "--dim", "64", "--heads", "2", "--layers", "8", "--vocab", "256", "--checkpoint-dir", "{checkpoint_dir}"]
  model: {name_or_path: tiny-lm}
  backend: deepspeed
  sharding: grad_op
  precision: {mixed: "no"}
  batch: {micro: 8, global: 16}
  resources: {gpus_per_node: 2, memory_per_node: 1536MiB}
  fallback: {max_attempts: ATTEMPTS}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--attempts", type=int, default=4)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="shardctl-gap-"))
    env = {**os.environ, "SHARDCTL_HOME": str(home), "DS_ACCELERATOR": "cpu"}
    spec = home / "job.yaml"
    spec.write_text(SPEC.replace("ATTEMPTS", str(args.attempts)))
    gaps: list[float] = []
    kinds: list[str] = []
    for n in range(args.jobs):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(spec), "--wait", "--json"], cwd=ROOT,
                           env=env, capture_output=True, text=True)
        view = json.loads(r.stdout[r.stdout.index("{\n"):])
        attempts = view["attempts"]
        kinds += [a["failure"]["kind"] if a["failure"] else a["state"] for a in attempts]
        for before, after in zip(attempts, attempts[1:], strict=False):
            ended = json.loads((Path(before["run_dir"]) / "exit.json").read_text())["ended_at"]
            launched = json.loads((Path(after["run_dir"]) / "wrapper.json").read_text())["launched_at"]
            gaps.append(launched - ended)
        print(f"job {n + 1}: {len(attempts)} attempts in {time.perf_counter() - t0:.1f} s, "
              f"rungs {[a['rung'] for a in attempts[1:]]}, ended {view['state']}", flush=True)
    print(f"failures: {sorted(set(kinds))}")
    print(f"gaps (exit -> next start), s: {[round(g, 3) for g in gaps]}")
    print(f"median {statistics.median(gaps):.3f} s, min {min(gaps):.3f} s, max {max(gaps):.3f} s, n={len(gaps)}")


if __name__ == "__main__":
    main()
