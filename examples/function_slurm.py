"""A Python function as the entrypoint, on the development Slurm cluster: `train` runs under accelerate
launch on every rank of examples/quickstart.yaml's resources, and rank 0's return value comes back.

    slurm/dev/cluster up; eval "$(slurm/dev/cluster env)"
    SHARDCTL_FORCE_CPU=1 .venv/bin/python examples/function_slurm.py

The dev cluster's GPUs are fake, so SHARDCTL_FORCE_CPU=1 trains on CPU processes (gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import shardctl


def train(steps: int, lr: float = 0.1) -> dict:
    """A tiny data-parallel fit of y = 3x: every rank computes a gradient, they are averaged (all-reduce)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")  # accelerate launch (torchrun) set the rendezvous variables
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(rank)
    w = torch.zeros(1)
    for _ in range(steps):
        x = torch.randn(64)
        grad = (2 * (w * x - 3 * x) * x).mean().reshape(1)
        dist.all_reduce(grad)
        w -= lr * grad / world
    dist.barrier()
    dist.destroy_process_group()
    return {"w": round(w.item(), 4), "world_size": world, "rank": rank, "host": os.uname().nodename,
            "attempt": os.environ.get("SHARDCTL_ATTEMPT")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="examples/quickstart.yaml")
    p.add_argument("--target", default="slurm")
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()

    job = shardctl.submit(train, args.steps, job=args.spec, target=args.target)
    print(f"submitted {job.id} ({job.name}) to {args.target}", flush=True)
    result = job.result(timeout=600)  # waits; raises FunctionFailed with the traceback if train raised
    print(json.dumps(result))
    return 0 if abs(result["w"] - 3.0) < 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
