#!/usr/bin/env bash
# GPU tier: expert trajectories for the 7B runs: teacher -> (merge shards) -> filter (docs/design.md#51-teachers,
# docs/design.md#52-filtering, docs/design.md#81-launch).
#
#   bash scripts/build_teacher_7b.sh                                   # vLLM offline, Qwen2.5-VL-72B-Instruct, TP 8
#   TEACHER_URL=http://node:8000/v1 bash scripts/build_teacher_7b.sh    # any OpenAI-compatible endpoint
#     (serve it with the same pixel budget: vllm serve MODEL --max-model-len 8192
#      --mm-processor-kwargs '{"size": {"shortest_edge": 262144, "longest_edge": 1003520}}')
#   NUM_SHARDS=4 SHARD_INDEX=$i bash scripts/build_teacher_7b.sh        # on node i of 4 (teacher stage only) ...
#   NUM_SHARDS=4 STAGE=finish bash scripts/build_teacher_7b.sh          # ... then once: merge + filter
#   DRY_RUN=1 bash scripts/build_teacher_7b.sh                          # print the exact commands, run nothing
#
# Hardware: one node of 8x A100/H100 80GB per vLLM teacher (72B in bf16 needs TP 8, or TP 4 at shorter
# context); the filter's F3 pass runs the 7B policy on one GPU. Time: not measured on GPUs by us; the
# teacher dominates (K=4 x 38,870 ViRL39K problems x up to MAX_TOKENS tokens). Resumable: rerun the same
# command after a crash or preemption; finished (id, sample) pairs are skipped.
# Inputs: DATA from data_prep/convert_virl39k.py (or any problem JSONL). Outputs: OUT (trajectories +
# manifest), TRAIN_OUT/train.jsonl = the train_file of the 7B TGRL recipes.
# The API key (endpoint mode) is read by the Python process from the variable named by API_KEY_ENV; it is
# never passed on a command line, printed or written.
set -euo pipefail
cd "$(dirname "$0")/.."

# ---- settings (environment overrides) --------------------------------------------------------------
DATA=${DATA:-data/virl39k/train.jsonl}
OUT=${OUT:-data/teacher/qwen2.5-vl-72b}
TRAIN_OUT=${TRAIN_OUT:-data/tgrl/virl39k}
TEACHER_MODEL=${TEACHER_MODEL:-Qwen/Qwen2.5-VL-72B-Instruct}
TEACHER_URL=${TEACHER_URL:-}
API_KEY_ENV=${API_KEY_ENV:-OPENAI_API_KEY}
MAX_CONCURRENCY=${MAX_CONCURRENCY:-64}
TP=${TP:-8}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-8192}
# The policy's pixel budget (tgrl/pixels.py DEFAULT_BUDGET = the 7B recipes' min/max_pixels): without it a
# large image becomes up to 16,384 tokens under the checkpoint's own bounds, more than MAX_MODEL_LEN.
MIN_PIXELS=${MIN_PIXELS:-262144}
MAX_PIXELS=${MAX_PIXELS:-1003520}
K=${K:-4}                               # docs/design.md#51-teachers: 4 expert samples per prompt
TEMPERATURE=${TEMPERATURE:-1.0}
TOP_P=${TOP_P:-1.0}
MAX_TOKENS=${MAX_TOKENS:-4096}          # teacher budget; longer traces are rejected by F2, never cut
SEED=${SEED:-0}
NUM_SHARDS=${NUM_SHARDS:-1}
SHARD_INDEX=${SHARD_INDEX:-0}
POLICY=${POLICY:-Qwen/Qwen2.5-VL-7B-Instruct}   # the initial policy: F2 tokenizer, F3 log-probs
MAX_COMPLETION_TOKENS=${MAX_COMPLETION_TOKENS:-2048}  # = max_completion_length of the 7B recipes
FILTER_DEVICE=${FILTER_DEVICE:-cuda}
FILTER_BATCH_SIZE=${FILTER_BATCH_SIZE:-8}
STAGE=${STAGE:-all}                     # teacher | finish (merge + filter) | all
EXTRA_TEACHER_ARGS=${EXTRA_TEACHER_ARGS:-}
EXTRA_FILTER_ARGS=${EXTRA_FILTER_ARGS:-}
DRY_RUN=${DRY_RUN:-0}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}

fail() { echo "error: $*" >&2; exit 2; }
case "$STAGE" in teacher|finish|all) ;; *) fail "STAGE must be teacher, finish or all (got '$STAGE')";; esac
if [ "$NUM_SHARDS" -gt 1 ] && [ "$STAGE" = all ]; then
  STAGE=teacher  # merging and filtering need every shard: run STAGE=finish once they are all done
fi

