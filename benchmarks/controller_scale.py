"""TrainingJobs created at once, with the controller's watch-fed cache on and off, side by side:

- burst: 1,000 TrainingJobs and no kubelet: how long until every attempt's Job exists and is
  recorded running, the controller's peak memory, and its API requests per TrainingJob so far;
- lifecycle: 200 TrainingJobs run to Succeeded by the simulated Job controller and kubelet
  (tests/fakekube/cluster.py): the API requests one TrainingJob costs over its whole life.

The controller runs as `shardctl controller` in its own process (so its RSS is its own), pointed at
the in-process fake API server of the test suite (tests/fakekube), which counts every request by
verb and resource. Requests are counted from after the controller's start-up (its three lists and
watches, shared by all jobs, are not counted; the watch timeout is longer than a run, so they are not
reopened). The TrainingJobs are written straight into the fake's store, all at once, so the clock
measures the controller and not the submitter.

    .venv/bin/python benchmarks/controller_scale.py --jobs 1000 --lifecycle-jobs 200 --workers 8
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.controller.test_controller import policy_file, training_job  # noqa: E402
from tests.fakekube.cluster import SimulatedCluster  # noqa: E402
from tests.fakekube.server import FakeApiServer  # noqa: E402

NS = "ml"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(jobs: int, workers: int, cache: bool, lifecycle: bool) -> dict[str, Any]:
    """One controller process against a fresh fake API server; returns what was measured."""
    out: dict[str, Any] = {"jobs": jobs, "cache": cache, "lifecycle": lifecycle}
    with FakeApiServer(history=60 * jobs, bookmark_s=5) as api, tempfile.TemporaryDirectory() as tmp:
        controller = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "controller", "--server", api.url, "--namespace", NS,
             "--policy", policy_file(Path(tmp)),
             "--workers", str(workers), "--resync-seconds", "3600", "--watch-timeout-seconds", "600",
             "--health-port", "0", "--log-level", "warning", "--cache" if cache else "--no-cache"], cwd=ROOT)
        cluster = SimulatedCluster(api, run_s=1.0, tick_s=0.2) if lifecycle else None
        try:
            while any(api.store.requests[("GET", r)] < 2 for r in ("trainingjobs", "jobs", "pods")):
                if controller.poll() is not None:  # start-up: imports, then a list and a watch per resource
                    raise SystemExit("the controller died")
                time.sleep(0.05)
            time.sleep(0.5)
            out["idle_rss"] = peak_rss_mib(controller.pid)
            before = Counter(api.store.requests)
            tj = api.resource("trainingjobs", "shardctl.dev")
            batch_jobs = api.resource("jobs", "batch")
            if cluster is not None:
                cluster.__enter__()
            t0 = time.perf_counter()
            for i in range(jobs):
                api.store.create(tj, NS, training_job(f"llm-{i:04d}"))
            out["created_s"] = time.perf_counter() - t0

            def phases() -> Counter:
                with api.store.lock:
                    return Counter((o.get("status") or {}).get("phase") for o in api.store.objects[tj].values())

            half = None
            while True:
                if controller.poll() is not None:
                    raise SystemExit("the controller died")
                n = len(api.store.objects[batch_jobs])
                if half is None and n >= jobs // 2:
                    half = time.perf_counter() - t0
                if n >= jobs:
                    break
                time.sleep(0.05)
            out["half_s"], out["all_jobs_s"] = half, time.perf_counter() - t0
            done = ("Succeeded",) if lifecycle else ("Running", "Succeeded")
            while sum(phases()[p] for p in done) < jobs:
                if controller.poll() is not None:
                    raise SystemExit("the controller died")
                time.sleep(0.1)
            out["done_s"] = time.perf_counter() - t0
            time.sleep(2)  # what the last events cause
            requests = Counter(api.store.requests)
            requests.subtract(before)
            out["requests"] = +requests
            out["rss"] = peak_rss_mib(controller.pid)
            out["phases"] = dict(phases())
        finally:
            if cluster is not None:
                cluster.__exit__(None, None, None)
            controller.terminate()
            controller.wait(30)
    return out


def report(r: dict[str, Any]) -> None:
    jobs = r["jobs"]
    total = sum(r["requests"].values())
    what = "lifecycle (to Succeeded)" if r["lifecycle"] else "burst (to Running, no kubelet)"
    print(f"\n== {what}, cache {'on' if r['cache'] else 'off'}: {jobs} TrainingJobs "
          f"(written in {r['created_s']:.2f} s) ==")
    print(f"half of the Jobs exist after {r['half_s']:.1f} s; all after {r['all_jobs_s']:.1f} s; "
          f"all {'succeeded' if r['lifecycle'] else 'recorded running'} after {r['done_s']:.1f} s")
    print(f"controller peak RSS: {r['rss']:.0f} MiB (idle before: {r['idle_rss']:.0f} MiB)")
    print(f"API requests: {total} = {total / jobs:.2f} per TrainingJob")
    for (verb, plural), n in sorted(r["requests"].items(), key=lambda kv: -kv[1]):
        print(f"  {verb:6} {plural:13} {n:7}  ({n / jobs:.2f} per job)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000, help="TrainingJobs in the burst (0: skip it)")
    ap.add_argument("--lifecycle-jobs", type=int, default=200, help="TrainingJobs run to Succeeded (0: skip)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--cache", choices=["on", "off", "both"], default="both")
    args = ap.parse_args()
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.cache]
    results = []
    for lifecycle, jobs in ((False, args.jobs), (True, args.lifecycle_jobs)):
        for cache in modes if jobs else []:
            results.append(r := run(jobs, args.workers, cache, lifecycle))
            report(r)
    print("\nrequests per TrainingJob:")
    for r in results:
        print(f"  {'lifecycle' if r['lifecycle'] else 'burst':9} cache {'on ' if r['cache'] else 'off'}: "
              f"{sum(r['requests'].values()) / r['jobs']:.2f}")


if __name__ == "__main__":
    main()
