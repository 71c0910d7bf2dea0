#!/usr/bin/env bash
# shardctl: job gpu-oom-7b, attempt 1, target local. Exactly what submit runs.
set -euo pipefail
cd /work
export PYTHONFAULTHANDLER=1
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export SHARDCTL_ACTIVATION_CHECKPOINTING=0
export SHARDCTL_ATTEMPT=1
export SHARDCTL_BACKEND=deepspeed
export SHARDCTL_CHECKPOINT_DIR=/ckpt
export SHARDCTL_CHECKPOINT_EVERY=3
export SHARDCTL_GLOBAL_BATCH=1
export SHARDCTL_GRAD_ACCUM=1
export SHARDCTL_JOB_NAME=gpu-oom-7b
export SHARDCTL_LOAD_DTYPE=fp32
export SHARDCTL_MICRO_BATCH=1
export SHARDCTL_MIXED_PRECISION=bf16
export SHARDCTL_MODEL=llama-7b-from-config
export SHARDCTL_OFFLOAD_OPTIMIZER=none
export SHARDCTL_OFFLOAD_PARAMS=none
export SHARDCTL_SEQ_LEN=1024
export SHARDCTL_SHARDING=grad_op
export SHARDCTL_WORLD_SIZE=1
export SHARDCTL_ZERO_STAGE=2
export TORCH_NCCL_ASYNC_ERROR_HANDLING=3
export TORCH_NCCL_ENABLE_MONITORING=1
export TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC=180
exec accelerate launch --config_file /run/gpu-oom-7b/accelerate_config.yaml --num_machines 1 --num_processes 1 --machine_rank 0 --main_process_ip 127.0.0.1 --main_process_port 29500 examples/train_llama.py --preset 7b --micro-batch 1 --grad-accum 1 --seq-len 1024 --steps 6 --checkpoint-dir /ckpt
