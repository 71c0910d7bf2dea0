"""Measure peak memory per device for a matrix of training configs, for fitting and checking the
planner (orchestrator/plan/memory.py).

Every case is a TrainingJob compiled and rendered by shardctl's own local target (the exact
accelerate config, DeepSpeed JSON and launch.sh that `shardctl submit` runs), launched with
benchmarks/memory_probe.py as the training script. One JSON line per case is appended to
benchmarks/data/memory-<device>.jsonl, with the package versions and the device it came from.

    python benchmarks/calibrate_memory.py --matrix cpu            # CPU processes (this machine)
    python benchmarks/calibrate_memory.py --matrix gpu            # one GPU: Llama 0.5B-7B
    python benchmarks/calibrate_memory.py --matrix cpu --list     # the cases, nothing run

Cases already in the output file are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.spec.models import TrainingJob  # noqa: E402
from orchestrator.targets.cpu import has_gpu  # noqa: E402
from orchestrator.targets.local import target as local  # noqa: E402

DATA = ROOT / "benchmarks" / "data"
MODELS = DATA / "models"
PROBE = ROOT / "benchmarks" / "memory_probe.py"

# (sharding, optimizer offload, params offload) of DeepSpeed: every rung of the ladder.
DS_CONFIGS = [("none", "none", "none"), ("optimizer", "none", "none"), ("grad_op", "none", "none"),
              ("full", "none", "none"), ("grad_op", "cpu", "none"), ("full", "cpu", "cpu")]
FSDP_CONFIGS = [("none", "none", "none"), ("grad_op", "none", "none"), ("full", "none", "none"),
                ("full", "cpu", "cpu")]


def case(model: str, backend: str, sharding: str, opt: str, par: str, micro: int, seq: int, ckpt: bool,
         gpus: int, mixed: str = "bf16", params: str = "fp32") -> dict[str, Any]:
    c = {"model": model, "backend": backend, "sharding": sharding, "offload_optimizer": opt,
         "offload_params": par, "micro_batch": micro, "seq_len": seq, "activation_checkpointing": ckpt,
         "gpus": gpus, "mixed": mixed, "params": params}
    c["id"] = "{model}/{backend}/{sharding}/opt-{offload_optimizer}/par-{offload_params}/b{micro_batch}/s{seq_len}/" \
              "ckpt-{activation_checkpointing}/g{gpus}/{mixed}-{params}".format(**c)
    return c


def matrix(kind: str) -> list[dict[str, Any]]:
    out = []
    if kind == "cpu":
        # DeepSpeed only: FSDP through accelerate does not shard on CPU processes (it runs as DDP).
        for model in ("llama-60m", "llama-125m-gqa"):
            for sharding, opt, par in DS_CONFIGS:
                for micro, seq, ckpt in ((1, 256, False), (2, 1024, False), (4, 512, True)):
                    out.append(case(model, "deepspeed", sharding, opt, par, micro, seq, ckpt, gpus=2))
        for sharding in ("grad_op", "full"):
            out.append(case("llama-60m", "deepspeed", sharding, "none", "none", 2, 1024, False, gpus=2, mixed="no"))
    elif kind == "gpu":
        # One GPU: sharding divides by 1, so the stages differ by their buffers and offload only.
        for model in ("llama-0.5b", "llama-1.1b-gqa", "llama-3b", "llama-7b"):
            for backend, configs in (("deepspeed", DS_CONFIGS), ("fsdp", FSDP_CONFIGS)):
                for sharding, opt, par in configs:
                    for micro, seq, ckpt in ((1, 512, False), (2, 2048, False), (4, 4096, True), (8, 1024, True)):
                        out.append(case(model, backend, sharding, opt, par, micro, seq, ckpt, gpus=1))
    else:
        raise ValueError(kind)
    return out


def held_out(case_id: str) -> bool:
    """A fixed third of the cases is never used for fitting (by a hash of the id, not by position)."""
    return int(hashlib.sha1(case_id.encode()).hexdigest(), 16) % 3 == 0


def job_for(c: dict[str, Any], out_dir: Path) -> TrainingJob:
    return TrainingJob.model_validate({
        "apiVersion": "shardctl.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "calibrate"},
        "spec": {
            "target": "local",
            "entrypoint": {"script": str(PROBE), "args": ["--micro-batch", "{micro_batch}", "--seq-len", "{seq_len}",
                                                          "--out", str(out_dir)]},
            "model": {"name_or_path": str(MODELS / c["model"])},
            "backend": c["backend"], "sharding": c["sharding"],
            "offload": {"optimizer": c["offload_optimizer"], "params": c["offload_params"]},
            "precision": {"mixed": c["mixed"], "params": c["params"]},
            "activation_checkpointing": c["activation_checkpointing"],
            "batch": {"micro": c["micro_batch"], "global": c["micro_batch"] * c["gpus"], "seq_len": c["seq_len"]},
            "resources": {"nodes": 1, "gpus_per_node": c["gpus"]},
            "fallback": {"plan": "off", "max_attempts": 1},
        }})


def versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "accelerate", "deepspeed", "transformers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def run_case(c: dict[str, Any], timeout: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="shardctl-calibrate-"))
    try:
        out_dir = work / "out"
        job = job_for(c, out_dir)
        dry = local.render(job, str(work / "run"), checkpoint_dir=str(work / "ckpt"), port=local.free_port(),
                           workdir=str(ROOT), bin_dir=str(Path(sys.executable).parent),
                           extra_env={"MALLOC_MMAP_THRESHOLD_": "65536", "TOKENIZERS_PARALLELISM": "false"})
        (work / "run").mkdir()
        for name, text in dry.files.items():
            (work / "run" / name).write_text(text)
        t = time.perf_counter()
        proc = subprocess.run(dry.command, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t
        ranks = sorted(out_dir.glob("rank*.json")) if out_dir.exists() else []
        record: dict[str, Any] = {"case": c, "held_out": held_out(c["id"]), "versions": versions(),
                                  "launcher_rc": proc.returncode, "wall_seconds": round(wall, 1)}
        if len(ranks) != c["gpus"]:
            tail = (proc.stdout + proc.stderr)[-3000:]
            record.update(ok=False, oom="out of memory" in tail.lower(), error_tail=tail)
            return record
        per_rank = [json.loads(r.read_text()) for r in ranks]
        worst = max(per_rank, key=lambda r: r["peak_allocated_bytes"])
        record.update(ok=True, device=worst["device"], parameters=worst["parameters"],
                      peak_allocated_bytes=worst["peak_allocated_bytes"],
                      peak_reserved_bytes=worst["peak_reserved_bytes"],
                      device_used_bytes=worst.get("device_used_bytes"),
                      device_total_bytes=worst.get("device_total_bytes"),
                      reserved_end_bytes=worst.get("reserved_end_bytes"),
                      step_seconds_median=worst["step_seconds_median"], ranks=per_rank)
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--matrix", choices=["cpu", "gpu"], default="gpu" if has_gpu() else "cpu")
    p.add_argument("--out", type=Path, help="default: benchmarks/data/memory-<matrix>.jsonl")
    p.add_argument("--list", action="store_true")
    p.add_argument("--only", help="run the cases whose id contains this text")
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args()
    cases = [c for c in matrix(args.matrix) if not args.only or args.only in c["id"]]
    if args.list:
        for c in cases:
            print(("held-out " if held_out(c["id"]) else "fit      ") + c["id"])
        return
    out = args.out or DATA / f"memory-{args.matrix}.jsonl"
    done = set()
    if out.exists():
        done = {json.loads(line)["case"]["id"] for line in out.read_text().splitlines() if line.strip()}
    for i, c in enumerate(cases, 1):
        if c["id"] in done:
            continue
        record = run_case(c, args.timeout)
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        peak = f"{record['peak_allocated_bytes'] / 2**30:.3f} GiB" if record.get("ok") else "FAILED"
        print(f"[{i}/{len(cases)}] {c['id']}: {peak} ({record['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
