#!/usr/bin/env bash
# GPU smoke test: the tiny tier (a ~0.66M-parameter Qwen2.5-VL built from code, synthetic scenes) through the
# code paths AND the settings of the 7B runs, a few steps each, on one GPU, before an 8-GPU run of hours.
# The first thing to run on a new cluster (after scripts/setup_gpu_env.sh):
#   bash scripts/smoke_gpu.sh                    (= make smoke_gpu) one GPU, ZeRO-2, vLLM
#   NUM_GPUS=2 bash scripts/smoke_gpu.sh         the train stage in 2 processes (expert rows across ranks)
#   ZERO=3 bash scripts/smoke_gpu.sh             the train stage under DeepSpeed ZeRO-3
#   SMOKE_VLLM=0 bash scripts/smoke_gpu.sh       every stage that needs no vLLM (HF generation), for a
#                                                machine where vLLM cannot be installed
#   SMOKE_DEVICE=cpu bash scripts/smoke_gpu.sh   the SMOKE_VLLM=0 stages on CPU (gloo, zeroN_cpu.yaml): CI runs
#                                                it with NUM_GPUS=2, ZERO=2 and 3 (tests/test_launchers.py, slow)
#   DRY_RUN=1 bash scripts/smoke_gpu.sh          print the 7B keys and every command, run nothing
# Stages (each one's log in $WORK/logs/NAME.log):
#   setup     tiny checkpoint, 64 scenes, oracle expert trajectories filtered with the tiny policy
#   teacher   data_prep/build_teacher_trajectories.py with the tiny model as the teacher: --backend vllm
#             (offline engine), or --backend hf with SMOKE_VLLM=0
#   train     accelerate launch + DeepSpeed ZeRO-$ZERO in NUM_GPUS processes: train/rl.py with the 7B TGRL
#             recipe (train/recipes/7b/tgrl.yaml: bf16, vLLM colocate with sleep mode, gradient checkpointing,
#             grad_share_every as there, 4 rollouts per micro-batch, the 7B pixel budget); only the sizes are
#             the tiny tier's (model, data, steps, batch, lengths). STEPS optimizer steps saving a checkpoint,
#             then a second launch resumes from it for STEPS more. Checked afterwards (metrics.jsonl): the
#             resumed run logs steps STEPS+1..2*STEPS, and every expert row scores correct (the oracle trace
#             of its own prompt: expert rows stayed with their prompts across ranks)
#   eval      eval/run_lmms_eval.py on the trained checkpoint (16 test scenes): --backend vllm, or hf
# No time is promised here: the last lines give each stage's measured seconds and the total, then what the
# run covered and what it did not. Exit 0 when every stage is ok, 1 when one failed, 2 when the preflight
# refuses (no GPU, a driver older than the torch build needs, no vLLM while SMOKE_VLLM=1).
# Environment: PY (python of the GPU env; default `python`), ACCELERATE (default `accelerate`),
#   WORK (default checkpoints/smoke_gpu; cleared at start), STEPS (2, per launch), GPU_MEM (vLLM memory
#   share, 0.3), MODEL (default: the tiny checkpoint built in setup), MASTER_PORT (29517).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
ACCELERATE=${ACCELERATE:-accelerate}
source scripts/_launch.sh # recipe_value, driver_finding
WORK=${WORK:-checkpoints/smoke_gpu}
STEPS=${STEPS:-2}
GPU_MEM=${GPU_MEM:-0.3}
DRY_RUN=${DRY_RUN:-0}
MODEL=${MODEL:-$WORK/tiny-init}
NUM_GPUS=${NUM_GPUS:-1}
ZERO=${ZERO:-2}
SMOKE_DEVICE=${SMOKE_DEVICE:-cuda}
SMOKE_VLLM=${SMOKE_VLLM:-$([ "$SMOKE_DEVICE" = cpu ] && echo 0 || echo 1)}
RECIPE=train/recipes/7b/tgrl.yaml

