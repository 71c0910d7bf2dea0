"""What the read commands and `gc` cost as the job store grows: 100, 1,000 and 10,000 jobs, side by side in one run.

    .venv/bin/python benchmarks/store_scale.py --sizes 100,1000,10000 --runs 5 --gc 1000 --start 11 \\
        [--baseline DIR] [--rig]

Each store is filled with finished jobs of two attempts (a host OOM, then success), each attempt with its run
directory and a log, written with the store's own writers with fsync off (durability is not what is measured:
10,000 jobs fill in about a minute instead of about ten). Then each command runs in fresh processes, as a user's
would, with bytecode cached as an installed package has it: `shardctl list` (the newest 50), `list --limit 20`,
`list --json`, `status ID`, `history ID` and `logs ID` (ID: the oldest job, which no listing shows). The first
run after filling builds the store's caches (its index, and the summaries and views of the jobs shown): its time
is printed apart; a figure is the median of --runs after it. The variants (--baseline, this code, --rig) take
turns, command by command, so a noisy machine slows each alike.

--baseline DIR: the same commands with another checkout's code (`git archive HEAD | tar -x -C DIR`), same stores.
--rig: the same again through host A's sshfs mount of the two-host rig (scripts/twohosts up; its env exported),
    with each store filled on the server's side of it.
--gc N: `shardctl gc --older-than 0` on a store of N finished jobs, each with its attempts' files and three
    checkpoints, sharing 50 code snapshots (and 10 no job uses): the dry run, then `--yes`, and the space freed.
--start N: `shardctl --help` next to `accelerate launch --help`, N interleaved runs.
--running: after those commands, one unfinished local job is added to the store (its attempt 1 running, with its log)
    and `status`, `history` and `logs` of it are timed the same way. Its resident supervisor is stood in for by a
    process that holds the job's supervisor lock and is recorded as its supervisor (what a live `Supervisor.run`
    shows these commands: they find it alive and start none); it moves nothing, so the job stays as it was
    recorded. Not through the rig (--rig): its sshfs mount has no locks, so a command there would start a real
    supervisor.
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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPEC = {"apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "bench"},
        "spec": {"entrypoint": {"script": "train.py", "args": ["--steps", "10"]}, "model": {"name_or_path": "m"}}}
ARTIFACTS = {"launch.sh": "x" * 2000, "accelerate.yaml": "y" * 600}
LOG = "".join(f"step {i}/10 loss {2.0 / i:.3f}\n" for i in range(1, 11))
COMMANDS: list[tuple[str, Callable[[str], list[str]]]] = [
    ("list", lambda job: ["list"]),
    ("list --limit 20", lambda job: ["list", "--limit", "20"]),
    ("list --json", lambda job: ["list", "--json"]),
    ("status", lambda job: ["status", job]),
    ("history", lambda job: ["history", job]),
    ("logs", lambda job: ["logs", job]),
    ("list --group", lambda job: ["list", "--group", SWEEP]),
]
SWEEP = "bench-sweep"  # the group of the oldest SWEEP_POINTS jobs: a sweep's points, as few in any store
SWEEP_POINTS = 20


def fill(root: Path, jobs: int, checkpoints: int = 0, snapshots: int = 0) -> None:
    """`jobs` finished jobs written by the store's own writers (fsync off in this process only)."""
    sys.path.insert(0, str(ROOT))
    from orchestrator.intake import snapshot
    from orchestrator.spec.failure import Failure
    from orchestrator.spec.states import AttemptState, FailureKind
    from orchestrator.store.jobstore import Store

    real_fsync = os.fsync
    os.fsync = lambda fd: None  # type: ignore[assignment]
    try:
        store = Store(root)
        workdirs = ["/w"]
        if snapshots:
            workdirs = []
            for i in range(snapshots + 10):
                src = root.parent / f"{root.name}-src-{i}"
                src.mkdir()
                for f in range(20):
                    (src / f"m{f}.py").write_text(f"# snapshot {i}, file {f}\n" + "x = 1\n" * 800)
                snap = snapshot.take(snapshot.plan(src), root / "snapshots")
                old = time.time() - 7200  # adopted two hours ago: past gc's grace
                os.utime(Path(snap.path).parent / snapshot.MANIFEST, (old, old))
                if i < snapshots:
                    workdirs.append(snap.path)  # the last 10 are used by no job
        oom = Failure(FailureKind.HOST_OOM, "host_oom")
        for i in range(jobs):
            labels = {"shardctl.dev/group": SWEEP, "shardctl.dev/sweep-point": str(i)} if i < SWEEP_POINTS else {}
            spec = {**SPEC, "metadata": {**SPEC["metadata"], "labels": labels}} if labels else SPEC
            j = store.create_job(name=f"bench-{i}", target="local", spec=spec, source="/job.yaml",
                                 workdir=workdirs[i % len(workdirs)], checkpoint_dir=None, options={"port": 29500},
                                 exclusive_name=False)
            for n, failure in enumerate((oom, None), 1):
                run_dir = Path(j.job_dir) / f"attempt-{n}"
                run_dir.mkdir()
                (run_dir / "output.log").write_text(LOG)
                for name, text in ARTIFACTS.items():
                    (run_dir / name).write_text(text)
                store.add_attempt(j.id, n, spec=SPEC, rung=None, reason="first" if n == 1 else "shard more",
                                  run_dir=str(run_dir), log_path=str(run_dir / "output.log"), artifacts=ARTIFACTS,
                                  warnings=[], resume_from=None)
                store.start_attempt(j.id, n, external_id=str(1000 + n), started_at=time.time())
                store.end_attempt(j.id, n, failure.end_state if failure else AttemptState.SUCCEEDED, failure,
                                  ended_at=time.time(), exit_code=1 if failure else 0)
            for step in range(1, checkpoints + 1):
                ckpt = Path(j.checkpoint_dir) / f"step_{step}"
                ckpt.mkdir(parents=True)
                (ckpt / "model.safetensors.json").write_text("{}" + " " * (64 * 1024))
            store.finish_job(j.id, "succeeded", "attempt 2 succeeded")
    finally:
        os.fsync = real_fsync


