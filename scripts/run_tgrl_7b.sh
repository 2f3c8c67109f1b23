#!/usr/bin/env bash
# TGRL on Qwen2.5-VL-7B-Instruct (main table, row "TGRL"): 8x H100/A100 80 GB, ~8-10 h on H100 / ~16-24 h on A100 (estimate).
#   bash scripts/run_tgrl_7b.sh                        # one node, ZeRO-2, vLLM colocate
#   ZERO=3 NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash scripts/run_tgrl_7b.sh   (and NODE_RANK=1 on node 2)
#   DRY_RUN=1 bash scripts/run_tgrl_7b.sh               # print the command only
# Extra key=value arguments override the recipe (e.g. expert_token_weight=none). Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=${RECIPE:-train/recipes/7b/tgrl.yaml} exec bash scripts/run_gpu_7b.sh "$@"
