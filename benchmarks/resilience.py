"""How fast shardctl finds a hang and gets off a bad node, on real processes.

    .venv/bin/python benchmarks/resilience.py --hangs 3            # local target, hang_after 20 s
    .venv/bin/python benchmarks/resilience.py --node-faults 3      # the dev Slurm cluster (slurm/dev/cluster up)

--hangs: a 2-process local job (examples/quickstart.yaml) whose rank 1 blocks at step 5 of attempt 1, with
`resilience.hang_after: 20s`. Measured from the records: the log's last change before the hang was recorded (the
last output; its mtime, read until the hang is recorded) to the moment the attempt's `hung` appeared in the store,
against hang_after; and from then to attempt 2's process start (wrapper.json's launched_at).

--node-faults: a one-node Slurm job whose attempt 1 dies of CUDA's "uncorrectable ECC error encountered" at
step 5. Measured: from attempt 1's end to attempt 2's start, both as Slurm accounts them (sacct's End and Start, whole
seconds: the judge job's scheduling included),
and on which node each ran (sacct's NodeList): attempts on the node that faulted, after the fault, must be 0,
including a job submitted afterwards.

Medians over the runs; every figure is printed per run too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.store.jobstore import Store  # noqa: E402

HANG_AFTER_S = 20


def cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHARDCTL_HOME": str(home), "SHARDCTL_FORCE_CPU": "1", "DS_ACCELERATOR": "cpu"}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.1)


def submit(work: Path, name: str, text: str) -> tuple[str, Store]:
    """The spec `text` submitted from `work` into its own store: the job's id and that store."""
    spec = work / name
    spec.write_text(text)
    home = work / "state"
    r = cli(home, "submit", str(spec), "--json")
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout)["id"], Store(home)


def one_hang(work: Path) -> dict[str, float]:
    text = (ROOT / "examples/quickstart.yaml").read_text()
    text = text.replace('"--steps", "20"', '"--steps", "8", "--hang-at-step", "5", "--hang-rank", "1"')
    text = text.replace("every_steps: 5", "every_steps: 4") + f"  resilience:\n    hang_after: {HANG_AFTER_S}s\n"
    job_id, store = submit(work, "hang.yaml", text)
    log = Path(store.attempts(job_id)[0].log_path)
    wait(lambda: log.exists() and "simulating a hang" in log.read_text(errors="replace"), 240)
    last_output = log.stat().st_mtime
    while store.attempts(job_id)[0].hung is None:
        last_output = max(last_output, log.stat().st_mtime)
        time.sleep(0.05)
    found_at = time.time()
    wait(lambda: store.get_job(job_id).terminal, 300)
    attempts = store.attempts(job_id)
    second = json.loads((Path(attempts[1].run_dir) / "wrapper.json").read_text())
    return {"detected_s": found_at - last_output, "restart_s": second["launched_at"] - found_at,
            "succeeded": float(store.get_job(job_id).state == "succeeded")}


def sacct(slurm_id: str, field: str) -> str:
    return subprocess.run(["sacct", "-n", "-X", "-P", "-j", slurm_id, "-o", field], capture_output=True, text=True,
                          check=True).stdout.strip()


def one_node_fault(work: Path, n: int) -> dict[str, float]:
    import yaml

    data = yaml.safe_load((ROOT / "examples/oom-fallback.yaml").read_text())
    data["metadata"]["name"] = f"ecc-{n}"
    tiny = ["--dim", "32", "--heads", "2", "--layers", "1", "--vocab", "64", "--checkpoint-dir", "{checkpoint_dir}"]
    data["spec"].update({"target": "slurm", "resources": {"nodes": 1, "gpus_per_node": 1, "cpus_per_node": 2},
                         "batch": {"micro": 2, "global": 2}, "checkpoint": {"every_steps": 2}})
    data["spec"]["entrypoint"]["args"] = ["--steps", "8", *tiny, "--fault-at-step", "5", "--fault",
                                          "RuntimeError: CUDA error: uncorrectable ECC error encountered"]
    job_id, store = submit(work, "ecc.yaml", yaml.safe_dump(data))
    wait(lambda: store.get_job(job_id).terminal, 300)
    a1, a2 = store.attempts(job_id)
    bad = sacct(str(a1.external_id), "NodeList")
    end1 = datetime.fromisoformat(sacct(str(a1.external_id), "End")).timestamp()
    start2 = datetime.fromisoformat(sacct(str(a2.external_id), "Start")).timestamp()
    on_bad = int(sacct(str(a2.external_id), "NodeList") == bad)
    data["metadata"]["name"] = f"after-ecc-{n}"
    data["spec"]["entrypoint"]["args"] = ["--steps", "2", *tiny]
    later, _ = submit(work, "later.yaml", yaml.safe_dump(data))
    wait(lambda: store.get_job(later).terminal, 240)
    on_bad += int(sacct(str(store.attempts(later)[0].external_id), "NodeList") == bad)
    cli(work / "state", "nodes", "--clear", bad)
    return {"fault_to_next_start_s": start2 - end1, "attempts_on_the_bad_node": float(on_bad),
            "succeeded": float(store.get_job(job_id).state == "succeeded")}


def report(name: str, runs: list[dict[str, float]]) -> None:
    print(f"{name}: {len(runs)} runs")
    for i, run in enumerate(runs, 1):
        print(f"  run {i}: " + ", ".join(f"{k} {v:.2f}" for k, v in run.items()))
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"  median {key}: {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hangs", type=int, default=0, help="local hang runs (about 40 s each)")
    p.add_argument("--node-faults", type=int, default=0, help="Slurm node-fault runs (about 40 s each)")
    args = p.parse_args()
    if args.hangs:
        runs = []
        for _ in range(args.hangs):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(one_hang(Path(tmp)))
        report(f"hang detection, local target, hang_after {HANG_AFTER_S} s", runs)
    if args.node_faults:
        runs = []
        for n in range(args.node_faults):
            with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
                runs.append(one_node_fault(Path(tmp), n))
        report("node fault on the dev Slurm cluster", runs)


if __name__ == "__main__":
    main()
