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

With --envtest-jobs N, first N TrainingJobs on the real control plane of ../shared/k8s-envtest (issue 22): the
controller as the chart runs it, its requests counted from the API server's audit log over the jobs' whole life,
its peak RSS, the time until every attempt's Job exists; --jobs takes several sizes (memory growth on the fake,
whose objects then carry managedFields as a real server's do); --legacy both runs each case with the old
behaviour (SHARDCTL_CONTROLLER_LEGACY=1) first; --profile PREFIX writes each controller thread's cProfile.

    .venv/bin/python benchmarks/controller_scale.py --envtest-jobs 1000 --jobs 0 --lifecycle-jobs 0 --legacy both
    .venv/bin/python benchmarks/controller_scale.py --jobs 1000 5000 --lifecycle-jobs 0 --cache on --legacy both
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def run(jobs: int, workers: int, cache: bool, lifecycle: bool, legacy: bool = False) -> dict[str, Any]:
    """One controller process against a fresh fake API server; returns what was measured."""
    out: dict[str, Any] = {"jobs": jobs, "cache": cache, "lifecycle": lifecycle, "legacy": legacy}
    with FakeApiServer(history=60 * jobs, bookmark_s=5) as api, tempfile.TemporaryDirectory() as tmp:
        api.store.managed_fields = True  # as a real API server's objects (what the cache strips)
        controller = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "controller", "--server", api.url, "--namespace", NS,
             "--policy", policy_file(Path(tmp)),
             "--workers", str(workers), "--resync-seconds", "3600", "--watch-timeout-seconds", "600",
             "--health-port", "0", "--log-level", "warning", "--cache" if cache else "--no-cache"], cwd=ROOT,
            env={**os.environ, **({"SHARDCTL_CONTROLLER_LEGACY": "1"} if legacy else {})})
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


