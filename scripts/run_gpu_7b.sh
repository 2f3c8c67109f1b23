#!/usr/bin/env bash
# One RL or SFT run on GPUs: accelerate + DeepSpeed ZeRO-2 (default) or ZeRO-3, vLLM colocate (server
# optional), bf16, gradient checkpointing, automatic resume from the last checkpoint in OUTPUT.
# Called by run_tgrl_7b.sh / run_grpo_7b.sh / run_sft_rl_7b.sh; usable directly for any recipe:
#   RECIPE=train/recipes/7b/luffy_vl.yaml bash scripts/run_gpu_7b.sh [key=value ...]
#   DRY_RUN=1 ... prints the command; environment variables: see scripts/_launch.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_launch.sh

RECIPE=${RECIPE:?set RECIPE=train/recipes/7b/<run>.yaml}
SCRIPT=${SCRIPT:-train/rl.py}
ZERO=${ZERO:-2}
NUM_GPUS=${NUM_GPUS:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}

overrides=(resume_from_checkpoint=auto)
[ -n "${MODEL:-}" ] && overrides+=("model_name_or_path=$MODEL")
[ -n "${DATA:-}" ] && overrides+=("train_file=$DATA")
[ -n "${OUTPUT:-}" ] && overrides+=("output_dir=$OUTPUT")
[ -n "${SEED:-}" ] && overrides+=("seed=$SEED")
[ -n "${FREEZE_VISION:-}" ] && overrides+=("freeze_vision_tower=$([ "$FREEZE_VISION" = 1 ] && echo true || echo false)")
[ -n "${WANDB_PROJECT:-}" ] && overrides+=(report_to=wandb)
if [ "$SCRIPT" = train/rl.py ] && [ -n "${VLLM_MODE:-}" ]; then
  overrides+=("vllm_mode=$VLLM_MODE")
  if [ "$VLLM_MODE" = server ]; then
    overrides+=("vllm_server_host=${VLLM_SERVER_HOST:-127.0.0.1}" "vllm_server_port=${VLLM_SERVER_PORT:-8000}")
  fi
fi
overrides+=("$@")

# ---- preflight: GPUs, packages, paths --------------------------------------------------------------
check_path recipe "$RECIPE" "see train/recipes/7b/"
check_path "DeepSpeed config" "train/deepspeed/zero$ZERO.json" "ZERO must be 2 or 3"
check_gpus "$NUM_GPUS"
packages=(torch transformers trl accelerate deepspeed datasets)
[ "$(recipe_value "$RECIPE" use_vllm "${overrides[@]}")" = true ] && packages+=(vllm)
check_packages "${packages[@]}"
model=$(recipe_value "$RECIPE" model_name_or_path "${overrides[@]}")
case $model in /* | ./* | checkpoints/*) check_path model "$model" "run its stage first or set MODEL=" ;; esac
check_path "training data (train_file)" "$(recipe_value "$RECIPE" train_file "${overrides[@]}")" \
  "build it with scripts/build_teacher_7b.sh or set DATA="
if [ "$NNODES" -gt 1 ] && [ "$MASTER_ADDR" = 127.0.0.1 ]; then
  fail "NNODES=$NNODES needs MASTER_ADDR (the address of node rank 0) on every node"
fi
finish_preflight

# ---- launch ----------------------------------------------------------------------------------------
run_cmd "$ACCELERATE" launch \
  --config_file "train/accelerate/zero$ZERO.yaml" --deepspeed_config_file "train/deepspeed/zero$ZERO.json" \
  --num_machines "$NNODES" --num_processes "$((NNODES * NUM_GPUS))" --machine_rank "$NODE_RANK" \
  --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
  "$SCRIPT" --config "$RECIPE" "${overrides[@]}"
