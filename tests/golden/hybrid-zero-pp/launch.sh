#!/usr/bin/env bash
# shardctl: job hybrid-13b, attempt 1, target local. Exactly what submit runs.
set -euo pipefail
cd /work
export HF_HUB_OFFLINE=1
export PYTHONFAULTHANDLER=1
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export SHARDCTL_ACTIVATION_CHECKPOINTING=0
export SHARDCTL_ATTEMPT=1
export SHARDCTL_BACKEND=deepspeed
export SHARDCTL_CHECKPOINT_DIR=/ckpt/hybrid-13b
export SHARDCTL_CHECKPOINT_EVERY=500
export SHARDCTL_GLOBAL_BATCH=512
export SHARDCTL_GRAD_ACCUM=16
export SHARDCTL_JOB_NAME=hybrid-13b
export SHARDCTL_LOAD_DTYPE=fp32
export SHARDCTL_MICRO_BATCH=2
export SHARDCTL_MIXED_PRECISION=bf16
export SHARDCTL_MODEL=/models/llama-13b
export SHARDCTL_OFFLOAD_OPTIMIZER=none
export SHARDCTL_OFFLOAD_PARAMS=none
export SHARDCTL_SEQ_LEN=2048
export SHARDCTL_SHARDING=hybrid
export SHARDCTL_WORLD_SIZE=16
export SHARDCTL_ZERO_STAGE=3
export TORCH_NCCL_ASYNC_ERROR_HANDLING=3
export TORCH_NCCL_ENABLE_MONITORING=1
export TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC=180
# one launcher per 'machine', all on localhost (static rendezvous on 127.0.0.1)
pids=()
accelerate launch --config_file /run/hybrid-13b/accelerate_config.yaml --num_machines 2 --num_processes 16 --machine_rank 0 --main_process_ip 127.0.0.1 --main_process_port 29500 /app/train.py --micro-batch 2 --grad-accum 16 & pids+=($!)
accelerate launch --config_file /run/hybrid-13b/accelerate_config.yaml --num_machines 2 --num_processes 16 --machine_rank 1 --main_process_ip 127.0.0.1 --main_process_port 29500 /app/train.py --micro-batch 2 --grad-accum 16 & pids+=($!)
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit "$rc"
