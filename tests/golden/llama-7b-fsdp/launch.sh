#!/usr/bin/env bash
# shardctl: job llama-7b-fsdp, attempt 1, target local. Exactly what submit runs.
set -euo pipefail
cd /work
export PYTHONFAULTHANDLER=1
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export SHARDCTL_ACTIVATION_CHECKPOINTING=1
export SHARDCTL_ATTEMPT=1
export SHARDCTL_BACKEND=fsdp
export SHARDCTL_CHECKPOINT_DIR=/shared/ckpt/llama-7b
export SHARDCTL_CHECKPOINT_EVERY=200
export SHARDCTL_GLOBAL_BATCH=256
export SHARDCTL_GRAD_ACCUM=4
export SHARDCTL_JOB_NAME=llama-7b-fsdp
export SHARDCTL_LOAD_DTYPE=fp32
export SHARDCTL_MICRO_BATCH=4
export SHARDCTL_MIXED_PRECISION=bf16
export SHARDCTL_MODEL=/models/llama-7b
export SHARDCTL_OFFLOAD_OPTIMIZER=none
export SHARDCTL_OFFLOAD_PARAMS=none
export SHARDCTL_SEQ_LEN=4096
export SHARDCTL_SHARDING=full
export SHARDCTL_WORLD_SIZE=16
export SHARDCTL_ZERO_STAGE=3
export TORCH_NCCL_ASYNC_ERROR_HANDLING=3
export TORCH_NCCL_ENABLE_MONITORING=1
export TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC=180
# one launcher per 'machine', all on localhost (static rendezvous on 127.0.0.1)
pids=()
accelerate launch --config_file /run/llama-7b-fsdp/accelerate_config.yaml --num_machines 2 --num_processes 16 --machine_rank 0 --main_process_ip 127.0.0.1 --main_process_port 29500 train_llama.py --per-device-batch 4 --grad-accum 4 --output /shared/ckpt/llama-7b & pids+=($!)
accelerate launch --config_file /run/llama-7b-fsdp/accelerate_config.yaml --num_machines 2 --num_processes 16 --machine_rank 1 --main_process_ip 127.0.0.1 --main_process_port 29500 train_llama.py --per-device-batch 4 --grad-accum 4 --output /shared/ckpt/llama-7b & pids+=($!)
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit "$rc"
