"""How close is the planner to measured peaks, and how close are DeepSpeed's and accelerate's own
estimators on the same cases (measurements from benchmarks/calibrate_memory.py).

    python benchmarks/memory_report.py benchmarks/data/memory-cpu.jsonl            # table, held-out summary
    python benchmarks/memory_report.py benchmarks/data/memory-cpu.jsonl --fit      # refit on the fit cases

What is compared:
- planner: orchestrator.plan.memory.estimate with the profile of the device measured (on CPU
  processes the host is the device, so offloaded state counts too);
- DeepSpeed: estimate_zero2_model_states_mem_needs / estimate_zero3_model_states_mem_needs (the
  functions behind its `estimate_zero*_model_states_mem_needs_all_*` helpers), model states only;
- accelerate: the training figure of `accelerate estimate-memory` (estimate_training_usage on the
  model's fp32 size): the command itself needs the Hugging Face Hub, so its function is called.
Measured on a GPU: peak reserved plus the context (device used minus reserved, at the end);
on CPU: peak RSS over the pre-model baseline (benchmarks/memory_probe.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from calibrate_memory import job_for  # noqa: E402
from orchestrator.plan import memory  # noqa: E402
from orchestrator.plan.size import model_shape  # noqa: E402


def measured(record: dict[str, Any]) -> int:
    if record["device"] == "cpu":
        return record["peak_allocated_bytes"]
    context = record["device_used_bytes"] - record["reserved_end_bytes"]
    return record["peak_reserved_bytes"] + context


def profile_of(record: dict[str, Any]) -> memory.DeviceProfile:
    return memory.CPU if record["device"] == "cpu" else memory.CUDA


def estimated(record: dict[str, Any], profile: memory.DeviceProfile | None = None):
    """(job, shape, estimate, host share): on CPU processes the host is the device, so each
    process's share of the offloaded state counts towards its peak."""
    c = record["case"]
    job = job_for(c, Path("/unused"))
    shape = model_shape(job.spec.model.name_or_path, None)
    profile = profile or profile_of(record)
    est = memory.estimate(shape, job, c["seq_len"], profile)
    return job, shape, est, est.host_bytes_per_node // c["gpus"] if profile.touched_only else 0


def planned(record: dict[str, Any]) -> int:
    _, _, est, host = estimated(record)
    return est.total + host


def deepspeed_estimate(record: dict[str, Any]) -> int | None:
    """DeepSpeed's own model-states estimate for the measured device (None where it has none)."""
    c = record["case"]
    if c["backend"] != "deepspeed" or c["sharding"] == "none":
        return None
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = model_shape(str(ROOT / "benchmarks/data/models" / c["model"]), None)
    gpus = c["gpus"]
    if c["sharding"] == "full":
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            shape.params, shape.largest_layer_params, gpus, 1, cpu_offload=c["offload_optimizer"] != "none",
            cpu_offload_params=c["offload_params"] != "none", zero_init=True)
    else:
        cpu, gpu = estimate_zero2_model_states_mem_needs(shape.params, gpus, 1,
                                                         cpu_offload=c["offload_optimizer"] != "none")
    return int(gpu + (cpu / gpus if record["device"] == "cpu" else 0))


def accelerate_estimate(record: dict[str, Any]) -> int:
    from accelerate.commands.estimate import estimate_training_usage

    c = record["case"]
    shape = model_shape(str(ROOT / "benchmarks/data/models" / c["model"]), None)
    usage = estimate_training_usage(4 * shape.params, "bfloat16" if c["mixed"] != "no" else "float32")
    return int(max(usage.values()))


def err(pred: int | None, meas: int) -> float | None:
    return None if pred is None else 100.0 * (pred - meas) / meas


def fmt(e: float | None) -> str:
    return "   n/a" if e is None else f"{e:+6.1f}%"


def load(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in out if r.get("ok")]


