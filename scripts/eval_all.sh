#!/usr/bin/env bash
# Evaluate every checkpoint x every task of a suite, skipping finished pairs, then make the tables.
#
#   bash scripts/eval_all.sh                                  # tiny suite, checkpoints found under checkpoints/
#   SUITE=paper MANIFEST=results/runs_7b.jsonl bash scripts/eval_all.sh     # 7B: every GPU of the node
#   DRY_RUN=1 SUITE=paper NUM_GPUS=8 bash scripts/eval_all.sh              # print the commands only
#
# Checkpoints: CHECKPOINTS (space-separated paths or hub ids) > MANIFEST (JSONL rows {"checkpoint", "run",
# "method", "seed"}) > every model folder under CHECKPOINTS_DIR (trainer intermediates checkpoint-N skipped;
# method/seed from an optional tgrl_run.json beside the weights).
# GPUs: BACKEND=hf with NUM_GPUS>1 runs each checkpoint under `accelerate launch` (data parallel: each
# process answers a share of the documents); BACKEND=vllm runs NUM_GPUS/TP workers side by side, each
# on its own TP GPUs, sharing out the checkpoints. NUM_GPUS=0 runs on the CPU.
# Resume: eval/run_lmms_eval.py skips (checkpoint, task, settings) pairs already in SUMMARY, so a killed
# run is restarted with the same command.
# Time: tiny suite, one checkpoint, 1,000 items on a 2-core CPU: ~36 s (21 s of it generation).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=${SUITE:-tiny}
CHECKPOINTS=${CHECKPOINTS:-}
MANIFEST=${MANIFEST:-}
CHECKPOINTS_DIR=${CHECKPOINTS_DIR:-checkpoints}
OUT=${OUT:-results/raw}
SUMMARY=${SUMMARY:-results/summary.jsonl}
TABLES_OUT=${TABLES_OUT:-results/tables}
NUM_GPUS=${NUM_GPUS:-auto}
TP=${TP:-1}
BACKEND=${BACKEND:-}
LIMIT=${LIMIT:-}
BATCH_SIZE=${BATCH_SIZE:-}    # e.g. BATCH_SIZE=1 with BACKEND=hf on the paper suite (its 256 is for vLLM)
EXTRA_ARGS=${EXTRA_ARGS:-}
DRY_RUN=${DRY_RUN:-0}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}

if [ "$NUM_GPUS" = auto ]; then
  NUM_GPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
fi
[ -n "$BACKEND" ] || BACKEND=$($PYTHON eval/run_lmms_eval.py --suite "$SUITE" --print-setting backend)
if [ "$BACKEND" = vllm ] && [ "$NUM_GPUS" -lt 1 ]; then
  echo "error: suite $SUITE uses the vllm backend, which needs GPUs (found none). Fix: BACKEND=hf or run on a GPU node" >&2
  exit 2
fi

# ---- checkpoints: path<TAB>run<TAB>method<TAB>seed per line
list_args=(--list-checkpoints --checkpoints-dir "$CHECKPOINTS_DIR")
for c in $CHECKPOINTS; do list_args+=(--checkpoint "$c"); done
[ -n "$MANIFEST" ] && list_args+=(--manifest "$MANIFEST")
mapfile -t ENTRIES < <($PYTHON eval/run_lmms_eval.py "${list_args[@]}")
if [ "${#ENTRIES[@]}" -eq 0 ]; then
  echo "error: no checkpoints (CHECKPOINTS, MANIFEST or model folders under $CHECKPOINTS_DIR). Fix: make tiny, or train first" >&2
  exit 2
fi
echo "[eval_all] suite=$SUITE backend=$BACKEND gpus=$NUM_GPUS checkpoints=${#ENTRIES[@]} summary=$SUMMARY"

# ---- one runner command per checkpoint (the runner loops over the suite's tasks)
runner_args() {  # entry line -> the runner's arguments
  local ckpt run method seed
  IFS=$'\t' read -r ckpt run method seed <<< "$1"
  local a=(eval/run_lmms_eval.py --model "$ckpt" --suite "$SUITE" --run "$run" --method "$method"
           --out "$OUT" --summary "$SUMMARY" --backend "$BACKEND")
  [ -n "$seed" ] && a+=(--seed "$seed")
  [ -n "$LIMIT" ] && a+=(--limit "$LIMIT")
  [ -n "$BATCH_SIZE" ] && a+=(--batch-size "$BATCH_SIZE")
  [ "$BACKEND" = vllm ] && a+=(--tensor-parallel-size "$TP")
  [ "$NUM_GPUS" -eq 0 ] && a+=(--device cpu)
  # shellcheck disable=SC2206
  [ -n "$EXTRA_ARGS" ] && a+=($EXTRA_ARGS)
  printf '%q ' "${a[@]}"
}

run_cmd() {  # print, and run unless DRY_RUN=1
  echo "+ $*"
  [ "$DRY_RUN" = 1 ] || eval "$@"
}

if [ "$BACKEND" = vllm ] && [ "$NUM_GPUS" -gt "$TP" ]; then
  WORKERS=$((NUM_GPUS / TP))
  pids=()
  for ((w = 0; w < WORKERS; w++)); do
    gpus=$(seq -s, $((w * TP)) $((w * TP + TP - 1)))
    cmds=()
    for ((i = w; i < ${#ENTRIES[@]}; i += WORKERS)); do
      cmds+=("CUDA_VISIBLE_DEVICES=$gpus $PYTHON $(runner_args "${ENTRIES[$i]}")")
    done
    [ "${#cmds[@]}" -gt 0 ] || continue
    if [ "$DRY_RUN" = 1 ]; then
      for c in "${cmds[@]}"; do echo "+ [worker $w] $c"; done
    else
      ( for c in "${cmds[@]}"; do echo "+ [worker $w] $c"; eval "$c" || exit 1; done ) &
      pids+=($!)
    fi
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || { echo "error: at least one evaluation worker failed (see above)" >&2; exit 1; }
else
  for entry in "${ENTRIES[@]}"; do
    if [ "$BACKEND" = hf ] && [ "$NUM_GPUS" -gt 1 ]; then
      run_cmd "$PYTHON -m accelerate.commands.launch --multi_gpu --num_processes $NUM_GPUS $(runner_args "$entry")"
    else
      run_cmd "$PYTHON $(runner_args "$entry")"
    fi
  done
fi

# ---- tables (eval/make_tables.py reads every summary row; tables.yaml picks rows by suite and decoding)
if [ -f eval/make_tables.py ]; then
  run_cmd "$PYTHON eval/make_tables.py --summary $(printf '%q' "$SUMMARY") --tables eval/tables.yaml --reported eval/reported.csv --out $(printf '%q' "$TABLES_OUT")"
fi
