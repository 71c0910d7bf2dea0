"""Turn the H100 measurements (benchmarks/data/h100-memory/, as delivered; its README says how they
were taken) into the record format of benchmarks/calibrate_memory.py, so that memory_report.py,
its --fit and tests/benchmarks read them like any other measurements file.

    python benchmarks/import_h100.py            # writes benchmarks/data/memory-h100.jsonl
    python benchmarks/import_h100.py --check    # exit 1 if the committed file is not what this writes

Each case gets the harness's id (model/backend/sharding/...), and `held_out` is decided from that id
by the same rule as every other measurement (calibrate_memory.held_out: a hash of the id). The
memory outside PyTorch's allocator (`context_bytes`) is read from the two out-of-memory messages.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from calibrate_memory import case, held_out  # noqa: E402

GIB = 1 << 30
RAW = ROOT / "benchmarks" / "data" / "h100-memory"
OUT = ROOT / "benchmarks" / "data" / "memory-h100.jsonl"
VERSIONS = {"torch": "2.11.0+cu130", "accelerate": "1.15.0", "deepspeed": "0.19.8", "transformers": "5.17.0"}
DEVICE = "NVIDIA H100 80GB HBM3"
# Model shapes of the measurements -> the configs in benchmarks/data/models/ (same shape, checked below).
MODELS = {1024: "llama-0.37b", 2048: "llama-1.3b", 2560: "llama-2.7b", 4096: "llama-7b"}
_OOM = re.compile(r"Tried to allocate ([\d.]+) (GiB|MiB)\. GPU 0 has a total capacity of ([\d.]+) GiB.*"
                  r"this process has ([\d.]+) GiB memory in use\. "
                  r"Of the allocated memory ([\d.]+) GiB is allocated by PyTorch, and ([\d.]+) GiB is reserved")


def oom_figures(text: str) -> dict[str, float]:
    """The GiB figures of torch's out-of-memory message."""
    m = _OOM.search(text)
    if not m:
        raise ValueError(f"not an out-of-memory message: {text[:80]}")
    request, unit, total, in_use, allocated, cached = m.groups()
    total, in_use, allocated, cached = map(float, (total, in_use, allocated, cached))
    return {"request": round(float(request) / (1024 if unit == "MiB" else 1), 3), "total": total, "in_use": in_use,
            "allocated": allocated, "cached": cached,
            "outside_allocator": round(in_use - allocated - cached, 2)}


def convert(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ooms = [oom_figures(r["error_text"]) for r in raw if r["result"] == "cuda_oom"]
    context = statistics.median(o["outside_allocator"] for o in ooms)
    total = ooms[0]["total"]
    out = []
    for r in raw:
        model = r["model"]
        name = MODELS[model["hidden_size"]]
        config = json.loads((ROOT / "benchmarks" / "data" / "models" / name / "config.json").read_text())
        for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                    "num_key_value_heads", "vocab_size", "tie_word_embeddings"):
            assert config[key] == model[key], (name, key)
        c = case(name, r["backend"], r["sharding"], r["offload"]["optimizer"], r["offload"]["params"],
                 r["micro_batch"], r["seq_len"], r["activation_checkpointing"], gpus=r["world_size"],
                 mixed=r["mixed_precision"], params=r["load_dtype"])
        ok = r["result"] == "ok"
        record: dict[str, Any] = {
            "case": c, "held_out": held_out(c["id"]), "versions": VERSIONS, "ok": ok, "oom": not ok,
            "device": DEVICE, "device_total_bytes": round(total * GIB), "parameters": model["parameters"],
            "peak_allocated_bytes": round(r["peak_allocated_gib"] * GIB),
            "peak_reserved_bytes": round(r["peak_reserved_gib"] * GIB) if ok else None,
            "context_bytes": round(context * GIB),
            "step_seconds_median": r.get("step_s"),
            "source": {"file": "h100-memory/measurements.jsonl", "case": r["case"],
                       "accelerate_config": r["accelerate_config"], "optimizer": r["optimizer"]},
        }
        if not ok:
            record["error_text"] = r["error_text"]
            record["oom_figures"] = oom_figures(r["error_text"])
        out.append(record)
    return out


def render() -> str:
    raw = [json.loads(line) for line in (RAW / "measurements.jsonl").read_text().splitlines() if line.strip()]
    return "".join(json.dumps(r) + "\n" for r in convert(raw))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"{OUT.relative_to(ROOT)} is out of date: run python benchmarks/import_h100.py")
        return
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