# ---- preflight: the settings, a CUDA GPU with a driver this torch can use, vLLM when asked for ---------
problems=()
case $ZERO in 2 | 3) ;; *) problems+=("ZERO=$ZERO: use 2 or 3") ;; esac
case $SMOKE_DEVICE in cuda | cpu) ;; *) problems+=("SMOKE_DEVICE=$SMOKE_DEVICE: use cuda or cpu") ;; esac
if [ "$SMOKE_DEVICE" = cpu ]; then
  [ "$SMOKE_VLLM" = 0 ] || problems+=("SMOKE_DEVICE=cpu needs SMOKE_VLLM=0 (vLLM runs on GPUs only)")
  accelerate_config=train/accelerate/zero${ZERO}_cpu.yaml
else
  accelerate_config=train/accelerate/zero$ZERO.yaml
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    problems+=("no GPU: nvidia-smi not found (no NVIDIA driver). Fix: run on a GPU node (or SMOKE_DEVICE=cpu)")
  else
    n_gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    if [ "$n_gpus" -lt 1 ]; then
      problems+=("no GPU: nvidia-smi lists none. Fix: run on a GPU node / check CUDA_VISIBLE_DEVICES")
    elif [ "$n_gpus" -lt "$NUM_GPUS" ]; then
      problems+=("NUM_GPUS=$NUM_GPUS but nvidia-smi lists $n_gpus GPU(s). Fix: NUM_GPUS=$n_gpus")
    fi
  fi
fi
if ! command -v "$PY" >/dev/null 2>&1; then
  problems+=("python '$PY' not found. Fix: activate the GPU env (bash scripts/setup_gpu_env.sh; conda activate tgrl) or set PY=")
elif [ "$SMOKE_DEVICE" = cuda ]; then
  driver=$(driver_finding)
  [ -z "$driver" ] || problems+=("$driver")
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1 ||
    problems+=("no GPU: torch.cuda.is_available() is False for $PY. Fix: the GPU env's torch (environment.yml: torch 2.13.0, a CUDA 13 build, needs NVIDIA driver >= 580) on a GPU node")
  if [ "$SMOKE_VLLM" = 1 ]; then
    "$PY" -c "import vllm" >/dev/null 2>&1 ||
      problems+=("no vLLM: 'import vllm' fails for $PY. Fix: install the GPU env (bash scripts/setup_gpu_env.sh), or SMOKE_VLLM=0 for the stages without vLLM")
  fi
