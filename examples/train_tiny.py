"""A tiny transformer-style language model trained on generated tokens: no downloads.

Run by `shardctl submit examples/quickstart.yaml` through `accelerate launch`. It reads what
shardctl tells it (README, "What your script sees"): micro-batch and accumulation from its
arguments, the checkpoint directory and attempt number from SHARDCTL_* variables. It resumes
from the newest checkpoint with `accelerator.load_state`; after a backend switch only the
model weights carry over (optimizer state restarts), and it says so.

`--long-seq-from STEP --long-seq-len N` switches to longer sequences at STEP, as curriculum
training does: memory grows mid-run, which is how the OOM example really runs out of memory
after checkpoints exist.

`--hang-at-step STEP --hang-rank R --hang-on-attempt A` makes rank R block forever (in a sleep) when it
reaches STEP on attempt A (SHARDCTL_ATTEMPT), while the other ranks go on into the step's collectives and
wait there: a hung run, as a deadlocked data loader or a lost peer leaves one, for the hang watchdog
(spec.resilience.hang_after) to find. Other attempts run normally, so the restart resumes and finishes.

`--fault LINE --fault-at-step STEP --fault-on-attempt A` makes every rank die at STEP on attempt A with LINE
as its last word (say CUDA's "RuntimeError: CUDA error: uncorrectable ECC error encountered"), as a broken
GPU or network makes a run die; `--fault-cuts-checkpoint` first cuts the newest checkpoint's weights short,
as a kill mid-save does, so that the next attempt must resume from the one before.

A notice (README, "What your script sees": SHARDCTL_CHECKPOINT_REQUEST, or SIGTERM) saves a checkpoint at the
end of the step; on `terminate` it then exits 143, as a process stopped by SIGTERM does.

It resumes from SHARDCTL_RESUME_FROM, the newest complete checkpoint shardctl found, else from the one its
latest.json marker names; each checkpoint says its own step and backend (checkpoint.json).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from fault_schedule import Schedule


class Block(nn.Module):
    """Pre-norm transformer block. Attention is written out (scores materialised), so activation
    memory grows with seq_len squared the way a naive implementation's does: predictable OOMs."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
        weights = scores.masked_fill(mask, float("-inf")).softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    _no_split_modules = ["Block"]  # what TRANSFORMER_BASED_WRAP wraps when layer_class is unset

    def __init__(self, vocab: int, dim: int, layers: int, heads: int, ckpt: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.ckpt = ckpt

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.ckpt and self.training else block(x)
        return self.head(self.norm(x))


def sequences(batch: int, length: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Arithmetic token sequences (random start and stride): learnable, so the loss visibly falls."""
    start = torch.randint(0, vocab, (batch, 1), generator=gen)
    stride = torch.randint(1, 8, (batch, 1), generator=gen)
    return (start + stride * torch.arange(length)) % vocab


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--micro-batch", type=int, default=int(os.environ.get("SHARDCTL_MICRO_BATCH", 4)))
    p.add_argument("--grad-accum", type=int, default=int(os.environ.get("SHARDCTL_GRAD_ACCUM", 1)))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--long-seq-from", type=int, default=0, help="step from which --long-seq-len is used (0: never)")
    p.add_argument("--long-seq-len", type=int, default=0)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to idle per step (time-limit demos)")
    p.add_argument("--save-every", type=int, default=int(os.environ.get("SHARDCTL_CHECKPOINT_EVERY") or 5))
    p.add_argument("--checkpoint-dir", default=os.environ.get("SHARDCTL_CHECKPOINT_DIR", "checkpoints"))
    p.add_argument("--hang-at-step", type=int, default=0, help="block forever on reaching this step (0: never)")
    p.add_argument("--hang-rank", type=int, default=0, help="the rank that blocks (--hang-at-step)")
    p.add_argument("--hang-on-attempt", type=int, default=1, help="the attempt on which it blocks (SHARDCTL_ATTEMPT)")
    p.add_argument("--fault", default="", help="die with this line as the last word at --fault-at-step (a fault demo)")
    p.add_argument("--fault-at-step", type=int, default=0, help="the step at which --fault happens (0: never)")
    p.add_argument("--fault-on-attempt", type=int, default=1, help="the attempt on which it happens")
    p.add_argument("--fault-cuts-checkpoint", action="store_true",
                   help="with --fault: cut the newest checkpoint short first, as a kill mid-save does")
    p.add_argument("--fault-schedule", default="", help="a JSON list of faults by step (examples/fault_schedule.py)")
    p.add_argument("--fault-state", default="", help="where the schedule keeps which faults happened")
    p.add_argument("--pg-timeout", type=float, default=0, help="seconds a collective may wait (0: torch's default)")
    return p.parse_args()


def fault_here(args: argparse.Namespace, step: int, root: Path) -> None:
    """Die as a broken node or network makes a run die: the fault's own words last, exit 1 (every rank)."""
    if not (args.fault and step == args.fault_at_step
            and os.environ.get("SHARDCTL_ATTEMPT", "1") == str(args.fault_on_attempt)):
        return
    if args.fault_cuts_checkpoint and os.environ.get("RANK", "0") == "0" \
            and (found := latest_checkpoint(root)) is not None:  # one rank cuts it: two would race
        weights = found[0] / "model_weights.pt"
        if weights.exists():
            data = weights.read_bytes()
            weights.write_bytes(data[: len(data) // 2])
    elif args.fault_cuts_checkpoint:
        time.sleep(2)  # rank 0 cuts it: dying first would have torchrun stop rank 0 halfway through
    print(args.fault, file=sys.stderr, flush=True)
    sys.exit(1)


def hang_here(args: argparse.Namespace, step: int, rank: int) -> None:
    """Block forever (a sleep, as a deadlocked loader would) when this rank is told to hang at this step."""
    attempt = os.environ.get("SHARDCTL_ATTEMPT", "1")
    if not (args.hang_at_step and step == args.hang_at_step and rank == args.hang_rank
            and attempt == str(args.hang_on_attempt)):
        return
    print(f"rank {rank}: simulating a hang at step {step} (attempt {attempt})", flush=True)
    while True:
        time.sleep(3600)


def make_accelerator(grad_accum: int, pg_timeout: float = 0):
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    timeout = {"timeout": timedelta(seconds=pg_timeout)} if pg_timeout else {}
    handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo", **timeout)]
    return Accelerator(gradient_accumulation_steps=grad_accum, kwargs_handlers=handlers)


def latest_checkpoint(root: Path) -> tuple[Path, dict] | None:
    """The checkpoint to resume from and what it says of itself (step, backend): the one shardctl chose
    (SHARDCTL_RESUME_FROM: the newest complete one), else the one the latest.json marker names."""
    chosen = os.environ.get("SHARDCTL_RESUME_FROM")
    if chosen and Path(chosen).is_dir():
        path = Path(chosen)
    else:
        marker = root / "latest.json"
        if not marker.exists():
            return None
        path = root / json.loads(marker.read_text())["dir"]
    meta = path / "checkpoint.json"
    return (path, json.loads(meta.read_text())) if meta.exists() else None


def main() -> None:
    args = parse()
    backend = os.environ.get("SHARDCTL_BACKEND", "fsdp")
    ckpt_on = os.environ.get("SHARDCTL_ACTIVATION_CHECKPOINTING") == "1"
    accelerator = make_accelerator(args.grad_accum, args.pg_timeout)
    faults = Schedule(args.fault_schedule, args.fault_state, accelerator.process_index)
    faults.at_start()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if os.environ.get("SHARDCTL_LOAD_DTYPE") == "bf16" else torch.float32
    model = TinyLM(args.vocab, args.dim, args.layers, args.heads, ckpt_on).to(dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)

    root = Path(args.checkpoint_dir)
    start = 0
    resumable = latest_checkpoint(root)
    if resumable is not None:
        found, info = resumable
        if info.get("backend") == backend:
            accelerator.load_state(str(found))
            start = info["step"]
            accelerator.print(f"resumed from {found} at step {start} (model, optimizer and RNG state)")
        else:
            state = torch.load(found / "model_weights.pt", map_location="cpu", weights_only=True)
            accelerator.unwrap_model(model).load_state_dict(state)
            start = info["step"]
            accelerator.print(f"resumed from {found} at step {start}: backend changed {info.get('backend')} -> "
                              f"{backend}, model weights only, optimizer state restarts")
    else:
        accelerator.print("no checkpoint: starting from step 0")

    accelerator.print(f"attempt {os.environ.get('SHARDCTL_ATTEMPT', '?')}: backend={backend} "
                      f"sharding={os.environ.get('SHARDCTL_SHARDING', '?')} micro_batch={args.micro_batch} "
                      f"grad_accum={args.grad_accum} activation_checkpointing={ckpt_on} "
                      f"world_size={accelerator.num_processes} distributed_type={accelerator.distributed_type}")
    print(f"rank {accelerator.process_index}/{accelerator.num_processes} is process "
          f"{accelerator.local_process_index} on machine {os.environ.get('SLURM_NODEID', '-')}", flush=True)
    gen = torch.Generator().manual_seed(1234 + accelerator.process_index)
    signal.signal(signal.SIGTERM, _on_sigterm)
    model.train()
    for step in range(start, args.steps):
        seq = args.long_seq_len if args.long_seq_from and step >= args.long_seq_from else args.seq_len
        t0 = time.perf_counter()
        hang_here(args, step + 1, accelerator.process_index)
        fault_here(args, step + 1, root)
        faults.at_step(step + 1)
        for _ in range(args.grad_accum):
            tokens = sequences(args.micro_batch, seq + 1, args.vocab, gen).to(accelerator.device)
            with accelerator.accumulate(model):
                logits = model(tokens[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, args.vocab).float(), tokens[:, 1:].reshape(-1))
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
        accelerator.print(f"step {step + 1}/{args.steps} loss {loss.item():.4f} seq {seq} "
                          f"time {time.perf_counter() - t0:.3f}s", flush=True)
        if args.step_sleep:
            time.sleep(args.step_sleep)
        notice = checkpoint_requested(accelerator)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps or notice:
            save(accelerator, model, root, step + 1, backend)
        if notice == "terminate" and step + 1 < args.steps:
            accelerator.print(f"stopping after the checkpoint at step {step + 1}: the run is being terminated",
                              flush=True)
            sys.exit(TERMINATED)
    accelerator.print("training complete")
    accelerator.end_training()


TERMINATED = 143  # 128 + SIGTERM: how a process stopped by SIGTERM ends, said after saving
_sigterm = False


def _on_sigterm(signum, frame) -> None:
    """SIGTERM straight to a rank (Slurm signals every task on a preemption or a cancel; torchrun passes its
    own on): note it, save at the end of this step, then stop."""
    global _sigterm
    _sigterm = True


def checkpoint_requested(accelerator) -> str | None:
    """Why a checkpoint is wanted now, or None. shardctl writes SHARDCTL_CHECKPOINT_REQUEST with the reason:
    `time_limit` (Slurm, shortly before the limit: save, then go on) or `terminate` (a preemption, a pod stopping,
    a cancel: save, then stop); a SIGTERM to this process counts as `terminate`. Every rank must decide alike
    (saving is collective), so the ranks agree first: any rank's `terminate` wins over a `time_limit`."""
    path = os.environ.get("SHARDCTL_CHECKPOINT_REQUEST")
    why = 2.0 if _sigterm else 0.0
    if path and os.path.exists(path):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            text = ""
        why = max(why, 2.0 if text == "terminate" else 1.0)
    seen = torch.tensor([why], device=accelerator.device)
    agreed = accelerator.reduce(seen, reduction="max").item()
    if agreed == 0:
        return None
    accelerator.wait_for_everyone()
    reason = "terminate" if agreed >= 2 else "time_limit"
    if accelerator.is_main_process:
        if path and os.path.exists(path) and reason == "time_limit":
            os.remove(path)  # asked once: the next request is a new one
        print(f"checkpoint requested ({reason}): saving now", flush=True)
    return reason


def save(accelerator, model, root: Path, step: int, backend: str) -> None:
    target = root / f"step_{step}"
    accelerator.save_state(str(target))
    state = accelerator.get_state_dict(model)  # full weights on rank 0: carries over a backend switch
    if accelerator.is_main_process:
        torch.save({k: v.float().cpu() for k, v in state.items()}, target / "model_weights.pt")
        (target / "checkpoint.json").write_text(json.dumps({"step": step, "backend": backend}))
        tmp = root / "latest.json.tmp"
        tmp.write_text(json.dumps({"dir": target.name, "step": step, "backend": backend}))
        os.replace(tmp, root / "latest.json")  # atomic: a crash never leaves a marker to a half checkpoint
    accelerator.wait_for_everyone()
    accelerator.print(f"checkpoint saved: {target}")


def exit_cleanly() -> None:
    """Leave without running C++ static destructors. On CPU (DS_ACCELERATOR=cpu) a rank sometimes
    aborts at interpreter exit after training completed ("terminate called without an active
    exception", SIGABRT), which fails the whole run: seen in about 1 of 10 fresh-venv test runs here.
    Destroying the process group and then _exit after flushing makes the ending deterministic."""
    import sys

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
    exit_cleanly()
