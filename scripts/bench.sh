#!/usr/bin/env bash
# Performance benchmarks of the tiny tier (CPU, one torch thread; benchmarks/README.md):
#   1. per-step time of stock TRL GRPOTrainer, our GRPO, TGRL and LUFFY-VL on the same tiny batch, split
#      into generate / score / token pass / other experience / update, 3 interleaved rounds, with the
#      ratios against the targets (our GRPO <= 1.05 x stock, TGRL <= 1.15 x GRPO);
#   2. eval throughput (lmms-eval runner) and teacher throughput (oracle and hf backends);
#   peak RSS of every measurement (each runs in its own process).
#
#   bash scripts/bench.sh                       # ~5 min on an idle 2-core machine
#   QUICK=1 bash scripts/bench.sh               # one round, a few steps (~2 min): does it run?
#   STEP_ARGS="--rounds 5 --steps 30" TP_ARGS="--repeats 5" bash scripts/bench.sh
#   bash scripts/bench.sh --no-reuse-base       # extra args go to both benchmarks (asset options)
#
# The weak base: checkpoints/tiny_repro/base when reproduce_tiny.sh has finished it, else built in
# $WORK (300 SFT warm-up steps on grounded oracle traces, under a minute, reused by later runs).
# Output: JSON lines and two tables on stdout; $OUT/step.json, $OUT/throughput.json and $OUT/bench.json
# (both merged). Numbers taken while another job uses the cores are noisy: compare the CPU ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
OUT=${OUT:-.cache/bench}
WORK=${WORK:-$OUT/work}
STEP_ARGS=${STEP_ARGS:-}
TP_ARGS=${TP_ARGS:-}
if [ "${QUICK:-0}" = "1" ]; then
  STEP_ARGS="--rounds 1 --steps 4 --warmup 1 $STEP_ARGS"
  TP_ARGS="--repeats 1 --eval-n 32 --hf-n 8 $TP_ARGS"
fi
mkdir -p "$OUT"

echo "== step time: stock TRL GRPO vs our GRPO vs TGRL vs LUFFY-VL"
# shellcheck disable=SC2086  # STEP_ARGS / TP_ARGS are word lists on purpose
"$PY" benchmarks/bench_step.py --work "$WORK" --out "$OUT/step.json" $STEP_ARGS "$@"
echo
echo "== eval and teacher throughput"
# shellcheck disable=SC2086
"$PY" benchmarks/bench_throughput.py --work "$WORK" --out "$OUT/throughput.json" $TP_ARGS "$@"

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
parts = {name: json.loads((out / f"{name}.json").read_text()) for name in ("step", "throughput")}
merged = {"measurements": [m for part in parts.values() for m in part["measurements"]], **parts}
(out / "bench.json").write_text(json.dumps(merged, indent=1) + "\n")
print(f"\nall measurements: {out / 'bench.json'}")
EOF