def report(records: list[dict[str, Any]], capacity: int | None = None) -> dict[str, Any]:
    rows = []
    for r in records:
        m = measured(r)
        rows.append({"id": r["case"]["id"], "held_out": r["held_out"], "measured": m, "planner": planned(r),
                     "deepspeed": deepspeed_estimate(r), "accelerate": accelerate_estimate(r)})
    summary = {}
    for split in ("fit", "held_out"):
        chosen = [x for x in rows if x["held_out"] == (split == "held_out")]
        summary[split] = {name: _stats([err(x[name], x["measured"]) for x in chosen])
                          for name in ("planner", "deepspeed", "accelerate")}
        summary[split]["cases"] = len(chosen)
    return {"rows": rows, "summary": summary}


def _stats(errors: list[float | None]) -> dict[str, float | int] | None:
    values = [abs(e) for e in errors if e is not None]
    if not values:
        return None
    return {"cases": len(values), "median_abs_pct": round(statistics.median(values), 1),
            "max_abs_pct": round(max(values), 1), "within_10pct": sum(v <= 10 for v in values)}


def fit(records: list[dict[str, Any]]) -> None:
    """On the fit cases only (held-out cases are never looked at): a grid search of the activation
    and logit scales and the per-process constant minimising the worst relative error of the cases
    without an unattributed term, then for each such kind (ZeRO-3, with or without parameter
    offload) the median residual per parameter. Prints the constants to put in plan/memory.py."""
    cases = [r for r in records if not r["held_out"]]
    parts = []
    for r in cases:
        bare = memory.DeviceProfile(**{**profile_of(r).__dict__, "unattributed_per_param": {}})
        job, shape, est, host = estimated(r, bare)
        back, step = est.phases["backward"], est.phases["optimizer_step"]
        fixed = back.get("context", 0) + back.get("communicators", 0)
        act, logits = back["activations"], back["logits"]
        parts.append((memory.unattributed_kind(job), shape.params, measured(r),
                      sum(back.values()) - act - logits - fixed + host, act, logits, sum(step.values()) - fixed + host))

    def predict(part, a, b, k, extra=0.0):
        _, params, _, bk, ac, lg, st = part
        return max(bk + a * ac + b * lg, st) + k + extra * params

    plain = [x for x in parts if x[0] is None]
    best = None
    for a100 in range(50, 201, 5):
        for b100 in range(50, 201, 5):
            for const_mib in range(0, 301, 5):
                a, b, k = a100 / 100, b100 / 100, const_mib << 20
                worst = max(abs(predict(x, a, b, k) - x[2]) / x[2] for x in plain)
                if best is None or worst < best[0]:
                    best = (worst, a, b, const_mib)
    worst, a, b, const_mib = best
    print(f"fit on {len(plain)} cases: activations x{a}, logits x{b}, per-process constant {const_mib} MiB "
          f"(worst error {100 * worst:.1f}%)")
    for kind in sorted({x[0] for x in parts if x[0]}):
        mine = [x for x in parts if x[0] == kind]
        residual = statistics.median((x[2] - predict(x, a, b, const_mib << 20)) / x[1] for x in mine)
        errs = [100 * (predict(x, a, b, const_mib << 20, residual) - x[2]) / x[2] for x in mine]
        print(f"  {kind}: {residual:.2f} bytes/parameter unattributed ({len(mine)} cases; errors then "
              f"{min(errs):+.1f}% .. {max(errs):+.1f}%)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--fit", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    records = load(args.files)
    if args.fit:
        fit(records)
        return
    result = report(records)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{'case':78} {'split':8} {'measured':>9} {'planner':>8} {'DeepSpeed':>9} {'accelerate':>10}")
    for x in result["rows"]:
        print(f"{x['id'][:78]:78} {'held-out' if x['held_out'] else 'fit':8} {x['measured'] / 2**20:7.0f}Mi "
              f"{fmt(err(x['planner'], x['measured'])):>8} {fmt(err(x['deepspeed'], x['measured'])):>9} "
              f"{fmt(err(x['accelerate'], x['measured'])):>10}")
    for split, s in result["summary"].items():
        print(f"{split}: {s['cases']} cases; |error| median/max: " + "; ".join(
            f"{name} {v['median_abs_pct']}%/{v['max_abs_pct']}% ({v['within_10pct']}/{v['cases']} within 10%)"
            if v else f"{name} n/a" for name, v in s.items() if name != "cases"))


if __name__ == "__main__":
    main()
