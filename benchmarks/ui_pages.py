"""Server time of the dashboard's pages (`shardctl ui`) with N jobs in the store.

Fills a fresh store with N finished jobs, each with two attempts (an OOM, then success) and a real log per attempt
(`--steps` progress lines each), then calls the ASGI application in this process, as uvicorn would, with no
network in between: the jobs page (the default 200 rows, and every job with ?limit=N), its live fragment, and one
job's page (the timeline, both attempts' curves from their logs, the log's tail). The first request of each is
timed apart (a fresh server: every record read once), then the median of `--runs` more.

    .venv/bin/python benchmarks/ui_pages.py --jobs 1000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "bench"},
        "spec": {"entrypoint": {"script": "train.py", "args": ["--steps", "10"]}, "model": {"name_or_path": "m"}}}
TOKEN = "benchmark-token-0123456789abcdef"


def fill(root: Path, jobs: int, steps: int) -> list[str]:
    from orchestrator.spec.failure import Failure
    from orchestrator.spec.states import AttemptState, FailureKind, JobState
    from orchestrator.store.jobstore import Store

    store = Store(root)
    oom = Failure(FailureKind.HOST_OOM, "killed by the out-of-memory killer", "oom_kill event")
    ids = []
    for i in range(jobs):
        j = store.create_job(name=f"bench-{i}", target="local", spec=SPEC, source="/job.yaml", workdir="/w",
                             checkpoint_dir=None, options={"port": 29500})
        for n, failure in enumerate((oom, None), 1):
            run = root / "runs" / j.id / f"attempt-{n}"
            run.mkdir(parents=True)
            first = 1 if n == 1 else steps // 2
            (run / "output.log").write_text("".join(f"step {s}/{steps} loss {5 - s / steps:.4f} time 0.25s\n"
                                                    for s in range(first, steps + 1 if n == 2 else steps // 2 + 3)))
            store.add_attempt(j.id, n, spec=SPEC, rung=None, reason="first" if n == 1 else "after host_oom",
                              run_dir=str(run), log_path=str(run / "output.log"), artifacts={}, warnings=[],
                              resume_from=None)
            store.start_attempt(j.id, n, external_id=str(1000 + n), started_at=time.time() - 60)
            store.end_attempt(j.id, n, failure.end_state if failure else AttemptState.SUCCEEDED, failure,
                              ended_at=time.time(), exit_code=1 if failure else 0, peak_memory_bytes=2**31)
        store.finish_job(j.id, JobState.SUCCEEDED, "attempt 2 succeeded")
        ids.append(j.id)
    return ids


async def get(app: Any, path: str) -> tuple[int, int, float]:
    """(status, body bytes, seconds) of one GET through the ASGI interface."""
    query = path.split("?", 1)[1] if "?" in path else ""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path.split("?", 1)[0], "raw_path": path.split("?", 1)[0].encode(), "query_string": query.encode(),
             "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {TOKEN}".encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    status, size = 0, 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            size += len(message.get("body", b""))

    start = time.perf_counter()
    await app(scope, receive, send)
    return status, size, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200, help="progress lines in each attempt's log")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from orchestrator.store.jobstore import Store
    from orchestrator.web.app import make_app
    from orchestrator.web.auth import Auth
    from orchestrator.web.source import StoreSource

    root = Path(tempfile.mkdtemp(prefix="ui-pages-"))
    start = time.perf_counter()
    ids = fill(root, args.jobs, args.steps)
    print(f"filled {args.jobs} jobs (2 attempts, {args.steps}-step logs) in {time.perf_counter() - start:.1f} s "
          f"({root})")
    app = make_app(StoreSource(Store(root)), Auth(TOKEN))
    middle = ids[len(ids) // 2]
    pages = [("jobs page (200 rows)", "/"), (f"jobs page (all {args.jobs} rows)", f"/?limit={args.jobs}"),
             ("jobs live fragment (200 rows)", "/fragments/jobs"), ("a job's page", f"/jobs/{middle}")]

    async def measure() -> None:
        for label, path in pages:
            status, size, first = await get(app, path)
            assert status == 200, (path, status)
            times = [(await get(app, path))[2] for _ in range(args.runs)]
            print(f"{label}: first {first * 1000:.0f} ms, then median {statistics.median(times) * 1000:.0f} ms "
                  f"of {args.runs} ({size / 1024:.0f} KiB)")

    asyncio.run(measure())


if __name__ == "__main__":
    main()
