#!/usr/bin/env bash
# shardctl: job slurm-2node, attempt 1, target local. Exactly what submit runs.
set -euo pipefail
cd /work
export PYTHONFAULTHANDLER=1
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export SHARDCTL_ACTIVATION_CHECKPOINTING=0
export SHARDCTL_ATTEMPT=1
export SHARDCTL_BACKEND=deepspeed
export SHARDCTL_CHECKPOINT_DIR=/ckpt
export SHARDCTL_CHECKPOINT_EVERY=4
export SHARDCTL_GLOBAL_BATCH=8
export SHARDCTL_GRAD_ACCUM=1
export SHARDCTL_JOB_NAME=slurm-2node
export SHARDCTL_LOAD_DTYPE=fp32
export SHARDCTL_MICRO_BATCH=4
export SHARDCTL_MIXED_PRECISION=no
export SHARDCTL_MODEL=tiny-lm
export SHARDCTL_OFFLOAD_OPTIMIZER=none
export SHARDCTL_OFFLOAD_PARAMS=none
export SHARDCTL_SEQ_LEN=64
export SHARDCTL_SHARDING=full
export SHARDCTL_WORLD_SIZE=2
export SHARDCTL_ZERO_STAGE=3
export TORCH_NCCL_ASYNC_ERROR_HANDLING=3
export TORCH_NCCL_ENABLE_MONITORING=1
export TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC=180
# one launcher per 'machine', all on localhost (static rendezvous on 127.0.0.1)
pids=()
accelerate launch --config_file /run/slurm-2node/accelerate_config.yaml --num_machines 2 --num_processes 2 --machine_rank 0 --main_process_ip 127.0.0.1 --main_process_port 29500 examples/train_tiny.py --micro-batch 4 --grad-accum 1 --steps 8 --checkpoint-dir /ckpt --dim 64 --heads 2 --layers 2 --vocab 256 & pids+=($!)
accelerate launch --config_file /run/slurm-2node/accelerate_config.yaml --num_machines 2 --num_processes 2 --machine_rank 1 --main_process_ip 127.0.0.1 --main_process_port 29500 examples/train_tiny.py --micro-batch 4 --grad-accum 1 --steps 8 --checkpoint-dir /ckpt --dim 64 --heads 2 --layers 2 --vocab 256 & pids+=($!)
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit "$rc"
