#!/usr/bin/env bash
# SFT-then-RL on Qwen2.5-VL-7B-Instruct (main table, row "SFT-then-RL"): SFT on the filtered teacher
# trajectories (train/recipes/7b/sft.yaml, ~2-3 h), then GRPO from that checkpoint with TGRL's data and
# budget (train/recipes/7b/sft_rl.yaml, ~8-10 h on H100, ~16-24 h on A100). 8x H100/A100 80 GB.
#   bash scripts/run_sft_rl_7b.sh        DRY_RUN=1 bash scripts/run_sft_rl_7b.sh
# A finished SFT stage (train_results.json in SFT_OUTPUT) is skipped; both stages resume from checkpoints.
# Environment: SFT_OUTPUT (default checkpoints/qwen2.5-vl-7b_sft) and scripts/_launch.sh's variables.
set -euo pipefail
cd "$(dirname "$0")/.."
SFT_OUTPUT=${SFT_OUTPUT:-checkpoints/qwen2.5-vl-7b_sft}

echo "== stage 1/2: SFT on expert trajectories -> $SFT_OUTPUT"
if [ -f "$SFT_OUTPUT/train_results.json" ]; then
  echo "   done already ($SFT_OUTPUT/train_results.json): skipped"
else
  OUTPUT=$SFT_OUTPUT SCRIPT=train/sft.py RECIPE=${SFT_RECIPE:-train/recipes/7b/sft.yaml} \
    bash scripts/run_gpu_7b.sh
fi
echo "== stage 2/2: GRPO from the SFT checkpoint"
MODEL=$SFT_OUTPUT RECIPE=${RECIPE:-train/recipes/7b/sft_rl.yaml} exec bash scripts/run_gpu_7b.sh "$@"
