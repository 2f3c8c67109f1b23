#!/usr/bin/env bash
# Tiny-tier twin of the 7B launchers: one recipe of train/recipes/tiny/ on CPU, resuming automatically.
#   bash scripts/run_tiny.sh tgrl                 # python train/rl.py --config train/recipes/tiny/tgrl.yaml
#   bash scripts/run_tiny.sh grpo seed=1 output_dir=checkpoints/tiny_grpo_s1
#   bash scripts/run_tiny.sh sft_rl               # SFT stage (skipped when done), then GRPO from it
#   bash scripts/run_tiny.sh all                  # weak base, SFT, then every main-table method
#   USE_ACCELERATE=1 NUM_PROCS=2 bash scripts/run_tiny.sh tgrl   # accelerate + DeepSpeed ZeRO-2 on CPU (as on GPUs)
#   DRY_RUN=1 bash scripts/run_tiny.sh tgrl       # print the command only
# Order of the tiny pipeline: make tiny && make data; base_direct_sft; teacher trajectories + filter
# (data_prep/build_teacher_trajectories.py, filter_trajectories.py --policy checkpoints/tiny_base
# --max-completion-tokens 64 --out data/tgrl/oracle); then any RL recipe. ~10 min per 1,000-step RL run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_launch.sh

METHOD=${1:?usage: bash scripts/run_tiny.sh <recipe name in train/recipes/tiny/ | all> [key=value ...]}
shift

run_recipe() { # run_recipe NAME [overrides]
  local name=$1 recipe=train/recipes/tiny/$1.yaml script=train/rl.py
  shift
  case $name in base_direct_sft | sft) script=train/sft.py ;; esac
  PREFLIGHT_FAILED=0
  check_path recipe "$recipe" "see train/recipes/tiny/"
  check_packages torch transformers trl datasets
  check_path model "$(recipe_value "$recipe" model_name_or_path "$@")" \
    "make tiny (tiny-init), bash scripts/run_tiny.sh base_direct_sft (tiny_base) or sft (tiny_sft)"
  check_path "training data (train_file)" "$(recipe_value "$recipe" train_file "$@")" \
    "make data (data/synthetic); teacher + filter for data/tgrl/* (see the header of this script)"
  finish_preflight
  if [ "${USE_ACCELERATE:-0}" = 1 ]; then
    run_cmd "$ACCELERATE" launch --config_file train/accelerate/zero2_cpu.yaml \
      --num_processes "${NUM_PROCS:-1}" "$script" --config "$recipe" resume_from_checkpoint=auto "$@"
  else
    run_cmd "$PY" "$script" --config "$recipe" resume_from_checkpoint=auto "$@"
  fi
}

done_already() { [ -f "$1/train_results.json" ]; }

case $METHOD in
  sft_rl)
    done_already checkpoints/tiny_sft && echo "SFT stage done (checkpoints/tiny_sft): skipped" || run_recipe sft
    run_recipe sft_rl "$@"
    ;;
  all)
    done_already checkpoints/tiny_base || run_recipe base_direct_sft
    done_already checkpoints/tiny_sft || run_recipe sft
    for name in grpo sft_rl luffy_vl tgrl; do run_recipe "$name" "$@"; done
    ;;
  *) run_recipe "$METHOD" "$@" ;;
esac
