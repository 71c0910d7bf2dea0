"""How close is the planner to measured peaks, and how close are DeepSpeed's and accelerate's own
estimators on the same cases (measurements from benchmarks/calibrate_memory.py, or imported by
benchmarks/import_h100.py).

    python benchmarks/memory_report.py benchmarks/data/memory-h100.jsonl          # table, held-out summary
    python benchmarks/memory_report.py benchmarks/data/memory-h100.jsonl --fit    # refit on the fit cases
    python benchmarks/memory_report.py benchmarks/data/memory-cpu.jsonl --json     # the same, as JSON
    python benchmarks/memory_report.py benchmarks/data/memory-h100.jsonl --verdicts  # verdicts, fragmentation

What is compared:
- planner: orchestrator.plan.memory.estimate with the profile of the device measured (on CPU
  processes the host is the device, so offloaded state counts too), and on a GPU its verdict
  against the device's capacity (planner.within, with planner.MARGIN kept free);
- DeepSpeed: estimate_zero2_model_states_mem_needs / estimate_zero3_model_states_mem_needs (the
  functions behind its `estimate_zero*_model_states_mem_needs_all_*` helpers), model states only;
  for FSDP cases the ZeRO-3 figure, FULL_SHARD being the same partitioning;
- accelerate: the training figure of `accelerate estimate-memory` (estimate_training_usage on the
  model's fp32 size): the command itself needs the Hugging Face Hub, so its function is called.
Measured on a GPU: peak allocated plus the memory the process holds outside PyTorch's allocator
(CUDA context and library workspaces); the allocator's cache (reserved minus allocated) is modelled
and reported apart, since it is given back before an out-of-memory error. On CPU processes: peak
RSS over the pre-model baseline (benchmarks/memory_probe.py).
Fragmentation: what the allocator still reserved but had not allocated when it raised an out-of-memory
error (it had given every whole cached segment back) is memory split blocks strand; the planner's verdict
counts a share of the largest transient for it without expandable segments. A GPU record says which allocator
setting it ran under (`expandable_segments`); without the key, PyTorch's default: none (the H100 runs were
launched with `accelerate launch`, no PYTORCH_CUDA_ALLOC_CONF named in their README).
"""

from __future__ import annotations

import argparse
import contextlib
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
from orchestrator.plan.planner import MARGIN, within  # noqa: E402
from orchestrator.plan.size import model_shape  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20


def is_gpu(record: dict[str, Any]) -> bool:
    return record["device"] != "cpu"


def context_of(record: dict[str, Any]) -> int:
    """Memory the process holds outside PyTorch's allocator (a GPU record)."""
    if record.get("context_bytes") is not None:
        return record["context_bytes"]
    return record["device_used_bytes"] - record["reserved_end_bytes"]


def measured(record: dict[str, Any]) -> int:
    """What the process needed on the device at its peak (for an OOM case: when it failed)."""
    if not is_gpu(record):
        return record["peak_allocated_bytes"]
    return record["peak_allocated_bytes"] + context_of(record)


def measured_reserved(record: dict[str, Any]) -> int | None:
    if not is_gpu(record) or record.get("peak_reserved_bytes") is None:
        return None
    return record["peak_reserved_bytes"] + context_of(record)


def profile_of(record: dict[str, Any]) -> memory.DeviceProfile:
    return memory.CUDA if is_gpu(record) else memory.CPU


def measured_expandable(record: dict[str, Any]) -> bool:
    """The allocator setting the record ran under (no key: PyTorch's default, no expandable segments)."""
    return bool(record.get("expandable_segments", False))


def estimated(record: dict[str, Any], profile: memory.DeviceProfile | None = None,
              expandable_segments: bool | None = None):
    """(job, shape, estimate, host share): on CPU processes the host is the device, so each
    process's share of the offloaded state counts towards its peak. The estimate assumes the allocator
    setting the record ran under unless `expandable_segments` says."""
    c = record["case"]
    job = job_for(c, Path("/unused"))
    shape = model_shape(job.spec.model.name_or_path, None)
    profile = profile or profile_of(record)
    if expandable_segments is None:
        expandable_segments = measured_expandable(record)
    est = memory.estimate(shape, job, c["seq_len"], profile, expandable_segments=expandable_segments)
    return job, shape, est, est.host_bytes_per_node // c["gpus"] if profile.touched_only else 0