fi
if [ ${#problems[@]} -gt 0 ]; then
  for p in "${problems[@]}"; do echo "smoke_gpu: $p" >&2; done
  if [ "$DRY_RUN" != 1 ]; then
    echo "smoke_gpu: refused, nothing was run (DRY_RUN=1 prints the commands)" >&2
    exit 2
  fi
  echo "smoke_gpu: dry run: the findings above would stop a real run" >&2
fi

# ---- the 7B keys the train stage runs, said up front ------------------------------------------------
seven_b_keys=(vllm_enable_sleep_mode gradient_checkpointing grad_share_every per_device_train_batch_size
  num_generations n_exp min_pixels max_pixels dtype bf16 attn_implementation freeze_vision_tower
  vllm_importance_sampling_correction save_strategy)
keys=""
for key in "${seven_b_keys[@]}"; do keys+=" $key=$(recipe_value "$RECIPE" "$key")"; done
echo "# train: the keys of $RECIPE (ZeRO-$ZERO, $NUM_GPUS process(es), $SMOKE_DEVICE):$keys"

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
    --max-completion-tokens 64 --device "$SMOKE_DEVICE" --no-progress
}

stage_teacher_vllm() {
  run "$PY" data_prep/build_teacher_trajectories.py --data "$WORK/data/train.jsonl" --out "$WORK/teacher_vllm" \
    --backend vllm --model "$MODEL" --k 2 --limit 8 --max-tokens 32 --max-model-len 512 \
    --gpu-memory-utilization "$GPU_MEM" --enforce-eager --no-progress
}

stage_teacher_hf() {
  run "$PY" data_prep/build_teacher_trajectories.py --data "$WORK/data/train.jsonl" --out "$WORK/teacher_hf" \
    --backend hf --model "$MODEL" --device "$SMOKE_DEVICE" --k 2 --limit 8 --max-tokens 32 --no-progress
}

train_launch() { # train_launch KEY=VALUE...: one accelerate launch of the 7B recipe on the tiny tier
  local device_keys=(use_cpu=false "use_vllm=$([ "$SMOKE_VLLM" = 1 ] && echo true || echo false)")
  [ "$SMOKE_DEVICE" = cpu ] && device_keys=(use_cpu=true bf16=false dtype=float32 use_vllm=false)
  run "$ACCELERATE" launch --config_file "$accelerate_config" \
    --deepspeed_config_file "train/deepspeed/zero$ZERO.json" --num_machines 1 --num_processes "$NUM_GPUS" \
    --machine_rank 0 --main_process_port "${MASTER_PORT:-29517}" \
    train/rl.py --config "$RECIPE" "model_name_or_path=$MODEL" "train_file=$WORK/experts/train.jsonl" \
    "output_dir=$WORK/rl" gradient_accumulation_steps=2 steps_per_generation=4 max_completion_length=64 \
    vllm_max_model_length=1024 "vllm_gpu_memory_utilization=$GPU_MEM" "save_steps=$STEPS" report_to=none \
    "${device_keys[@]}" "$@"
}

check_train() { # the resumed run continued the saved one; expert rows are their prompts' correct traces
  printf '# check %s/rl/metrics.jsonl: steps 1..%s, expert rows correct\n' "$WORK" $((2 * STEPS))
  [ "$DRY_RUN" = 1 ] && return 0
  grep -q "resuming from .*checkpoint-$STEPS" "$WORK/logs/train.log" ||
    { echo "error: the second launch did not resume from checkpoint-$STEPS" >&2; return 1; }
  "$PY" - "$WORK/rl/metrics.jsonl" $((2 * STEPS)) <<'PYCODE'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1])]
steps = [r["step"] for r in rows]
if steps != list(range(1, int(sys.argv[2]) + 1)):
    sys.exit(f"error: metrics.jsonl steps {steps}: save + resume should give 1..{sys.argv[2]}")
expert = [r["accuracy/expert"] for r in rows if "accuracy/expert" in r]
if not expert or min(expert) < 1.0:
    sys.exit(f"error: accuracy/expert {expert}: an expert row is not its own prompt's (correct) oracle trace")
print(f"check: steps {steps}, accuracy/expert {expert}")
PYCODE
}

stage_train() {
  train_launch "max_steps=$STEPS"
  train_launch "max_steps=$((2 * STEPS))" resume_from_checkpoint=auto
  check_train
}

stage_eval() {
  local backend_args=(--backend vllm --dtype bfloat16 --max-model-len 1024 --gpu-memory-utilization "$GPU_MEM")
  [ "$SMOKE_VLLM" = 1 ] || backend_args=(--backend hf --device "$SMOKE_DEVICE")
  run "$PY" eval/run_lmms_eval.py --model "$WORK/rl" --suite tiny "${backend_args[@]}" \
    --jsonl "synthetic_test=$WORK/data/test.jsonl" --limit 16 --out "$WORK/eval" --summary "$WORK/summary.jsonl" \
    --run smoke_gpu --force
}

declare -A STATUS=() DETAIL=() COVERS=()
ORDER=()
why() { # the most telling line of a failed stage's log
  local line
  line=$(grep -E "Error|error:|FAIL|Exception|Traceback|No such|not found" "$1" | grep -v '^ *File ' | tail -n 1 || true)
  [ -n "$line" ] || line=$(grep -v '^[[:space:]]*$' "$1" | tail -n 1 || true)
  printf '%s' "${line:0:240}"
}

