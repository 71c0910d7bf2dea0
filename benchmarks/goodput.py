"""Goodput under faults: one training run with a scripted fault schedule, under shardctl and under the plain
alternative, side by side on the dev Slurm cluster (slurm/dev/cluster up, the site profile).

    .venv/bin/python benchmarks/goodput.py --minutes 20

The run: examples/train_tiny.py, 2 CPU processes on one node, `--step-sleep 1` so a step takes about a second,
enough steps for about --minutes of fault-free training, a checkpoint every 10 steps. Both systems get the same
script, arguments and fault schedule (examples/fault_schedule.py; each keeps its own record of which faults
happened), at once, in the proportions large runs see: three GPU faults (uncorrectable ECC; each leaves its node
broken for --broken seconds, as a dead GPU does until the node is repaired), a network fault (NCCL's
ncclRemoteError), a hang (rank 1 blocks; rank 0 waits in its collective), a CUDA OOM, and a real preemption (a job in
the site profile's `urgent` partition takes both nodes at --preempt-at of the planned time).

- shardctl: `target: slurm`, `resilience.hang_after: 60s`, `resilience.max_restarts: 20`; the site's suspect-node
  period (SHARDCTL_SUSPECT_FOR) is --broken, the repair turnaround of the simulated site.
- plain: one sbatch job (`--requeue`) running `accelerate launch --max_restarts 100` with the same accelerate config
  and launch environment shardctl compiles for attempt 1 (its `export` lines but shardctl's own; torchrun restarts
  every worker in place, on the same node), and
  `--pg-timeout 300` so that a hung collective ends in 5 minutes rather than gloo's 30.

Measured from the logs: a step's useful time is its own compute time (`time X s` in its line) plus the sleep; the
useful time of a run is that of each step of the finished run, counted once (a step done again after a restart is
recomputed, not useful); effective training time = useful time / wall time (first submission to the end); steps
recomputed = step lines - distinct steps. Each system is stopped at --cap x the planned time if it has not finished.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.store.jobstore import Store  # noqa: E402

STEP = re.compile(r"^step (\d+)/(\d+) loss \S+ seq \d+ time ([0-9.]+)s", re.MULTILINE)
SCHEDULE = [(0.10, "gpu"), (0.25, "network"), (0.40, "gpu"), (0.55, "hang"), (0.70, "oom"), (0.85, "gpu")]
TINY = ["--dim", "32", "--heads", "2", "--layers", "1", "--vocab", "64", "--seq-len", "32"]


def sh(*args: str, env: dict | None = None, timeout: float = 120) -> str:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode:
        raise SystemExit(f"{' '.join(args[:3])}: {r.stderr.strip()[-2000:]}")
    return r.stdout


def train_args(steps: int, work: Path, who: str, ckpt: str, micro: str = "2", accum: str = "1") -> list[str]:
    return ["--steps", str(steps), "--micro-batch", micro, "--grad-accum", accum, *TINY, "--step-sleep", "1",
            "--save-every", "10", "--checkpoint-dir", ckpt,
            "--fault-schedule", str(work / "schedule.json"), "--fault-state", str(work / f"faults-{who}"),
            "--pg-timeout", "300"]


def shardctl_spec(steps: int, work: Path) -> dict:
    import yaml

    data = yaml.safe_load((ROOT / "examples/oom-fallback.yaml").read_text())
    data["metadata"]["name"] = "goodput"
    data["spec"].update({
        "target": "slurm", "backend": "fsdp", "sharding": "full",
        "resources": {"nodes": 1, "gpus_per_node": 2, "cpus_per_node": 4, "memory_per_node": "4GiB"},
        "batch": {"micro": 2, "global": 4, "seq_len": 32}, "checkpoint": {"every_steps": 10},
        "resilience": {"hang_after": "60s", "max_restarts": 20}, "fallback": {"max_attempts": 6}})
    data["spec"]["entrypoint"]["args"] = train_args(steps, work, "shardctl", "{checkpoint_dir}", "{micro_batch}",
                                                    "{grad_accum}")
    return data


def launch_environment(job_script: str) -> list[str]:
    """The `export` lines of shardctl's attempt-1 script that are not shardctl's own: what accelerate and torch
    read (ACCELERATE_USE_CPU on this machine, the NCCL and allocator settings), so both runs train alike."""
    return [line for line in job_script.splitlines()
            if line.startswith("export ") and "=" in line and not line.startswith(("export SHARDCTL_", "export PATH="))]


def baseline_script(work: Path, steps: int, config: Path, exports: list[str]) -> str:
    log = work / "plain.log"
    words = ["accelerate", "launch", "--config_file", str(config), "--max_restarts", "100", "--monitor_interval", "1",
             str(ROOT / "examples/train_tiny.py"), *train_args(steps, work, "plain", str(work / "plain-ckpt"))]
    return "\n".join([
        "#!/bin/bash",
        "#SBATCH --job-name=goodput-plain --nodes=1 --ntasks-per-node=1 --cpus-per-task=4 --mem=4G --requeue",
        f"#SBATCH --output={log} --open-mode=append",
        f"export PATH={ROOT / '.venv/bin'}:$PATH DS_ACCELERATOR=cpu",
        *exports,
        f"cd {ROOT}",
        "srun " + " ".join(words),
    ]) + "\n"


def useful(logs: list[str], sleep_s: float = 1.0) -> dict[str, float]:
    lines = [(int(m[1]), int(m[2]), float(m[3])) for text in logs for m in STEP.finditer(text)]
    last: dict[int, float] = {}
    for step, _, took in lines:
        last[step] = took + sleep_s
    total = lines[-1][1] if lines else 0
    return {"steps_done": float(len(last)), "steps_planned": float(total), "step_lines": float(len(lines)),
            "recomputed": float(len(lines) - len(last)), "useful_s": sum(last.values()),
            "finished": float(bool(total) and len(last) == total)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20, help="planned fault-free training time")
    p.add_argument("--broken", type=float, default=240, help="seconds a GPU fault leaves its node broken")
    p.add_argument("--preempt-at", type=float, default=0.9, help="when the preemption comes, in planned time")
    p.add_argument("--cap", type=float, default=2.0, help="stop a run at this many times the planned time")
    p.add_argument("--out", default="", help="working directory (default: a new one under /tmp)")
    args = p.parse_args()
    import tempfile

    import yaml

    work = Path(args.out or tempfile.mkdtemp(prefix="goodput-", dir="/tmp")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    steps = int(args.minutes * 60 / 1.05)
    schedule = [{"step": max(2, int(f * steps)), "kind": kind, **({"broken_s": args.broken} if kind == "gpu" else {})}
                for f, kind in SCHEDULE]
    (work / "schedule.json").write_text(json.dumps(schedule))
    env = {**os.environ, "SHARDCTL_HOME": str(work / "state"), "SHARDCTL_FORCE_CPU": "1", "DS_ACCELERATOR": "cpu",
           "SHARDCTL_SUSPECT_FOR": str(int(args.broken))}
    spec = work / "goodput.yaml"
    spec.write_text(yaml.safe_dump(shardctl_spec(steps, work)))
    print(f"{work}: {steps} steps, schedule {schedule}", flush=True)

    t0 = time.time()
    job_id = json.loads(sh(sys.executable, "-m", "orchestrator", "submit", str(spec), "--json", env=env))["id"]
    store = Store(work / "state")
    first = Path(store.attempts(job_id)[0].run_dir)  # what attempt 1 runs with: its config and environment
    while not (first / "job.sbatch").exists():
        time.sleep(0.2)
    (work / "plain-accelerate.yaml").write_text((first / "accelerate_config.yaml").read_text())
    exports = launch_environment((first / "job.sbatch").read_text())
    (work / "plain.sbatch").write_text(baseline_script(work, steps, work / "plain-accelerate.yaml", exports))
    starts = {"shardctl": t0, "plain": time.time()}
    plain_id = sh("sbatch", "--parsable", str(work / "plain.sbatch"), env=env).strip().split(";")[0]
    planned = args.minutes * 60
    preempted_at = None
    ends: dict[str, float] = {}
    while len(ends) < 2 and time.time() - t0 < args.cap * planned:
        now = time.time()
        if preempted_at is None and now - t0 >= args.preempt_at * planned:
            sh("sbatch", "--parsable", "-p", "urgent", "-N2", "--exclusive", "-o", str(work / "urgent.out"),
               "--wrap", "sleep 5", env=env)
            preempted_at = now - t0
            print(f"preemption at {preempted_at:.0f} s", flush=True)
        if "shardctl" not in ends and store.get_job(job_id).terminal:
            ends["shardctl"] = time.time()
        state = sh("sacct", "-n", "-X", "-P", "-j", plain_id, "-o", "State", env=env).split()
        if "plain" not in ends and state and state[-1] in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                           "OUT_OF_MEMORY", "NODE_FAIL"}:
            ends["plain"] = time.time()
        time.sleep(5)
    for who, cancel in (("shardctl", ["python", "-m", "orchestrator", "cancel", job_id]),
                        ("plain", ["scancel", plain_id])):
        if who not in ends:
            ends[who] = time.time()
            subprocess.run([sys.executable, *cancel[1:]] if cancel[0] == "python" else cancel, env=env, cwd=ROOT,
                           capture_output=True, timeout=120)
    attempts = store.attempts(job_id)
    logs = {"shardctl": [Path(a.log_path).read_text(errors="replace") for a in attempts if Path(a.log_path).exists()],
            "plain": [(work / "plain.log").read_text(errors="replace")]}
    results = {}
    for who in ("shardctl", "plain"):
        r = useful(logs[who])
        r["wall_s"] = ends[who] - starts[who]
        r["effective"] = r["useful_s"] / r["wall_s"]
        results[who] = r
    results["shardctl"]["attempts"] = float(len(attempts))
    results["shardctl_attempts"] = [{"n": a.number, "state": str(a.state.value),
                                     "failure": a.failure.kind.value if a.failure else None,
                                     "rung": a.rung} for a in attempts]
    # torchrun logs each failed worker group at ERROR ("failed (exitcode: 1) local_rank: ..."), then restarts it
    results["plain"]["restarts"] = float(sum(t.count("failed (exitcode:") for t in logs["plain"]))
    results["plain_state"] = sh("sacct", "-n", "-X", "-P", "-D", "-j", plain_id, "-o", "State", env=env).split()
    results["schedule"] = schedule
    results["preempted_at_s"] = preempted_at
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print("\n| | effective training time | wall | useful | steps done / planned | steps recomputed |")
    print("|---|---|---|---|---|---|")
    for who in ("shardctl", "plain"):
        r = results[who]
        print(f"| {who} | {100 * r['effective']:.1f}% | {r['wall_s']:.0f} s | {r['useful_s']:.0f} s | "
              f"{r['steps_done']:.0f} / {r['steps_planned']:.0f} | {r['recomputed']:.0f} |")


if __name__ == "__main__":
    main()
