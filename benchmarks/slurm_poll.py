"""Cost of watching many Slurm jobs: sacct calls and wall time per poll, batched vs one call per job.

Needs the development cluster (slurm/dev/cluster up). Submits held jobs (`sbatch --hold`: they
stay PENDING and use nothing), then, for 1, 50 and 200 watched jobs, polls them the way
shardctl does (Poller.poll: one `sacct -j ID,ID,...`) and the naive way (one sacct per job),
interleaved, several rounds. sacct calls are counted by a shim on PATH that logs every real
invocation, not by the poller's own counter.

    eval "$(slurm/dev/cluster env)"; .venv/bin/python benchmarks/slurm_poll.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.targets.slurm.accounting import Poller, parse_sacct, run_slurm  # noqa: E402


def counting_path(tmp: Path) -> tuple[str, Path]:
    bin_dir, log = tmp / "bin", tmp / "calls.log"
    bin_dir.mkdir()
    real = shutil.which("sacct")
    (bin_dir / "sacct").write_text(f'#!/bin/sh\necho sacct >> "{log}"\nexec "{real}" "$@"\n')
    (bin_dir / "sacct").chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}", log


def calls(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def batched(ids: list[str]) -> None:
    poller = Poller(interval_s=0)
    poller.watch(ids)
    found = poller.poll()
    assert len(found) == len(ids), (len(found), len(ids))


def per_job(ids: list[str]) -> None:
    for job_id in ids:
        assert job_id in parse_sacct(run_slurm(["sacct", "-n", "-P", "-j", job_id, "-o",
                                                "JobID,State,ExitCode,MaxRSS,Reason"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,50,200")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    ids = [subprocess.run(["sbatch", "--parsable", "--hold", "--mem=16M", "-o", "/dev/null", "--wrap", "true"],
                          capture_output=True, text=True, check=True).stdout.strip() for _ in range(max(sizes))]
    time.sleep(3)  # let slurmctld hand them to slurmdbd, so sacct knows them all
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["PATH"], log = counting_path(Path(tmp))
            print(f"{'jobs':>5} {'way':>8} {'sacct calls/poll':>17} {'median s/poll':>14} {'min':>7} {'max':>7}")
            for n in sizes:
                watched = ids[:n]
                times: dict[str, list[float]] = {"batched": [], "per-job": []}
                counts: dict[str, list[int]] = {"batched": [], "per-job": []}
                for _ in range(args.rounds):  # interleaved, so both ways see the same machine load
                    for way, fn in (("batched", batched), ("per-job", per_job)):
                        before = calls(log)
                        t0 = time.perf_counter()
                        fn(watched)
                        times[way].append(time.perf_counter() - t0)
                        counts[way].append(calls(log) - before)
                for way in ("batched", "per-job"):
                    c = statistics.median(counts[way])
                    t = times[way]
                    print(f"{n:>5} {way:>8} {c:>17.0f} {statistics.median(t):>14.3f} {min(t):>7.3f} {max(t):>7.3f}")
                ratio = statistics.median(times["per-job"]) / statistics.median(times["batched"])
                print(f"{n:>5} per-job / batched wall time: {ratio:.1f}x")
    finally:
        subprocess.run(["scancel", *ids], check=False)


if __name__ == "__main__":
    main()
