#!/usr/bin/env bash
# Per-step wall time of stock TRL GRPO, GRPO (TGRLTrainer, inject_mode never), TGRL and LUFFY-VL on the
# same tiny batch (CPU, one thread; the tiny recipes' 4 prompts x 8 rollouts, <= 64 tokens). ~2 min.
#   bash scripts/bench.sh                                   # from the weak base if it exists
#   bash scripts/bench.sh --steps 40 --methods grpo tgrl     # any benchmarks/bench_step.py option
# Prints one JSON line per method: median / mean / min seconds per optimizer step after 2 warm-up steps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
checkpoint=checkpoints/tiny_base
[ -d "$checkpoint" ] || checkpoint=checkpoints/tiny-init
[ -d "$checkpoint" ] || { echo "error: no tiny checkpoint; run: make tiny" >&2; exit 2; }
[ -f data/synthetic/train.jsonl ] || { echo "error: data/synthetic missing; run: make data" >&2; exit 2; }
exec "$PY" benchmarks/bench_step.py --checkpoint "$checkpoint" "$@"