RUNNING_COMMANDS: list[tuple[str, Callable[[str], list[str]]]] = [
    ("status (running)", lambda job: ["status", job]),
    ("history (running)", lambda job: ["history", job]),
    ("logs (running)", lambda job: ["logs", job]),
]
HOLD_LOCK = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
             "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()")


def add_running(root: Path) -> tuple[str, subprocess.Popen]:
    """One unfinished local job, attempt 1 running with its log, and a process that holds its supervisor lock and is
    recorded as its resident supervisor (stop it by closing its stdin)."""
    sys.path.insert(0, str(ROOT))
    from orchestrator.store.jobstore import Store
    from orchestrator.supervise.supervisor import LOCK_NAME

    store = Store(root)
    j = store.create_job(name="bench-running", target="local", spec=SPEC, source="/job.yaml", workdir="/w",
                         checkpoint_dir=None, options={"port": 29500}, exclusive_name=False)
    run_dir = Path(j.job_dir) / "attempt-1"
    run_dir.mkdir()
    (run_dir / "output.log").write_text(LOG)
    store.add_attempt(j.id, 1, spec=SPEC, rung=None, reason="first", run_dir=str(run_dir),
                      log_path=str(run_dir / "output.log"), artifacts=ARTIFACTS, warnings=[], resume_from=None)
    store.start_attempt(j.id, 1, external_id="1001", started_at=time.time())
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(Path(j.job_dir) / LOCK_NAME)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    store.note_supervisor(j.id, holder.pid)
    return j.id, holder