def planned(record: dict[str, Any]) -> int:
    _, _, est, host = estimated(record)
    return est.total + host


def planned_reserved(record: dict[str, Any]) -> int:
    _, _, est, host = estimated(record)
    return est.reserved_total + host


def fits_on_device(estimate: int | None, record: dict[str, Any], margin: bool = True) -> bool | None:
    """An estimate's verdict on the GPU measured (the planner's keeps MARGIN free; the others' none)."""
    if estimate is None or not is_gpu(record) or not record.get("device_total_bytes"):
        return None
    total = record["device_total_bytes"]
    return within(estimate, total) if margin else estimate <= total


VERDICTS = ("before", "expandable", "without_expandable")  # allocated only (the verdict before fragmentation
# counted); with fragmentation under expandable segments (shardctl's default); without them


def verdict_fits(record: dict[str, Any], rule: str = "as_run") -> bool | None:
    """The planner's verdict on the GPU measured, by one of VERDICTS, or "as_run": under the allocator setting
    the record ran under."""
    if rule == "as_run":
        rule = "expandable" if measured_expandable(record) else "without_expandable"
    _, _, est, host = estimated(record, expandable_segments=rule == "expandable")
    weighed = {"before": est.total, "expandable": est.verdict_bytes,
               "without_expandable": est.verdict_bytes_without_expandable}[rule]
    return fits_on_device(weighed + host, record)


def verdict_right(record: dict[str, Any], rule: str = "as_run") -> bool | None:
    """On a GPU: does the planner's fit/does-not-fit verdict on the device measured match what happened?"""
    fits = verdict_fits(record, rule)
    return None if fits is None else fits == bool(record["ok"])


def confusion(records: list[dict[str, Any]], rule: str) -> dict[str, int]:
    """Predicted fit / not against ran / out of memory, on the GPU records given."""
    out = {"fit_ran": 0, "fit_oom": 0, "nofit_ran": 0, "nofit_oom": 0}
    for r in records:
        fits = verdict_fits(r, rule)
        if fits is not None:
            out[f"{'fit' if fits else 'nofit'}_{'ran' if r['ok'] else 'oom'}"] += 1
    return out


def fragmentation_fit(records: list[dict[str, Any]], a: float | None = None, b: float | None = None
                      ) -> dict[str, Any] | None:
    """Fragmentation without expandable segments, from the fit split's out-of-memory cases only: what was reserved
    but unallocated when the allocation failed (every whole cached segment already given back) against the
    case's largest transient; the largest share, rounded up to 0.01. None without such a case."""
    cuda = memory.CUDA
    a = cuda.activation_scale if a is None else a
    b = cuda.logits_scale if b is None else b
    seen = [(r["oom_figures"]["cached"] * GIB, _transient(r, a, b), r) for r in records
            if not r["held_out"] and r.get("oom") and r.get("oom_figures") and not measured_expandable(r)]
    if not seen:
        return None
    share = max(stranded / transient for stranded, transient, _ in seen)
    return {"fragmentation_per_transient": -(-round(share * 10000) // 100) / 100,
            "from": [{"case": r["source"]["case"], "stranded_gib": round(st / GIB, 2),
                      "transient_gib": round(t / GIB, 2)} for st, t, r in seen]}


def reserved_capped(record: dict[str, Any]) -> bool:
    """The allocator's cache reached the GPU's capacity: it gave cached blocks back to go on, so the measured
    reserved peak is the capacity, not what it would have cached with room to spare."""
    res = measured_reserved(record)
    return bool(res and record.get("device_total_bytes") and res >= 0.995 * record["device_total_bytes"])


def deepspeed_estimate(record: dict[str, Any]) -> int | None:
    """DeepSpeed's own model-states estimate for the measured device (None where it has none)."""
    c = record["case"]
    if c["sharding"] == "none" or (c["backend"] == "fsdp" and c["sharding"] != "full"):
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
    return int(gpu + (cpu / gpus if not is_gpu(record) else 0))


def accelerate_estimate(record: dict[str, Any]) -> int:
    from accelerate.commands.estimate import estimate_training_usage

    c = record["case"]
    shape = model_shape(str(ROOT / "benchmarks/data/models" / c["model"]), None)
    usage = estimate_training_usage(4 * shape.params, "bfloat16" if c["mixed"] != "no" else "float32")
    return int(max(usage.values()))


def err(pred: int | None, meas: int | None) -> float | None:
    return None if pred is None or not meas else 100.0 * (pred - meas) / meas


def fmt(e: float | None) -> str:
    return "   n/a" if e is None else f"{e:+6.1f}%"


def load(paths: list[Path], failed: bool = False) -> list[dict[str, Any]]:
    """The records of these files: the cases that ran (and with failed=True those that did not)."""
    out = []
    for path in paths:
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in out if r.get("ok") or (failed and r.get("oom"))]


