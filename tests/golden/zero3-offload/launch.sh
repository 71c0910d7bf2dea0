#!/usr/bin/env bash
# shardctl: job gpt2-xl-zero3-offload, attempt 1, target local. Exactly what submit runs.
set -euo pipefail
cd /work
export PYTHONFAULTHANDLER=1
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export SHARDCTL_ACTIVATION_CHECKPOINTING=0
export SHARDCTL_ATTEMPT=1
export SHARDCTL_BACKEND=deepspeed
export SHARDCTL_CHECKPOINT_DIR=/ckpt
export SHARDCTL_CHECKPOINT_EVERY=''
export SHARDCTL_GLOBAL_BATCH=16
export SHARDCTL_GRAD_ACCUM=1
export SHARDCTL_JOB_NAME=gpt2-xl-zero3-offload
export SHARDCTL_LOAD_DTYPE=fp32
export SHARDCTL_MICRO_BATCH=16
export SHARDCTL_MIXED_PRECISION=fp16
export SHARDCTL_MODEL=gpt2-xl
export SHARDCTL_OFFLOAD_OPTIMIZER=cpu
export SHARDCTL_OFFLOAD_PARAMS=cpu
export SHARDCTL_SEQ_LEN=128
export SHARDCTL_SHARDING=full
export SHARDCTL_WORLD_SIZE=1
export SHARDCTL_ZERO_STAGE=3
export TORCH_NCCL_ASYNC_ERROR_HANDLING=3
export TORCH_NCCL_ENABLE_MONITORING=1
export TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC=180
exec accelerate launch --config_file /run/gpt2-xl-zero3-offload/accelerate_config.yaml --num_machines 1 --num_processes 1 --machine_rank 0 --main_process_ip 127.0.0.1 --main_process_port 29500 run_clm_no_trainer.py --per_device_train_batch_size 16 --output_dir /ckpt
