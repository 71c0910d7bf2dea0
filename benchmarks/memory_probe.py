"""Peak memory and step time of one training config, measured where it runs (launched by
benchmarks/calibrate_memory.py through the launch.sh shardctl renders, so the accelerate config and
DeepSpeed JSON are exactly the ones shardctl would submit).

The model is built from a local config.json (SHARDCTL_MODEL, a directory) with random weights and
trained on random tokens for a few steps; each rank writes OUT/rankN.json.

What "peak" means:
- on a GPU: torch.cuda.max_memory_allocated / max_memory_reserved from the end of `prepare` (the peak
  stats are reset there), and the device's used memory (context included) from cudaMemGetInfo at the end;
- on CPU processes (no GPU): the "device" is host memory, so the peak is the process's peak RSS
  during training (VmHWM, reset with /proc/self/clear_refs after accelerator.prepare) minus its RSS
  just before the model was built. glibc is told to mmap every block over 64 KiB
  (MALLOC_MMAP_THRESHOLD_, set by the driver) so freed tensors really leave the RSS.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from train_llama import make_optimizer  # noqa: E402  (DeepSpeedCPUAdam under optimizer offload)
from train_tiny import exit_cleanly  # noqa: E402


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def settle() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS


def main() -> None:
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    from transformers import AutoConfig, AutoModelForCausalLM

    p = argparse.ArgumentParser()
    p.add_argument("--micro-batch", type=int, default=int(os.environ.get("SHARDCTL_MICRO_BATCH", 1)))
    p.add_argument("--seq-len", type=int, default=int(os.environ.get("SHARDCTL_SEQ_LEN") or 512))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    backend = os.environ.get("SHARDCTL_BACKEND", "fsdp")
    handlers = [] if cuda else [InitProcessGroupKwargs(backend="gloo")]
    accelerator = Accelerator(kwargs_handlers=handlers)
    # Warm the kernels and the process group so their one-off allocations are in the baseline.
    warm = torch.ones(256, 256, device=accelerator.device)
    (warm @ warm).sum().item()
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(warm)
    del warm
    settle()
    base_rss = status_bytes("VmRSS")

    config = AutoConfig.from_pretrained(os.environ["SHARDCTL_MODEL"])
    config.max_position_embeddings = max(config.max_position_embeddings, args.seq_len)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if os.environ.get("SHARDCTL_LOAD_DTYPE") == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    params = sum(p.numel() for p in model.parameters())
    if os.environ.get("SHARDCTL_ACTIVATION_CHECKPOINTING") == "1":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = make_optimizer(model.parameters(), backend)
    model, optimizer = accelerator.prepare(model, optimizer)
    settle()
    prepared_rss = status_bytes("VmRSS")
    reset_peak_rss()
    if cuda:  # the peak of training, not of loading and prepare (as in benchmarks/data/h100-memory/)
        torch.cuda.reset_peak_memory_stats()

    gen = torch.Generator().manual_seed(1234 + accelerator.process_index)
    model.train()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        tokens = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq_len), generator=gen)
        tokens = tokens.to(accelerator.device)
        loss = model(input_ids=tokens, labels=tokens).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    record = {
        "rank": accelerator.process_index, "world_size": accelerator.num_processes, "parameters": params,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "step_seconds": times, "step_seconds_median": statistics.median(times[1:] or times),
        "loss": float(loss.item()),
        "host_rss_before_model_bytes": base_rss, "host_rss_after_prepare_bytes": prepared_rss,
        "host_peak_rss_bytes": status_bytes("VmHWM"),
    }
    if cuda:
        free, total = torch.cuda.mem_get_info()
        record.update(peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                      reserved_end_bytes=torch.cuda.memory_reserved(),
                      peak_reserved_bytes=torch.cuda.max_memory_reserved(),
                      device_used_bytes=total - free, device_total_bytes=total)
    else:
        record.update(peak_allocated_bytes=record["host_peak_rss_bytes"] - base_rss, peak_reserved_bytes=None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
    exit_cleanly()