# ---- the commands ----------------------------------------------------------------------------------
TEACHER_CMD=("$PYTHON" data_prep/build_teacher_trajectories.py --data "$DATA" --out "$OUT" --k "$K"
  --temperature "$TEMPERATURE" --top-p "$TOP_P" --max-tokens "$MAX_TOKENS" --seed "$SEED"
  --num-shards "$NUM_SHARDS" --shard-index "$SHARD_INDEX" --model "$TEACHER_MODEL")
if [ -n "$TEACHER_URL" ]; then
  TEACHER_CMD+=(--backend openai --base-url "$TEACHER_URL" --api-key-env "$API_KEY_ENV"
    --max-concurrency "$MAX_CONCURRENCY")
else
  TEACHER_CMD+=(--backend vllm --tensor-parallel-size "$TP" --max-model-len "$MAX_MODEL_LEN"
    --min-pixels "$MIN_PIXELS" --max-pixels "$MAX_PIXELS")
fi
# shellcheck disable=SC2206
[ -n "$EXTRA_TEACHER_ARGS" ] && TEACHER_CMD+=($EXTRA_TEACHER_ARGS)
MERGE_CMD=("$PYTHON" data_prep/merge_shards.py --out "$OUT" --data "$DATA")
FILTER_CMD=("$PYTHON" data_prep/filter_trajectories.py --data "$DATA" --trajectories "$OUT/trajectories.jsonl"
  --policy "$POLICY" --out "$TRAIN_OUT" --max-completion-tokens "$MAX_COMPLETION_TOKENS"
  --dtype bfloat16 --device "$FILTER_DEVICE" --batch-size "$FILTER_BATCH_SIZE"
  --min-pixels "$MIN_PIXELS" --max-pixels "$MAX_PIXELS")
# shellcheck disable=SC2206
[ -n "$EXTRA_FILTER_ARGS" ] && FILTER_CMD+=($EXTRA_FILTER_ARGS)

show() { printf '%q ' "$@"; echo; }
if [ "$DRY_RUN" = 1 ]; then
  echo "# build_teacher_7b.sh: stage=$STAGE shards=$NUM_SHARDS (DRY_RUN: nothing runs)"
  if [ "$STAGE" != finish ]; then show "${TEACHER_CMD[@]}"; fi
  if [ "$STAGE" != teacher ]; then
    if [ "$NUM_SHARDS" -gt 1 ]; then show "${MERGE_CMD[@]}"; fi
    show "${FILTER_CMD[@]}"
  fi
  exit 0
fi

# ---- preflight -------------------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null || fail "python '$PYTHON' not found. Fix: activate the GPU env (scripts/setup_gpu_env.sh)"
[ -f "$DATA" ] || fail "$DATA not found. Fix: python data_prep/convert_virl39k.py --hub --out $(dirname "$DATA")"
n_gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
if [ "$STAGE" != finish ]; then
  if [ -n "$TEACHER_URL" ]; then
    [ -n "${!API_KEY_ENV:-}" ] || echo "warning: \$$API_KEY_ENV is empty: requests go without a key (fine for a local vllm serve)" >&2
  else
    "$PYTHON" -c "import vllm" 2>/dev/null || fail "vLLM is not importable. Fix: install the GPU env (environment.yml) or set TEACHER_URL"
    [ "$n_gpus" -ge "$TP" ] || fail "tensor parallel $TP needs $TP GPUs, found $n_gpus. Fix: TP=$n_gpus (if the model fits) or another node"
  fi
fi
if [ "$STAGE" != teacher ] && [ "$FILTER_DEVICE" = cuda ] && [ "$n_gpus" -lt 1 ]; then
  fail "the filter's F3 pass runs the policy on a GPU; none found. Fix: FILTER_DEVICE=cpu (slow) or a GPU node"
fi
echo "[build_teacher_7b] stage=$STAGE teacher=$TEACHER_MODEL ${TEACHER_URL:+via $TEACHER_URL }data=$DATA out=$OUT shards=$NUM_SHARDS gpus=$n_gpus"

# ---- run -------------------------------------------------------------------------------------------
if [ "$STAGE" != finish ]; then
  show "${TEACHER_CMD[@]}"
  "${TEACHER_CMD[@]}"
fi
if [ "$STAGE" != teacher ]; then
  if [ "$NUM_SHARDS" -gt 1 ]; then show "${MERGE_CMD[@]}"; "${MERGE_CMD[@]}"; fi
  show "${FILTER_CMD[@]}"
  "${FILTER_CMD[@]}"
  echo "[build_teacher_7b] training set: $TRAIN_OUT/train.jsonl (counts per filter in $TRAIN_OUT/manifest.json)"
elif [ "$NUM_SHARDS" -gt 1 ]; then
  echo "[build_teacher_7b] shard $SHARD_INDEX/$NUM_SHARDS done; when every shard is: NUM_SHARDS=$NUM_SHARDS STAGE=finish bash $0"
fi
