#!/usr/bin/env bash
# GPU smoke test: 5 minutes on ONE GPU that prove the GPU stack works on this machine, before an 8-GPU
# run of hours. The first thing to run on a new cluster (after scripts/setup_gpu_env.sh):
#   bash scripts/smoke_gpu.sh                 (= make smoke_gpu)
#   DRY_RUN=1 bash scripts/smoke_gpu.sh       print every command, run nothing (works without a GPU)
# It runs the tiny tier (a ~0.66M-parameter Qwen2.5-VL built from code, synthetic scenes) through the code
# paths the 7B runs use, a few steps each, and ends with one line per stage: ok, or failed + why.
#   setup         tiny checkpoint, 64 scenes, oracle expert trajectories filtered with the tiny policy on the GPU
#   teacher_vllm  data_prep/build_teacher_trajectories.py --backend vllm (offline vLLM engine, 8 problems)
#   train         accelerate launch + DeepSpeed ZeRO-2 with one process: train/rl.py (TGRL recipe) in bf16 with
#                 vLLM colocate rollouts; every generation checks vLLM's prompt length against the trainer's
#                 (the image-token check); STEPS optimizer steps
#   eval_vllm     eval/run_lmms_eval.py --backend vllm on the trained checkpoint (16 test scenes)
# It refuses to start (exit 2) without a CUDA GPU or without vLLM. Exit 0 when every stage is ok, else 1.
# Environment: PY (python of the GPU env; default `python`), ACCELERATE (default `accelerate`),
#   WORK (default checkpoints/smoke_gpu; cleared at start), STEPS (3), GPU_MEM (vLLM memory share, 0.3),
#   MODEL (default: the tiny checkpoint built in setup; any Qwen2-VL/2.5-VL folder or hub id works).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
ACCELERATE=${ACCELERATE:-accelerate}
WORK=${WORK:-checkpoints/smoke_gpu}
STEPS=${STEPS:-3}
GPU_MEM=${GPU_MEM:-0.3}
DRY_RUN=${DRY_RUN:-0}
MODEL=${MODEL:-$WORK/tiny-init}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# ---- preflight: a CUDA GPU and vLLM, or nothing starts ------------------------------------------------
problems=()
if ! command -v nvidia-smi >/dev/null 2>&1; then
  problems+=("no GPU: nvidia-smi not found (no NVIDIA driver). Fix: run on a GPU node")
elif [ "$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)" -lt 1 ]; then
  problems+=("no GPU: nvidia-smi lists none. Fix: run on a GPU node / check CUDA_VISIBLE_DEVICES")
fi
if ! command -v "$PY" >/dev/null 2>&1; then
  problems+=("python '$PY' not found. Fix: activate the GPU env (bash scripts/setup_gpu_env.sh; conda activate tgrl) or set PY=")
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1 ||
    problems+=("no GPU: torch.cuda.is_available() is False for $PY. Fix: a CUDA build of torch (environment.yml) on a GPU node")
  "$PY" -c "import vllm" >/dev/null 2>&1 ||
    problems+=("no vLLM: 'import vllm' fails for $PY. Fix: install the GPU env (bash scripts/setup_gpu_env.sh)")