# -- the real control plane (../shared/k8s-envtest) ---------------------------------------------------------
def real(jobs: int, workers: int, legacy: bool, nodes: int, gpus: int, profile: str | None,
         shape: tuple[int, int] = (1, 1)) -> dict[str, Any]:
    """`jobs` TrainingJobs created at once (8 threads) in one namespace of a fresh real control plane (API
    server with an audit log, Job controller, scheduler, the fake kubelet with `nodes` x `gpus` GPUs, every pod
    succeeding after 1 s), the controller run as the chart runs it (tests/envtest/harness.py); measured until
    every TrainingJob has succeeded. `shape`: each TrainingJob's nodes and GPUs per node."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.envtest.harness import ControllerProcess, ControlPlane, Kube, http_get, make_tenant
    from tests.envtest.harness import training_job as real_job

    ns = "scale"
    out: dict[str, Any] = {"jobs": jobs, "legacy": legacy, "real": True}
    state = Path(tempfile.mkdtemp(prefix="shardctl-envtest-"))  # `down` removes it
    with tempfile.TemporaryDirectory() as tmp:
        cp = ControlPlane(state, Path(tmp))  # with an audit log of the service accounts' requests
        controller = None
        try:
            cp.up()
            cp.install_crd()
            cp.start_kubelet(nodes=nodes, gpus=gpus)
            tenant = make_tenant(cp, ns, Path(tmp))
            controller = ControllerProcess(tenant, "bench", Path(tmp) / "controller.log",
                                           ["--workers", str(workers), "--log-level", "warning"])
            if legacy:
                controller.env["SHARDCTL_CONTROLLER_LEGACY"] = "1"
            if profile:
                controller.env["SHARDCTL_CONTROLLER_PROFILE"] = profile
            controller.start()
            user = f"system:serviceaccount:{ns}:{tenant.service_account}"
            kube = Kube(cp.admin())

            def ended() -> float:
                code, text = http_get(controller.url("/metrics"))  # type: ignore[union-attr]
                if code != 200:
                    return -1.0
                for line in text.splitlines():
                    if line.startswith('shardctl_controller_attempts_ended_total{outcome="succeeded"}'):
                        return float(line.split()[-1])
                return 0.0

            while ended() < 0:  # up, leading, its watches open
                if not controller.alive:
                    raise SystemExit(f"the controller died:\n{controller.log()[-3000:]}")
                time.sleep(0.2)
            time.sleep(2)
            out["idle_rss"] = peak_rss_mib(controller.proc.pid)  # type: ignore[union-attr]

            def count_jobs() -> int:
                resp = kube.batch.list_namespaced_job(ns, limit=1, _preload_content=False)
                meta = json.loads(resp.data)
                return len(meta.get("items") or []) + int((meta.get("metadata") or {}).get("remainingItemCount") or 0)

            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: kube.create_tj(ns, real_job(f"llm-{i:04d}", nodes=shape[0], gpus=shape[1])),
                              range(jobs)))
            out["created_s"] = time.perf_counter() - t0
            half = None
            while True:
                if not controller.alive:
                    raise SystemExit(f"the controller died:\n{controller.log()[-3000:]}")
                n = count_jobs()
                if half is None and n >= jobs // 2:
                    half = time.perf_counter() - t0
                if n >= jobs:
                    break
                time.sleep(0.5)
            out["half_s"], out["all_jobs_s"] = half, time.perf_counter() - t0
            out["rss_all_jobs"] = peak_rss_mib(controller.proc.pid)  # type: ignore[union-attr]
            last, progress = 0.0, time.perf_counter()
            while (n_ended := ended()) < jobs:  # the fake kubelet now and then never starts a bound pod: a few may
                if not controller.alive:  # never end, so this stops once nothing has ended for 60 s
                    raise SystemExit(f"the controller died:\n{controller.log()[-3000:]}")
                if n_ended > last:
                    last, progress = n_ended, time.perf_counter()
                elif time.perf_counter() - progress > 60:
                    break
                time.sleep(1)
            out["succeeded"] = ended()
            out["done_s"] = progress - t0
            time.sleep(3)  # what the last events cause
            out["rss"] = peak_rss_mib(controller.proc.pid)  # type: ignore[union-attr]
            out["requests"] = Counter(cp.requests_of(user).values())
        finally:
            if controller is not None:
                controller.stop()
                warnings = [ln for ln in controller.log().splitlines() if "WARNING" in ln or "ERROR" in ln]
                out["warnings"] = len(warnings)
                if warnings:
                    print(f"controller: {len(warnings)} warnings, the first: {warnings[0][:300]}")
            cp.down()
            shutil.rmtree(state, ignore_errors=True)
    return out


SHARED = {"watch", "list"}  # the watches and their (re)lists, and the Lease: shared by every TrainingJob


def report_real(r: dict[str, Any]) -> None:
    jobs, requests = r["jobs"], r["requests"]
    total = sum(requests.values())
    own = sum(n for (verb, what), n in requests.items() if verb not in SHARED and what != "leases")
    print(f"\n== real control plane, {'old behaviour (SHARDCTL_CONTROLLER_LEGACY=1)' if r['legacy'] else 'now'}: "
          f"{jobs} TrainingJobs (created in {r['created_s']:.1f} s) ==")
    print(f"half of the Jobs exist after {r['half_s']:.1f} s; all after {r['all_jobs_s']:.1f} s; "
          f"{r['succeeded']:.0f} succeeded after {r['done_s']:.1f} s")
    print(f"controller peak RSS: {r['rss_all_jobs']:.0f} MiB when all Jobs exist, {r['rss']:.0f} MiB at the end "
          f"(idle before: {r['idle_rss']:.0f} MiB)")
    print(f"API requests (audit log): {total} = {total / jobs:.2f} per TrainingJob; without the watches, lists "
          f"and Lease renewals: {own / jobs:.2f}")
    for (verb, what), n in sorted(requests.items(), key=lambda kv: -kv[1]):
        print(f"  {verb:6} {what:22} {n:7}  ({n / jobs:.2f} per job)")


def report(r: dict[str, Any]) -> None:
    jobs = r["jobs"]
    total = sum(r["requests"].values())
    what = "lifecycle (to Succeeded)" if r["lifecycle"] else "burst (to Running, no kubelet)"
    old = "old behaviour, " if r["legacy"] else ""
    print(f"\n== {what}, {old}cache {'on' if r['cache'] else 'off'}: {jobs} TrainingJobs "
          f"(written in {r['created_s']:.2f} s) ==")
    print(f"half of the Jobs exist after {r['half_s']:.1f} s; all after {r['all_jobs_s']:.1f} s; "
          f"all {'succeeded' if r['lifecycle'] else 'recorded running'} after {r['done_s']:.1f} s")
    print(f"controller peak RSS: {r['rss']:.0f} MiB (idle before: {r['idle_rss']:.0f} MiB)")
    print(f"API requests: {total} = {total / jobs:.2f} per TrainingJob")
    for (verb, plural), n in sorted(r["requests"].items(), key=lambda kv: -kv[1]):
        print(f"  {verb:6} {plural:13} {n:7}  ({n / jobs:.2f} per job)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, nargs="+", default=[1000],
                    help="TrainingJobs in the burst on the fake, one run each (0: skip it)")
    ap.add_argument("--lifecycle-jobs", type=int, default=200, help="TrainingJobs run to Succeeded (0: skip)")
    ap.add_argument("--envtest-jobs", type=int, default=0,
                    help="TrainingJobs on the real control plane in ../shared/k8s-envtest, run to Succeeded (0: skip)")
    ap.add_argument("--envtest-nodes", type=int, default=20, help="fake nodes (of --envtest-gpus GPUs each)")
    ap.add_argument("--envtest-gpus", type=int, default=8)
    ap.add_argument("--envtest-shape", default="1x1", help="each TrainingJob's nodes x GPUs per node")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--cache", choices=["on", "off", "both"], default="both")
    ap.add_argument("--legacy", choices=["on", "off", "both"], default="off",
                    help="the controller's old behaviour too (SHARDCTL_CONTROLLER_LEGACY=1): both runs it first")
    ap.add_argument("--profile", help="cProfile the controller's threads into PREFIX.THREAD files (real runs)")
    args = ap.parse_args()
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.cache]
    legacies = {"on": [True], "off": [False], "both": [True, False]}[args.legacy]
    results = []
    for legacy in legacies if args.envtest_jobs else []:
        results.append(r := real(args.envtest_jobs, args.workers, legacy, args.envtest_nodes, args.envtest_gpus,
                                 f"{args.profile}-{'old' if legacy else 'new'}" if args.profile else None,
                                 tuple(int(n) for n in args.envtest_shape.split("x"))))  # type: ignore[arg-type]
        report_real(r)
    for legacy in legacies:
        for lifecycle, counts in ((False, args.jobs), (True, [args.lifecycle_jobs])):
            for jobs in counts:
                for cache in modes if jobs else []:
                    results.append(r := run(jobs, args.workers, cache, lifecycle, legacy))
                    report(r)
    print("\nrequests per TrainingJob:")
    for r in results:
        kind = "real" if r.get("real") else "lifecycle" if r["lifecycle"] else "burst"
        cache = "" if r.get("real") else " cache " + ("on " if r["cache"] else "off")
        print(f"  {kind:9} {r['jobs']:5} {'old' if r['legacy'] else 'new'}{cache}: "
              f"{sum(r['requests'].values()) / r['jobs']:.2f}")
    growth = [r for r in results if not r.get("real") and not r["lifecycle"] and r["cache"]]
    if growth:
        print("\ncontroller memory on the fake (cache on), burst to Running:")
        for r in growth:
            print(f"  {'old' if r['legacy'] else 'new'} {r['jobs']:5} TrainingJobs: peak {r['rss']:.0f} MiB, idle "
                  f"{r['idle_rss']:.0f} MiB: {(r['rss'] - r['idle_rss']) * 1024 / r['jobs']:.1f} KiB per TrainingJob")


if __name__ == "__main__":
    main()
