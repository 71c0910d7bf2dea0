"""1,000 TrainingJobs created at once: how long until every attempt's Job exists, the controller's
peak memory, and the API requests it makes per TrainingJob.

The controller runs as `shardctl controller` in its own process (so its RSS is its own), pointed at
the in-process fake API server of the test suite (tests/fakekube), which counts every request by
verb and resource. The TrainingJobs are written straight into the fake's store, all at once, so
the clock measures the controller and not the submitter. No kubelet runs: the Jobs are created and
then nothing happens to them, which is the part of the work that scales with the number of jobs.

    .venv/bin/python benchmarks/controller_scale.py --jobs 1000 --workers 8
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.controller.test_controller import training_job  # noqa: E402
from tests.fakekube.server import FakeApiServer  # noqa: E402


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    with FakeApiServer(history=50 * args.jobs, bookmark_s=5) as api:
        controller = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "controller", "--server", api.url, "--namespace", "ml",
             "--workers", str(args.workers), "--resync-seconds", "3600", "--watch-timeout-seconds", "300",
             "--log-level", "warning"], cwd=ROOT)
        try:
            time.sleep(3)  # start-up: imports, first lists, watches open
            idle_rss = peak_rss_mib(controller.pid)
            before = Counter(api.store.requests)
            tj = api.resource("trainingjobs", "shardctl.dev")
            jobs = api.resource("jobs", "batch")
            t0 = time.perf_counter()
            for i in range(args.jobs):
                api.store.create(tj, "ml", training_job(f"llm-{i:04d}"))
            created_s = time.perf_counter() - t0
            half = None
            while True:
                n = len(api.store.objects[jobs])
                if half is None and n >= args.jobs // 2:
                    half = time.perf_counter() - t0
                if n >= args.jobs:
                    break
                if controller.poll() is not None:
                    raise SystemExit("the controller died")
                time.sleep(0.05)
            all_jobs_s = time.perf_counter() - t0
            running = lambda: sum(  # noqa: E731
                1 for o in api.store.objects[tj].values()
                if [a.get("state") for a in (o.get("status") or {}).get("attempts", [])] == ["running"])
            while running() < args.jobs:
                time.sleep(0.05)
            recorded_s = time.perf_counter() - t0
            requests = Counter(api.store.requests)
            requests.subtract(before)
            rss = peak_rss_mib(controller.pid)
        finally:
            controller.terminate()
            controller.wait(30)
    total = sum(requests.values())
    print(f"TrainingJobs: {args.jobs} (written in {created_s:.2f} s); controller workers: {args.workers}")
    print(f"half of the Jobs exist after {half:.1f} s; all {args.jobs} after {all_jobs_s:.1f} s; "
          f"all attempts recorded running after {recorded_s:.1f} s")
    print(f"controller peak RSS: {rss:.0f} MiB (idle before the burst: {idle_rss:.0f} MiB)")
    print(f"API requests: {total} = {total / args.jobs:.1f} per TrainingJob")
    for (verb, plural), n in sorted(requests.items(), key=lambda kv: -kv[1]):
        if n:
            print(f"  {verb:6} {plural:13} {n:6}  ({n / args.jobs:.2f} per job)")


if __name__ == "__main__":
    main()
