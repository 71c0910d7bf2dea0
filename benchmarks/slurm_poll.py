"""Cost of watching many Slurm jobs: sacct calls and wall time per poll, batched vs one call per job.

Needs the development cluster (slurm/dev/cluster up). Submits held jobs (`sbatch --hold`: they
stay PENDING and use nothing), then, for 1, 50 and 200 watched jobs, polls them the way
shardctl does (Poller.poll: one `sacct -j ID,ID,...`) and the naive way (one sacct per job),
interleaved, several rounds. sacct calls are counted by a shim on PATH that logs every real
invocation, not by the poller's own counter.

    eval "$(slurm/dev/cluster env)"; .venv/bin/python benchmarks/slurm_poll.py --rounds 5
    .venv/bin/python benchmarks/slurm_poll.py --sizes 1,200,1000,10000 --rounds 5   # the naive way up to 200

10,000 jobs need the dev cluster's MaxJobCount (20,000: slurm/dev/slurm.conf.in).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.targets.slurm.accounting import Poller, parse_sacct, run_slurm  # noqa: E402


def counting_path(tmp: Path) -> tuple[str, Path]:
    """A PATH whose sacct and squeue log each real invocation."""
    bin_dir, log = tmp / "bin", tmp / "calls.log"
    bin_dir.mkdir()
    for name in ("sacct", "squeue"):
        real = shutil.which(name)
        (bin_dir / name).write_text(f'#!/bin/sh\necho {name} >> "{log}"\nexec "{real}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}", log


def calls(log: Path, name: str = "sacct") -> int:
    return log.read_text().split().count(name) if log.exists() else 0


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
    ap.add_argument("--per-job-up-to", type=int, default=200, help="the naive way only up to this many jobs")
    ap.add_argument("--submitters", type=int, default=4, help="sbatch processes at once while submitting")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.submitters) as pool:  # 10,000 one at a time would take many minutes
        ids = list(pool.map(lambda _: held_job(), range(max(sizes))))
    print(f"submitted {len(ids)} held jobs in {time.perf_counter() - t0:.0f} s", flush=True)
    wait_for_accounting(ids)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["PATH"], log = counting_path(Path(tmp))
            print(f"{'jobs':>5} {'way':>8} {'sacct+squeue calls/poll':>24} {'median s/poll':>14} {'min':>7} {'max':>7}")
            for n in sizes:
                watched = ids[:n]
                times: dict[str, list[float]] = {"batched": [], "per-job": []}
                counts: dict[str, list[tuple[int, int]]] = {"batched": [], "per-job": []}
                ways = (("batched", batched), ("per-job", per_job)) if n <= args.per_job_up_to else \
                    (("batched", batched),)
                for _ in range(args.rounds):  # interleaved, so both ways see the same machine load
                    for way, fn in ways:
                        before = calls(log), calls(log, "squeue")
                        t0 = time.perf_counter()
                        fn(watched)
                        times[way].append(time.perf_counter() - t0)
                        counts[way].append((calls(log) - before[0], calls(log, "squeue") - before[1]))
                for way, _ in ways:
                    sacct_n = statistics.median(a for a, _ in counts[way])
                    c = f"{sacct_n:.0f}+{statistics.median(b for _, b in counts[way]):.0f}"
                    t = times[way]
                    print(f"{n:>5} {way:>8} {c:>24} {statistics.median(t):>14.3f} {min(t):>7.3f} {max(t):>7.3f}")
                if len(ways) == 2:
                    ratio = statistics.median(times["per-job"]) / statistics.median(times["batched"])
                    print(f"{n:>5} per-job / batched wall time: {ratio:.1f}x")
    finally:
        for i in range(0, len(ids), 1000):
            subprocess.run(["scancel", *ids[i:i + 1000]], check=False)


def held_job() -> str:
    """One held job (PENDING, using nothing); sbatch is tried again while slurmctld is busy."""
    for attempt in range(10):
        r = subprocess.run(["sbatch", "--parsable", "--hold", "--mem=16M", "-o", "/dev/null", "--wrap", "true"],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.strip()
        time.sleep(0.5 * (attempt + 1))
    raise SystemExit(f"sbatch: {r.stderr.strip()}")


def wait_for_accounting(ids: list[str], timeout: float = 600) -> None:
    """Until slurmctld has handed every job to slurmdbd, so that sacct knows them all (the naive way asks it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run_slurm(["sacct", "-n", "-X", "-P", "-j", ",".join(ids), "-o", "JobID"], timeout=120)
        known = len(set(out.split()) & set(ids))
        if known == len(ids):
            return
        print(f"accounting knows {known} of {len(ids)} jobs", flush=True)
        time.sleep(5)
    raise SystemExit("accounting did not learn of every job")


if __name__ == "__main__":
    main()