fi
if [ ${#problems[@]} -gt 0 ]; then
  for p in "${problems[@]}"; do echo "smoke_gpu: $p" >&2; done
  if [ "$DRY_RUN" != 1 ]; then
    echo "smoke_gpu: refused, nothing was run (DRY_RUN=1 prints the commands)" >&2
    exit 2
  fi
  echo "smoke_gpu: dry run: the findings above would stop a real run" >&2
fi

# ---- the stages --------------------------------------------------------------------------------------
run() { # print the exact command; run it unless DRY_RUN=1
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  [ "$DRY_RUN" = 1 ] || "$@"
}

stage_setup() {
  run "$PY" data_prep/build_tiny_model.py --out "$WORK/tiny-init" --size S --seed 0
  run "$PY" data_prep/make_synthetic.py --out "$WORK/data" --n-train 64 --n-test 16 --seed 0
  run "$PY" data_prep/build_teacher_trajectories.py --data "$WORK/data/train.jsonl" --out "$WORK/oracle" \
    --backend oracle --k 2 --seed 0 --no-progress
  run "$PY" data_prep/filter_trajectories.py --data "$WORK/data/train.jsonl" \
    --trajectories "$WORK/oracle/trajectories.jsonl" --policy "$MODEL" --out "$WORK/experts" \
    --max-completion-tokens 64 --device cuda --no-progress
}

stage_teacher_vllm() {
  run "$PY" data_prep/build_teacher_trajectories.py --data "$WORK/data/train.jsonl" --out "$WORK/teacher_vllm" \
    --backend vllm --model "$MODEL" --k 2 --limit 8 --max-tokens 32 --max-model-len 512 \
    --gpu-memory-utilization "$GPU_MEM" --enforce-eager --no-progress
}

stage_train() {
  run "$ACCELERATE" launch --config_file train/accelerate/zero2.yaml \
    --deepspeed_config_file train/deepspeed/zero2.json --num_machines 1 --num_processes 1 --machine_rank 0 \
    --main_process_port "${MASTER_PORT:-29517}" \
    train/rl.py --config train/recipes/tiny/tgrl.yaml "model_name_or_path=$MODEL" \
    "train_file=$WORK/experts/train.jsonl" "output_dir=$WORK/rl" "max_steps=$STEPS" per_device_train_batch_size=16 \
    use_cpu=false bf16=true dtype=bfloat16 use_vllm=true vllm_mode=colocate \
    "vllm_gpu_memory_utilization=$GPU_MEM" vllm_max_model_length=512 vllm_enable_sleep_mode=false \
    save_strategy=no logging_steps=1 report_to=none
}

stage_eval_vllm() {
  run "$PY" eval/run_lmms_eval.py --model "$WORK/rl" --suite tiny --backend vllm --dtype bfloat16 \
    --jsonl "synthetic_test=$WORK/data/test.jsonl" --limit 16 --out "$WORK/eval" --summary "$WORK/summary.jsonl" \
    --run smoke_gpu --max-model-len 512 --gpu-memory-utilization "$GPU_MEM" --force
}

declare -A STATUS=() DETAIL=()
ORDER=()
why() { # the most telling line of a failed stage's log
  local line
  line=$(grep -E "Error|error:|FAIL|Exception|Traceback|No such|not found" "$1" | grep -v '^ *File ' | tail -n 1 || true)
  [ -n "$line" ] || line=$(grep -v '^[[:space:]]*$' "$1" | tail -n 1 || true)
  printf '%s' "${line:0:240}"
}

stage() { # stage NAME NEEDS: run stage_NAME, its output in $WORK/logs/NAME.log
  local name=$1 needs=$2 log=$WORK/logs/$1.log start=$SECONDS
  ORDER+=("$name")
  echo "== $name" >&2
  if [ "$DRY_RUN" = 1 ]; then
    "stage_$name"
    STATUS[$name]="dry run"
    return 0
  fi
  if [ -n "$needs" ] && [ "${STATUS[$needs]:-}" != ok ]; then
    STATUS[$name]=skipped
    DETAIL[$name]=" (needs $needs)"
    return 0
  fi
  if ("stage_$name") >"$log" 2>&1; then
    STATUS[$name]=ok
    DETAIL[$name]=" ($((SECONDS - start)) s)"
  else
    STATUS[$name]=failed
    DETAIL[$name]=": $(why "$log") (log: $log)"
  fi
}

if [ "$DRY_RUN" != 1 ]; then
  rm -rf "$WORK"
  mkdir -p "$WORK/logs"
fi
stage setup ""
stage teacher_vllm setup
stage train setup
stage eval_vllm train

# ---- one line per stage ----------------------------------------------------------------------------
failed=0
for name in "${ORDER[@]}"; do
  echo "smoke_gpu: $(printf '%-13s' "$name") ${STATUS[$name]}${DETAIL[$name]:-}"
  case ${STATUS[$name]} in ok | "dry run") ;; *) failed=1 ;; esac
done
exit "$failed"
