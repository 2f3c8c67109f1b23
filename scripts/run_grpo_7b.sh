#!/usr/bin/env bash
# GRPO baseline on Qwen2.5-VL-7B-Instruct (main table, row "GRPO"): TGRLTrainer with inject_mode never,
# same data, budget and settings as TGRL. 8x H100/A100 80 GB, ~8-10 h on H100 / ~16-24 h on A100 (estimate).
#   bash scripts/run_grpo_7b.sh          DRY_RUN=1 bash scripts/run_grpo_7b.sh
# Environment overrides: see scripts/_launch.sh. Re-running resumes from the last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=${RECIPE:-train/recipes/7b/grpo.yaml} exec bash scripts/run_gpu_7b.sh "$@"