TOTAL=0
stage() { # stage NAME FUNCTION NEEDS COVERS: run FUNCTION, its output in $WORK/logs/NAME.log, timed
  local name=$1 function=$2 needs=$3 log=$WORK/logs/$1.log start=$SECONDS
  ORDER+=("$name")
  COVERS[$name]=$4
  echo "== $name" >&2
  if [ "$DRY_RUN" = 1 ]; then
    "$function"
    STATUS[$name]="dry run"
    return 0
  fi
  if [ -n "$needs" ] && [ "${STATUS[$needs]:-}" != ok ]; then
    STATUS[$name]=skipped
    DETAIL[$name]=" (needs $needs)"
    return 0
  fi
  local rc=0
  # not `if (...)`: set -e is off inside an if condition, and a stage must stop at its first failing command
  set +e
  (
    set -e
    "$function"
  ) >"$log" 2>&1
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then
    STATUS[$name]=ok
    DETAIL[$name]=" ($((SECONDS - start)) s)"
  else
    STATUS[$name]=failed
    DETAIL[$name]=": $(why "$log") (log: $log)"
  fi
  TOTAL=$((TOTAL + SECONDS - start))
}

if [ "$DRY_RUN" != 1 ]; then
  rm -rf "$WORK"
  mkdir -p "$WORK/logs"
fi
if [ "$SMOKE_VLLM" = 1 ]; then
  generation=vllm rollouts="vLLM colocate rollouts with sleep mode"
else
  generation=hf rollouts="HF generate rollouts"
fi
processes=$([ "$NUM_GPUS" = 1 ] && echo "1 process" || echo "$NUM_GPUS processes, expert rows across ranks")
precision=$([ "$SMOKE_DEVICE" = cuda ] && echo bf16 || echo "fp32 on CPU")
stage setup stage_setup "" "tiny model, data, oracle experts filtered by the policy ($SMOKE_DEVICE)"
stage "teacher_$generation" "stage_teacher_$generation" setup "teacher generation, $generation backend"
stage train stage_train setup "the 7B recipe's keys, ZeRO-$ZERO, $processes, $precision, $rollouts, gradient checkpointing, checkpoint save + resume"
stage "eval_$generation" stage_eval train "eval of the trained checkpoint, $generation backend"

# ---- one line per stage (what it covers), the measured total, and what this run did not cover -------
failed=0
for name in "${ORDER[@]}"; do
  echo "smoke_gpu: $(printf '%-13s' "$name") ${STATUS[$name]}${DETAIL[$name]:-} - ${COVERS[$name]}"
  case ${STATUS[$name]} in ok | "dry run") ;; *) failed=1 ;; esac
done
[ "$DRY_RUN" = 1 ] || echo "smoke_gpu: total         ${TOTAL} s, measured by the stages' own timers ($SMOKE_DEVICE, $NUM_GPUS process(es))"
not_covered=()
[ "$NUM_GPUS" -gt 1 ] || not_covered+=("multi-process expert alignment (NUM_GPUS=2)")
[ "$ZERO" = 3 ] || not_covered+=("ZeRO-3 (ZERO=3)")
[ "$SMOKE_VLLM" = 1 ] || not_covered+=("vLLM teacher, rollouts, sleep mode and eval (SMOKE_VLLM=1)")
[ "$SMOKE_DEVICE" = cuda ] || not_covered+=("GPU and bf16 (SMOKE_DEVICE=cuda)")
not_covered+=("multi-node; the 7B model's memory and speed (scripts/run_tgrl_7b.sh)")
printf 'smoke_gpu: not covered   %s' "${not_covered[0]}"
printf '; %s' "${not_covered[@]:1}"
printf '\n'
exit "$failed"
