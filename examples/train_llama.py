"""A Llama-style causal LM built from a config (no download), trained on random tokens.

`--preset 7b` is Llama-2-7B's shape (6.7e9 parameters): the GPU OOM example. `--preset tiny`
is the same code path small enough for CPU tests. Reads the same SHARDCTL_* variables as
train_tiny.py and shares its checkpoint/resume logic (save_state/load_state + latest.json).
Activation checkpointing: transformers' gradient_checkpointing_enable(). With DeepSpeed
optimizer offload to CPU it uses DeepSpeedCPUAdam, as DeepSpeed requires.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from train_tiny import exit_cleanly, latest_checkpoint, make_accelerator, save  # same directory

PRESETS = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=512),
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--micro-batch", type=int, default=int(os.environ.get("SHARDCTL_MICRO_BATCH", 1)))
    p.add_argument("--grad-accum", type=int, default=int(os.environ.get("SHARDCTL_GRAD_ACCUM", 1)))
    p.add_argument("--seq-len", type=int, default=int(os.environ.get("SHARDCTL_SEQ_LEN") or 512))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--save-every", type=int, default=int(os.environ.get("SHARDCTL_CHECKPOINT_EVERY") or 3))
    p.add_argument("--checkpoint-dir", default=os.environ.get("SHARDCTL_CHECKPOINT_DIR", "checkpoints"))
    return p.parse_args()


def make_optimizer(params, backend: str):
    if backend == "deepspeed" and os.environ.get("SHARDCTL_OFFLOAD_OPTIMIZER") == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, lr=1e-5)
    return torch.optim.AdamW(params, lr=1e-5)


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    args = parse()
    backend = os.environ.get("SHARDCTL_BACKEND", "fsdp")
    accelerator = make_accelerator(args.grad_accum)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if os.environ.get("SHARDCTL_LOAD_DTYPE") == "bf16" else torch.float32
    config = LlamaConfig(**PRESETS[args.preset], max_position_embeddings=max(args.seq_len, 128))
    t0 = time.perf_counter()
    model = LlamaForCausalLM(config).to(dtype)
    if os.environ.get("SHARDCTL_ACTIVATION_CHECKPOINTING") == "1":
        model.gradient_checkpointing_enable()
    optimizer = make_optimizer(model.parameters(), backend)
    model, optimizer = accelerator.prepare(model, optimizer)
    n_params = sum(p.numel() for p in model.parameters())
    accelerator.print(f"attempt {os.environ.get('SHARDCTL_ATTEMPT', '?')}: llama {args.preset} "
                      f"({n_params:,} local parameters) backend={backend} micro_batch={args.micro_batch} "
                      f"seq={args.seq_len} ready in {time.perf_counter() - t0:.1f}s")
    root = Path(args.checkpoint_dir)
    start = 0
    found = latest_checkpoint(root)
    if found is not None:
        accelerator.load_state(str(found))
        start = int(found.name.split("_")[-1])
        accelerator.print(f"resumed from {found} at step {start}")
    gen = torch.Generator().manual_seed(1234 + accelerator.process_index)
    model.train()
    for step in range(start, args.steps):
        t = time.perf_counter()
        for _ in range(args.grad_accum):
            tokens = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq_len), generator=gen)
            tokens = tokens.to(accelerator.device)
            with accelerator.accumulate(model):
                loss = model(input_ids=tokens, labels=tokens).loss
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        mem = f" max_alloc {torch.cuda.max_memory_allocated() / 2**30:.1f}GiB" if torch.cuda.is_available() else ""
        accelerator.print(f"step {step + 1}/{args.steps} loss {loss.item():.4f} time {time.perf_counter() - t:.3f}s{mem}",
                          flush=True)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save(accelerator, model, root, step + 1, backend)
    accelerator.print("training complete")
    accelerator.end_training()


if __name__ == "__main__":
    main()
    exit_cleanly()
