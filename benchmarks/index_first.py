"""The first `list` of a store whose index is missing: it reads every job's job.json once to build the index. On a
network filesystem each read is a round trip, so this is where reading many at once pays.

    .venv/bin/python benchmarks/index_first.py --jobs 10000 --runs 2 --baseline "$BASE" \
        --write "$SHARDCTL_TWOHOSTS_SERVER/index-first" --read "$SHARDCTL_TWOHOSTS_A/index-first"

The store is filled through --write (the file server's side of the two-host rig), and `shardctl list --limit 20`
is timed through --read (host A's sshfs mount), the index removed and `--settle` seconds waited before each run
so that sshfs's caches have expired; this code and --baseline's (another checkout's orchestrator/) take turns.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fill(root: Path, jobs: int) -> None:
    sys.path.insert(0, str(ROOT))
    from orchestrator.store.jobstore import Store

    real_fsync = os.fsync
    os.fsync = lambda fd: None  # type: ignore[assignment]  # the fill, not the timed part
    try:
        store = Store(root)
        for i in range(jobs):
            job = store.create_job(name=f"job-{i}", target="local", spec={"metadata": {"name": f"job-{i}"},
                                                                          "spec": {}},
                                   source=None, workdir="/w", checkpoint_dir=None, exclusive_name=False)
            store.finish_job(job.id, "cancelled", "cancelled before the first attempt started")
    finally:
        os.fsync = real_fsync


def first_list(code: Path, home: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(code), "SHARDCTL_HOME": str(home)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "orchestrator", "list", "--limit", "20"], cwd="/", env=env, check=True,
                   capture_output=True, timeout=600)
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=10000)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--baseline", type=Path, help="another checkout's code, timed in turns with this one")
    p.add_argument("--write", type=Path, required=True, help="where the store is filled (the server's side)")
    p.add_argument("--read", type=Path, required=True, help="the same directory as the timed command sees it")
    p.add_argument("--settle", type=float, default=25.0, help="seconds before each run (caches expire)")
    args = p.parse_args()
    shutil.rmtree(args.write, ignore_errors=True)
    fill(args.write, args.jobs)
    variants = [("now", ROOT)] + ([("before", args.baseline)] if args.baseline else [])
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(args.runs):
        for name, code in variants:
            shutil.rmtree(args.write / "index", ignore_errors=True)
            time.sleep(args.settle)
            took = first_list(code, args.read)
            times[name].append(took)
            print(f"{name}: first list {took:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    for name, found in times.items():
        print(f"{name}: median {statistics.median(found):.2f} s of {found}")
    shutil.rmtree(args.write, ignore_errors=True)


if __name__ == "__main__":
    main()