def report(records: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for r in records:
        row: dict[str, Any] = {"id": r["case"]["id"], "held_out": r["held_out"], "ok": bool(r.get("ok")),
                               "measured": measured(r), "planner": planned(r), "deepspeed": deepspeed_estimate(r),
                               "accelerate": accelerate_estimate(r)}
        if is_gpu(r):
            _, _, est, _ = estimated(r)
            row.update(source=r.get("source", {}).get("case"), peak_phase=est.peak_phase,
                       measured_reserved=measured_reserved(r), planner_reserved=planned_reserved(r),
                       reserved_capped=reserved_capped(r), verdict_right=verdict_right(r),
                       fragmentation=est.fragmentation_bytes_without_expandable,
                       largest_transient=est.largest_transient,
                       expandable_segments=measured_expandable(r), peak_allocated=r["peak_allocated_bytes"],
                       peak_reserved=r.get("peak_reserved_bytes"),
                       oom_unallocated=(round(r["oom_figures"]["cached"] * GIB) if r.get("oom_figures") else None),
                       **{f"fits_{rule}": verdict_fits(r, rule) for rule in VERDICTS},
                       **{f"{name}_right": (None if fits_on_device(row[name], r, margin=False) is None
                                            else fits_on_device(row[name], r, margin=False) == row["ok"])
                          for name in ("deepspeed", "accelerate")})
        rows.append(row)
    summary: dict[str, Any] = {}
    for split in ("fit", "held_out"):
        chosen = [x for x in rows if x["held_out"] == (split == "held_out")]
        ran = [x for x in chosen if x["ok"]]
        summary[split] = {name: _stats([err(x[name], x["measured"]) for x in ran])
                          for name in ("planner", "deepspeed", "accelerate")}
        if any("measured_reserved" in x for x in ran):
            summary[split]["planner_reserved"] = _stats([err(x["planner_reserved"], x["measured_reserved"])
                                                         for x in ran if not x["reserved_capped"]])
        for name, key in (("planner", "verdict_right"), ("deepspeed", "deepspeed_right"),
                          ("accelerate", "accelerate_right")):
            verdicts = [x[key] for x in chosen if x.get(key) is not None]
            if verdicts:
                summary[split][f"{name}_verdicts_right"] = f"{sum(verdicts)}/{len(verdicts)}"
        summary[split]["cases"] = len(chosen)
        gpu_chosen = [r for r in records if is_gpu(r) and r["held_out"] == (split == "held_out")]
        if gpu_chosen:
            summary[split]["confusion"] = {rule: confusion(gpu_chosen, rule) for rule in VERDICTS}
    return {"rows": rows, "summary": summary, "margin": MARGIN, "margin_from_measurements": margin(records),
            "fragmentation": fragmentation_check(records)}


def fragmentation_check(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fitted fragmentation share (fragmentation_fit), and against it every held-out out-of-memory case:
    measured reserved-but-unallocated against the predicted term, and whether the failed request would have fit
    in what was free plus that memory (if not, no allocator setting would have saved the run)."""
    frag = fragmentation_fit(records)
    if frag is None:
        return None
    frag["held_out"] = []
    for r in records:
        if r["held_out"] and r.get("oom") and r.get("oom_figures"):
            o = r["oom_figures"]
            _, _, est, _ = estimated(r, expandable_segments=False)
            predicted = est.fragmentation_bytes_without_expandable
            frag["held_out"].append({
                "case": r["source"]["case"], "stranded_gib": o["cached"], "predicted_gib": round(predicted / GIB, 2),
                "error_pct": round(100 * (predicted / GIB - o["cached"]) / o["cached"], 1),
                "request_gib": o["request"], "free_gib": _free_gib(r),
                "request_fits": o["request"] <= _free_gib(r) + o["cached"]})
    return frag


def _free_gib(record: dict[str, Any]) -> float:
    """'of which X is free' in the out-of-memory message, GiB."""
    import re

    m = re.search(r"of which ([\d.]+) (GiB|MiB) is free", record["error_text"])
    assert m, record["error_text"][:80]
    return round(float(m.group(1)) / (1024 if m.group(2) == "MiB" else 1), 3)


def margin(records: list[dict[str, Any]]) -> dict[str, float] | None:
    """The share of the GPU a verdict keeps free, from the measured error (docs/design.md "Memory planner"):
    the cache the allocator could not give back when an ordinary allocation failed (an OOM case whose failing
    request was under 1 GiB: a single huge request fails on contiguity, whatever the cache holds), and the
    worst under-estimate of any case that ran, fit or held out. A config estimated at (1 - margin) of the
    GPU then still fits: (1 - margin) x (1 + under) + stranded <= 1."""
    ooms = [r["oom_figures"] for r in records if r.get("oom") and r.get("oom_figures")]
    stranded = [o["cached"] / o["total"] for o in ooms if o["request"] < 1.0]
    unders = [(measured(r) - planned(r)) / planned(r) for r in records if r.get("ok") and is_gpu(r)]
    if not stranded or not unders:
        return None
    f, under = max(stranded), max(0.0, max(unders))
    return {"stranded_share": round(f, 4), "worst_under_estimate": round(under, 4),
            "margin": round(1 - (1 - f) / (1 + under), 4)}


def _stats(errors: list[float | None]) -> dict[str, float | int] | None:
    values = [abs(e) for e in errors if e is not None]
    if not values:
        return None
    return {"cases": len(values), "median_abs_pct": round(statistics.median(values), 1),
            "max_abs_pct": round(max(values), 1), "within_10pct": sum(v <= 10 for v in values)}


def _parts(record: dict[str, Any]) -> dict[str, Any]:
    """The estimate with a bare profile (no scales, no constant), split per phase into what the fit scales
    (activations, logits) and the rest."""
    base = profile_of(record)
    bare = memory.DeviceProfile(**{**base.__dict__, "context_bytes": 0, "activation_scale": 1.0,
                                   "logits_scale": 1.0, "unattributed_per_param": {}})
    job, shape, est, host = estimated(record, bare)
    phases = []
    for terms in est.phases.values():
        act, logits = terms.get("activations", 0), terms.get("logits", 0)
        phases.append((sum(terms.values()) - act - logits + host, act, logits))
    context = context_of(record) if is_gpu(record) else 0
    return {"kind": memory.unattributed_kind(job), "params": shape.params, "measured": measured(record),
            "phases": phases, "context": context, "transient": est.largest_transient, "record": record}


def _predict(part: dict[str, Any], a: float, b: float, k: int, extra: float = 0.0) -> float:
    return (max(rest + a * act + b * lg for rest, act, lg in part["phases"]) + part["context"] + k
            + extra * part["params"])


def fit(records: list[dict[str, Any]]) -> dict[str, Any]:
    """On the fit cases only (held-out cases are never looked at): a grid search of the activation and
    logit scales and the per-process constant minimising the worst relative error. On CPU processes the
    scales are folded into the coefficients and each ZeRO-3 kind gets the median residual per parameter
    ("unattributed"); on a GPU the scales are the profile's, the constant is on top of the memory measured
    outside the allocator, and two more things follow: the allocator's cache (reserved minus allocated =
    c + m x the largest transient, minimax). The margin is not fitted: see margin()."""
    cases = [r for r in records if not r["held_out"] and r.get("ok")]
    gpu = is_gpu(cases[0])
    parts = [_parts(r) for r in cases]
    plain = [x for x in parts if gpu or x["kind"] is None]
    best = None
    scales = [x / 100 for x in range(50, 201, 2)]
    for a in scales:
        for b in scales:
            for const_mib in range(0, 1025 if gpu else 301, 8 if gpu else 5):
                k = const_mib * MIB
                worst = max(abs(_predict(x, a, b, k) - x["measured"]) / x["measured"] for x in plain)
                if best is None or worst < best[0]:
                    best = (worst, a, b, const_mib)
    worst, a, b, const_mib = best
    out: dict[str, Any] = {"cases": len(plain), "activation_scale": a, "logits_scale": b,
                           "constant_mib": const_mib, "worst_pct": round(100 * worst, 1)}
    print(f"fit on {len(plain)} cases: activations x{a}, logits x{b}, per-process constant {const_mib} MiB "
          f"(worst error {100 * worst:.1f}%)")
    if not gpu:
        for kind in sorted({x["kind"] for x in parts if x["kind"]}):
            mine = [x for x in parts if x["kind"] == kind]
            residual = statistics.median((x["measured"] - _predict(x, a, b, const_mib * MIB)) / x["params"]
                                         for x in mine)
            errs = [100 * (_predict(x, a, b, const_mib * MIB, residual) - x["measured"]) / x["measured"]
                    for x in mine]
            out[kind] = round(residual, 2)
            print(f"  {kind}: {residual:.2f} bytes/parameter unattributed ({len(mine)} cases; errors then "
                  f"{min(errs):+.1f}% .. {max(errs):+.1f}%)")
        return out
    context = statistics.median(x["context"] for x in parts)
    print(f"  context_bytes = {(context + const_mib * MIB) / GIB:.3f} GiB: {context / GIB:.3f} GiB outside the "
          f"allocator (measured) + {const_mib} MiB fitted")
    # The allocator's cache on top of the live tensors, against the largest transient of each case.
    gaps = [(x["record"]["peak_reserved_bytes"] - x["record"]["peak_allocated_bytes"],
             _transient(x["record"], a, b)) for x in parts]
    cache = None
    for c_mib in range(0, 8193, 64):
        for m100 in range(0, 301, 2):
            worst_gap = max(abs(c_mib * MIB + m100 / 100 * t - gap) for gap, t in gaps)
            if cache is None or worst_gap < cache[0]:
                cache = (worst_gap, c_mib, m100 / 100)
    worst_gap, c_mib, m = cache
    out.update(cache_mib=c_mib, cache_per_transient=m, cache_worst_gib=round(worst_gap / GIB, 2))
    print(f"  allocator cache: {c_mib} MiB + {m} x largest transient (worst miss {worst_gap / GIB:.2f} GiB)")
    frag = fragmentation_fit(records, a, b)
    if frag:
        out["fragmentation_per_transient"] = frag["fragmentation_per_transient"]
        print(f"  fragmentation without expandable segments: {frag['fragmentation_per_transient']} x largest "
              "transient (" + "; ".join(f"{x['case']}: {x['stranded_gib']} GiB reserved but unallocated at the OOM, "
                                        f"transient {x['transient_gib']} GiB" for x in frag["from"]) + ")")
    return out


def _transient(record: dict[str, Any], a: float, b: float) -> int:
    base = profile_of(record)
    profile = memory.DeviceProfile(**{**base.__dict__, "activation_scale": a, "logits_scale": b})
    return estimated(record, profile)[2].largest_transient


def print_table(result: dict[str, Any]) -> None:
    gpu = any("measured_reserved" in x for x in result["rows"])
    head = f"{'case':78} {'split':8} {'measured':>9} {'planner':>8} {'DeepSpeed':>9} {'accelerate':>10}"
    print(head + (f" {'reserved':>9} {'planner':>8} {'verdicts':>9}" if gpu else ""))
    for x in result["rows"]:
        ran = x["ok"]
        line = (f"{x['id'][:78]:78} {'held-out' if x['held_out'] else 'fit':8} {x['measured'] / MIB:7.0f}Mi "
                f"{fmt(err(x['planner'], x['measured'])) if ran else '   OOM':>8} "
                f"{fmt(err(x['deepspeed'], x['measured'])) if ran else _gib(x['deepspeed']):>9} "
                f"{fmt(err(x['accelerate'], x['measured'])) if ran else _gib(x['accelerate']):>10}")
        if gpu:
            res = x.get("measured_reserved")
            reserved = "capped" if x["reserved_capped"] else fmt(err(x["planner_reserved"], res))
            marks = "".join("-" if x.get(f"{n}_right") is None else "+" if x[f"{n}_right"] else "X"
                            for n in ("verdict", "deepspeed", "accelerate"))
            line += f" {res / MIB if res else 0:7.0f}Mi {reserved if ran else '':>8} {marks:>9}"
        print(line)
    if gpu:
        print("verdicts: planner, DeepSpeed, accelerate against the GPU (+ right, X wrong, - none); "
              "OOM rows: measured is what was allocated when it failed, the estimators' figures in GiB")
    for split, s in result["summary"].items():
        print(f"{split}: {s['cases']} cases; |error| median/max: " + "; ".join(
            f"{name} {v['median_abs_pct']}%/{v['max_abs_pct']}% ({v['within_10pct']}/{v['cases']} within 10%)"
            if v else f"{name} n/a" for name, v in s.items() if name != "cases" and not name.endswith("right"))
            + "".join(f"; {k.replace('_', ' ')} {v}" for k, v in s.items() if k.endswith("right")))
    basis = result.get("margin_from_measurements")
    if basis:
        print(f"margin: 1 - (1 - {basis['stranded_share']:.3f} stranded at an OOM) / "
              f"(1 + {basis['worst_under_estimate']:.3f} worst under-estimate) = {basis['margin']:.3f} "
              f"(planner.MARGIN: {result['margin']})")


def print_verdicts(result: dict[str, Any]) -> None:
    """The GPU cases as a Markdown table: measured peaks, the OOM message's reserved-but-unallocated, the
    estimate, its fragmentation term and the verdicts; then the confusion matrices per split."""
    rows = [x for x in result["rows"] if "measured_reserved" in x]
    word = {True: "fits", False: "does not fit", None: "-"}

    def verdict(x: dict[str, Any], rule: str) -> str:
        fits = x[f"fits_{rule}"]
        return word[fits] + ("" if fits is None or fits == x["ok"] else " **(wrong)**")

    print("| case | split | result | peak allocated GiB | peak reserved GiB | reserved but unallocated at the OOM, "
          "GiB | estimate GiB | largest transient GiB | fragmentation (no expandable segments) GiB | "
          "verdict before | after, expandable segments | after, without them (as measured) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        reserved = f"{x['peak_reserved'] / GIB:.2f}" if x["peak_reserved"] else "-"
        unallocated = f"{x['oom_unallocated'] / GIB:.2f}" if x["oom_unallocated"] else "-"
        print(f"| {x['source']} | {'held out' if x['held_out'] else 'fit'} | {'ran' if x['ok'] else 'CUDA OOM'} | "
              f"{x['peak_allocated'] / GIB:.2f} | {reserved} | {unallocated} | "
              f"{x['planner'] / GIB:.2f} | {x['largest_transient'] / GIB:.2f} | {x['fragmentation'] / GIB:.2f} | "
              f"{verdict(x, 'before')} | {verdict(x, 'expandable')} | {verdict(x, 'without_expandable')} |")
    print()
    print("| split | verdict | fits, ran | fits, OOM | does not fit, ran | does not fit, OOM |")
    print("|---|---|---|---|---|---|")
    names = {"before": "before (allocated only)", "expandable": "after, expandable segments",
             "without_expandable": "after, without them"}
    for split in ("fit", "held_out"):
        for rule, m in result["summary"][split].get("confusion", {}).items():
            print(f"| {split.replace('_', ' ')} | {names[rule]} | {m['fit_ran']} | {m['fit_oom']} | "
                  f"{m['nofit_ran']} | {m['nofit_oom']} |")
    frag = result.get("fragmentation")
    if frag:
        print()
        print(f"fragmentation without expandable segments: {frag['fragmentation_per_transient']} x the largest "
              "transient, fitted on " + "; ".join(f"{f['case']} ({f['stranded_gib']} GiB reserved but unallocated "
                                                 f"at the OOM / {f['transient_gib']} GiB transient)"
                                                 for f in frag["from"]))
        for check in frag.get("held_out", []):
            print(f"held out: {check['case']}: {check['stranded_gib']} GiB reserved but unallocated at the OOM, "
                  f"predicted {check['predicted_gib']} GiB ({check['error_pct']:+.0f}%); request "
                  f"{check['request_gib']} GiB against {check['free_gib']} GiB free + {check['stranded_gib']} GiB "
                  f"unallocated: {'fits in them' if check['request_fits'] else 'more than both'}")


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / GIB:.1f}G"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--fit", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verdicts", action="store_true", help="GPU cases: peaks, fragmentation, verdicts (Markdown)")
    args = p.parse_args()
    records = load(args.files, failed=True)
    if args.fit:
        fit(records)
        return
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's import logs to stdout
        result = report(records)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    if args.verdicts:
        print_verdicts(result)
        return
    print_table(result)


if __name__ == "__main__":
    main()