def env_for(home: Path, code: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # bytecode cached, as installed
    return {**env, "SHARDCTL_HOME": str(home), "PYTHONPATH": str(code), "COLUMNS": "200"}


def once(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    return time.perf_counter() - start


def oldest_job(home: Path) -> str:
    """The oldest job's id, read from the job files (no cache of the store's)."""
    import json

    jobs = home / "jobs"
    return min(os.listdir(jobs), key=lambda j: json.loads((jobs / j / "job.json").read_text())["created_at"])


def commands(variants: list[tuple[str, Path, Path]], runs: int, which: list[tuple[str, Callable[[str], list[str]]]]
             = COMMANDS, job_of: Callable[[Path], str] | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    """label -> command -> (first run, median of `runs` after it), for each (label, store, code) variant. The
    variants' runs alternate, command by command, so the machine's noise hits each alike. `job_of`: the job the
    commands name in a store (default: its oldest)."""
    out: dict[str, dict[str, tuple[float, float]]] = {label: {} for label, _, _ in variants}
    jobs = {label: (job_of or oldest_job)(home) for label, home, _ in variants}
    for name, args in which:
        argvs = {label: [sys.executable, "-m", "orchestrator.cli", *args(jobs[label])] for label, _, _ in variants}
        envs = {label: env_for(home, code) for label, home, code in variants}
        codes = {label: code for label, _, code in variants}
        first = {label: once(argvs[label], envs[label], codes[label]) for label in argvs}
        times: dict[str, list[float]] = {label: [] for label in argvs}
        for _ in range(runs):
            for label in argvs:
                times[label].append(once(argvs[label], envs[label], codes[label]))
        for label in argvs:
            out[label][name] = (first[label], statistics.median(times[label]))
            print(f"  {label} {name}: first {first[label]:.3f} s, median {out[label][name][1]:.3f} s "
                  f"(min {min(times[label]):.3f}, max {max(times[label]):.3f}, n={runs})", flush=True)
    return out


def size_of(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(path) for n in names)


def bench_gc(jobs: int, runs_dir: Path) -> None:
    home = runs_dir / f"gc-{jobs}"
    start = time.perf_counter()
    fill(home, jobs, checkpoints=3, snapshots=50)
    print(f"filled {jobs} jobs for gc in {time.perf_counter() - start:.0f} s", flush=True)
    env = env_for(home, ROOT)
    before = size_of(home)
    dry = once([sys.executable, "-m", "orchestrator.cli", "gc", "--older-than", "0"], env, ROOT)
    assert size_of(home) >= before, "the dry run removed something"
    removal = once([sys.executable, "-m", "orchestrator.cli", "gc", "--older-than", "0", "--yes"], env, ROOT)
    after = size_of(home)
    print(f"gc of {jobs} finished jobs: dry run {dry:.2f} s, --yes {removal:.2f} s, store {before / 2**20:.1f} MiB "
          f"-> {after / 2**20:.1f} MiB (freed {(before - after) / 2**20:.1f} MiB)", flush=True)


def bench_start(runs: int) -> None:
    argvs = {"shardctl --help": [str(BIN / "shardctl"), "--help"],
             "accelerate launch --help": [str(BIN / "accelerate"), "launch", "--help"]}
    env = env_for(Path(tempfile.gettempdir()), ROOT)
    for argv in argvs.values():
        once(argv, env, ROOT)
    samples: dict[str, list[float]] = {name: [] for name in argvs}
    for _ in range(runs):
        for name, argv in argvs.items():
            samples[name].append(once(argv, env, ROOT))
    for name, times in samples.items():
        print(f"{name}: median {statistics.median(times) * 1000:.0f} ms (min {min(times) * 1000:.0f}, "
              f"max {max(times) * 1000:.0f}, n={runs})", flush=True)


def table(results: dict[str, dict[int, dict[str, tuple[float, float]]]], sizes: list[int]) -> None:
    print("\n| command | " + " | ".join(f"{s:,} jobs" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for label, by_size in results.items():
        for name, _ in COMMANDS + RUNNING_COMMANDS:
            if not all(name in by_size[s] for s in sizes):
                continue  # --running not asked for, or not through the rig
            cells = [f"{by_size[s][name][1]:.2f} s (first {by_size[s][name][0]:.2f})" for s in sizes]
            print(f"| {label}`{name}` | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout's code, timed on the same stores")
    parser.add_argument("--rig", action="store_true", help="also through the two-host rig's mount A")
    parser.add_argument("--gc", type=int, default=0, metavar="N", help="time gc on a store of N finished jobs")
    parser.add_argument("--start", type=int, default=0, metavar="N", help="time the CLI's start, N runs")
    parser.add_argument("--running", action="store_true",
                        help="also status, history and logs of an unfinished local job whose supervisor is alive")
    parser.add_argument("--keep", action="store_true", help="leave the stores in place")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    runs_dir = Path(tempfile.mkdtemp(prefix="store-scale-"))
    rig = None
    if args.rig:
        server, view = os.environ.get("SHARDCTL_TWOHOSTS_SERVER"), os.environ.get("SHARDCTL_TWOHOSTS_A")
        if not server or not view:
            sys.exit("--rig: run scripts/twohosts up and export its env first")
        rig = (Path(server), Path(view))
    results: dict[str, dict[int, dict[str, tuple[float, float]]]] = {}
    try:
        if args.start:
            bench_start(args.start)
        for size in sizes:
            home = runs_dir / f"jobs-{size}"
            start = time.perf_counter()
            fill(home, size)
            print(f"filled {size} jobs in {time.perf_counter() - start:.0f} s", flush=True)
            variants = [("before", home, args.baseline.resolve())] if args.baseline else []
            variants.append(("now", home, ROOT))
            if rig is not None:
                name = f"{runs_dir.name}-{size}"
                fill(rig[0] / name, size)
                variants.append(("rig", rig[1] / name, ROOT))
            measured = commands(variants, args.runs)
            if args.running:
                running, holder = add_running(home)
                try:
                    local = [v for v in variants if v[0] != "rig"]  # no locks through sshfs: see --running
                    for label, found in commands(local, args.runs, RUNNING_COMMANDS,
                                                  lambda _, job=running: job).items():
                        measured[label].update(found)
                finally:
                    assert holder.stdin is not None
                    holder.stdin.close()
                    holder.wait(10)
            for label, prefix in (("before", "before: "), ("now", ""), ("rig", "rig: ")):
                if label in measured:
                    results.setdefault(prefix, {})[size] = measured[label]
            if rig is not None:
                shutil.rmtree(rig[0] / f"{runs_dir.name}-{size}", ignore_errors=True)
            if not args.keep:
                shutil.rmtree(home, ignore_errors=True)
        if args.gc:
            bench_gc(args.gc, runs_dir)
        if results:
            table(results, sizes)
    finally:
        if not args.keep:
            shutil.rmtree(runs_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
