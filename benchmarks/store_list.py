"""How long listing the job store takes with N jobs, each with two attempts (an OOM, then success).

Fills a fresh store (the job directories, or the old SQLite store with --legacy for comparison),
then times in fresh processes, as a user's command would run: `Store().list_jobs(limit)` alone,
and `shardctl list --json` (which also reads every listed job's attempts). Local disk: on NFS each
file open is a round trip, so multiply by the files read (about 3 per job plus 3 per attempt).

    .venv/bin/python benchmarks/store_list.py --jobs 500
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ATTEMPT = dict(rung=None, reason="first", run_dir="/r", log_path="/r/output.log",
               artifacts={"launch.sh": "x" * 2000, "accelerate.yaml": "y" * 600}, warnings=[], resume_from=None)
SPEC = {"apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "bench"},
        "spec": {"entrypoint": {"script": "train.py", "args": ["--steps", "10"]}, "model": {"name_or_path": "m"}}}


def fill(root: Path, jobs: int, legacy: bool) -> None:
    if legacy:
        sys.path.insert(0, str(ROOT))
        from tests.store.legacy_sqlite_store import LegacySqliteStore as Store
    else:
        from orchestrator.store.jobstore import Store  # type: ignore[assignment]
    from orchestrator.spec.failure import Failure
    from orchestrator.spec.states import AttemptState, FailureKind

    store = Store(root)
    oom = Failure(FailureKind.HOST_OOM, "host_oom")
    for i in range(jobs):
        j = store.create_job(name=f"bench-{i}", target="local", spec=SPEC, source="/job.yaml", workdir="/w",
                             checkpoint_dir=None, options={"port": 29500})
        for n, failure in enumerate((oom, None), 1):
            store.add_attempt(j.id, n, spec=SPEC, **ATTEMPT)
            store.start_attempt(j.id, n, external_id=str(1000 + n), started_at=time.time())
            store.end_attempt(j.id, n, failure.end_state if failure else AttemptState.SUCCEEDED, failure,
                              ended_at=time.time(), exit_code=1 if failure else 0)
        store.finish_job(j.id, "succeeded", "attempt 2 succeeded")


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True, cwd=ROOT)
        out.append(time.perf_counter() - start)
    return out


def in_fresh_process(root: Path, module: str, kind: str, limit: int, env: dict[str, str]) -> tuple[float, float]:
    """(list_jobs, then every listed job's attempts) in seconds, timed inside a new process (cold caches
    of the store, warm page cache)."""
    code = (f"import time; from pathlib import Path; from {module} import {kind}\n"
            f"t0 = time.perf_counter(); s = {kind}(Path({str(root)!r})); jobs = s.list_jobs({limit})\n"
            "t1 = time.perf_counter(); [s.attempts(j.id) for j in jobs]; t2 = time.perf_counter()\n"
            f"assert len(jobs) == {limit}; print(t1 - t0, t2 - t1)")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True, cwd=ROOT)
    listed, attempts = out.stdout.split()
    return float(listed), float(attempts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--legacy", action="store_true", help="the SQLite store, for comparison")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="store-list-"))
    start = time.perf_counter()
    fill(root, args.jobs, args.legacy)
    print(f"filled {args.jobs} jobs in {time.perf_counter() - start:.1f} s ({root})")
    env = {**os.environ, "SHARDCTL_HOME": str(root), "PYTHONPATH": str(ROOT)}
    legacy = ("tests.store.legacy_sqlite_store", "LegacySqliteStore")
    module, kind = legacy if args.legacy else ("orchestrator.store.jobstore", "Store")
    for limit in (50, args.jobs):
        runs = [in_fresh_process(root, module, kind, limit, env) for _ in range(args.runs)]
        print(f"list_jobs({limit}): {statistics.median(r[0] for r in runs):.3f} s, then the attempts of each: "
              f"{statistics.median(r[1] for r in runs):.3f} s (median of {args.runs} fresh processes)")
    if not args.legacy:
        for limit in (50, args.jobs):
            times = timed([sys.executable, "-m", "orchestrator.cli", "list", "--json", "--limit", str(limit)], env,
                          args.runs)
            print(f"shardctl list --json --limit {limit}: {statistics.median(times):.3f} s (the whole command)")


if __name__ == "__main__":
    main()
