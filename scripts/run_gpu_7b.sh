#!/usr/bin/env bash
# One RL or SFT run on GPUs: accelerate + DeepSpeed ZeRO-2 (default) or ZeRO-3, vLLM colocate (server
# optional), bf16, gradient checkpointing, automatic resume from the last checkpoint in OUTPUT.
# Called by run_tgrl_7b.sh / run_grpo_7b.sh / run_sft_rl_7b.sh; usable directly for any recipe:
#   RECIPE=train/recipes/7b/luffy_vl.yaml bash scripts/run_gpu_7b.sh [key=value ...]
#   DRY_RUN=1 ... prints the command; environment variables: see scripts/_launch.sh.
#
# Global batch: the 7B recipes are written for RECIPE_GPUS=8 GPUs (4 rollouts x 8 GPUs x 16 accumulation
# = 512 sequences per optimizer step, 1,024 per generation). On NUM_GPUS x NNODES GPUs the launcher
# rescales gradient_accumulation_steps and steps_per_generation so both stay the same (KEEP_GLOBAL_BATCH=1,
# the default; 0 = let the batch grow with the GPUs); an explicit key=value override is never rescaled.
# Multi-node: every node must see the same OUTPUT (node 0 writes the checkpoints, all read them on resume):
# the preflight refuses a local filesystem (SHARED_OUTPUT_OK=1 if yours is shared but not recognised).
# Checkpoints of the 7B runs: ~108 GB each (bf16 weights 16.6 GB + fp32 master and Adam states of the
# 7.6B trainable parameters 91 GB) x save_total_limit 3 = ~324 GB. CHECKPOINTS=last keeps 1 (~108 GB,
# resumable); CHECKPOINTS=model_only saves weights only (~17 GB each; no resume: a rerun starts over).
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
RECIPE_GPUS=${RECIPE_GPUS:-8}          # the world size the recipe's batch arithmetic assumes
KEEP_GLOBAL_BATCH=${KEEP_GLOBAL_BATCH:-1}
CHECKPOINTS=${CHECKPOINTS:-full}       # full | last | model_only
CKPT_GB=${CKPT_GB:-108}                # one full 7B checkpoint (see above); model-only: ~17
WORLD=$((NNODES * NUM_GPUS))

overrides=()
case $CHECKPOINTS in
  full) overrides+=(resume_from_checkpoint=auto) ;;
  last) overrides+=(resume_from_checkpoint=auto save_total_limit=1) ;;
  model_only) overrides+=(save_only_model=true) ;;  # no optimizer state: nothing to resume from
  *) echo "error: CHECKPOINTS must be full, last or model_only (got '$CHECKPOINTS')" >&2; exit 2 ;;
esac
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

# ---- global batch: fixed across world sizes unless KEEP_GLOBAL_BATCH=0 ------------------------------
batch_keys=(gradient_accumulation_steps)
[ "$SCRIPT" = train/rl.py ] && batch_keys+=(steps_per_generation)
if [ "$KEEP_GLOBAL_BATCH" = 1 ] && [ "$WORLD" != "$RECIPE_GPUS" ] && [ -f "$RECIPE" ]; then
  for key in "${batch_keys[@]}"; do
    case " ${*:-} " in *" $key="*) continue ;; esac  # the user's explicit value wins
    value=$(recipe_value "$RECIPE" "$key")
    [ -n "$value" ] || continue
    if [ $((value * RECIPE_GPUS % WORLD)) -ne 0 ] || [ $((value * RECIPE_GPUS / WORLD)) -lt 1 ]; then
      fail "$key $value x $RECIPE_GPUS recipe GPUs is not divisible by $WORLD GPUs ($NNODES node(s) x $NUM_GPUS): the global batch cannot stay fixed. Fix: a GPU count dividing $((value * RECIPE_GPUS)), or $key=N explicitly, or KEEP_GLOBAL_BATCH=0"
      continue
    fi
    overrides+=("$key=$((value * RECIPE_GPUS / WORLD))")
  done
fi
per_device=$(recipe_value "$RECIPE" per_device_train_batch_size "${overrides[@]}")
accumulation=$(recipe_value "$RECIPE" gradient_accumulation_steps "${overrides[@]}")
if [ -n "$per_device" ] && [ -n "$accumulation" ]; then
  echo "# global batch: $per_device per GPU x $WORLD GPUs x gradient_accumulation_steps $accumulation = $((per_device * WORLD * accumulation)) sequences per optimizer step$([ "$KEEP_GLOBAL_BATCH" = 1 ] && echo " (kept at the recipe's $RECIPE_GPUS-GPU value; KEEP_GLOBAL_BATCH=0 lets it grow)" || echo " (KEEP_GLOBAL_BATCH=0: scales with the GPUs)")"
fi

# ---- preflight: GPUs, packages, paths --------------------------------------------------------------
check_path recipe "$RECIPE" "see train/recipes/7b/"
check_path "DeepSpeed config" "train/deepspeed/zero$ZERO.json" "ZERO must be 2 or 3"
check_gpus "$NUM_GPUS"
driver=$(driver_finding)
[ -z "$driver" ] || fail "$driver"
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
output=$(recipe_value "$RECIPE" output_dir "${overrides[@]}")
if [ "$NNODES" -gt 1 ] && [ "${SHARED_OUTPUT_OK:-0}" != 1 ]; then
  check_shared_output "$output"
fi
check_checkpoint_space "$output" "$CHECKPOINTS" "$(recipe_value "$RECIPE" save_total_limit "${overrides[@]}")" "$CKPT_GB"
finish_preflight

# ---- launch ----------------------------------------------------------------------------------------
run_cmd "$ACCELERATE" launch \
  --config_file "train/accelerate/zero$ZERO.yaml" --deepspeed_config_file "train/deepspeed/zero$ZERO.json" \
  --num_machines "$NNODES" --num_processes "$((NNODES * NUM_GPUS))" --machine_rank "$NODE_RANK" \
  --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
  "$SCRIPT" --config "$RECIPE" "${overrides[@]}"
