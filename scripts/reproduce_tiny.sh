#!/usr/bin/env bash
# Mini-replication of the paper's experiment on the tiny tier (CPU, ~0.66M-parameter Qwen2.5-VL).
#
#   bash scripts/reproduce_tiny.sh                  # full: 4 methods x 3 seeds + ablation, ~60 min on 2 cores
#   QUICK=1 bash scripts/reproduce_tiny.sh          # demo: GRPO vs TGRL, one seed, fewer steps (~8 min)
#
# Pipeline (every stage is skipped when its output is complete, so a rerun resumes; RL runs resume
# from their last checkpoint): synthetic scenes -> tiny initial model -> weak base (a short warm-up SFT
# on grounded traces: the format is known, the facts are not; see REPRODUCE.md for why not the
# direct-answer base) -> oracle teacher trajectories (K=4, 20% wrong facts) -> filtering (F1-F3 under
# the weak base) -> GRPO, SFT-then-RL, LUFFY-VL, TGRL and the "without filtering" ablation, each from the
# same base with the same rollout budget -> lmms-eval on the held-out 1,000-item test split -> tables
# (results/tiny/tables) and training curves (results/tiny/plots). Two jobs run at once (JOBS=2).
#
# More ablation rows (one seed each, ~9 min per pair of runs; finished runs are reused):
#   ABLATIONS="tgrl_no_filter tgrl_no_reweight tgrl_inject_on_fail tgrl_adv_on_only tgrl_ratio_raw_p tgrl_ratio_sft" bash scripts/reproduce_tiny.sh
#
# Overrides: SEEDS="0 1 2" METHODS="grpo sft_rl luffy_vl tgrl" ABLATIONS="tgrl_no_filter" RL_STEPS=1000
#            BASE_STEPS=450 SFT_STEPS=600 N_TRAIN=3000 N_TEST=1000 JOBS=2 OUT=results/tiny
#            WORK=checkpoints/tiny_repro DATA=data/tiny_repro
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

if [ "${QUICK:-0}" = "1" ]; then
  SEEDS=${SEEDS:-0}; METHODS=${METHODS:-"grpo tgrl"}; ABLATIONS=${ABLATIONS-}; RL_STEPS=${RL_STEPS:-400}
  OUT=${OUT:-results/tiny_demo}; WORK=${WORK:-checkpoints/tiny_demo}
fi
SEEDS=${SEEDS:-"0 1 2"}
METHODS=${METHODS:-"grpo sft_rl luffy_vl tgrl"}
ABLATIONS=${ABLATIONS-"tgrl_no_filter"}
RL_STEPS=${RL_STEPS:-1000}
BASE_STEPS=${BASE_STEPS:-450}
SFT_STEPS=${SFT_STEPS:-600}
N_TRAIN=${N_TRAIN:-3000}
N_TEST=${N_TEST:-1000}
JOBS=${JOBS:-2}
OUT=${OUT:-results/tiny}
WORK=${WORK:-checkpoints/tiny_repro}
DATA=${DATA:-data/tiny_repro}
LOGS=$WORK/logs
SUMMARY=$OUT/summary.jsonl
mkdir -p "$OUT" "$WORK" "$LOGS"
T0=$(date +%s)

say() { printf '[%s +%ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - T0 ))" "$*"; }
done_marker() { [ -f "$1/.tgrl_done" ]; }

# ---------------------------------------------------------------- job pool (JOBS at once, fail fast)
declare -a PIDS=()
run_bg() { # run_bg NAME CMD...: run in the background, log to $LOGS/NAME.log
  local name=$1; shift
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || { say "FAILED: a job failed (see $LOGS)"; exit 1; }; done
  say "start $name"
  ( "$@" > "$LOGS/$name.log" 2>&1 || { echo "FAILED: $name (log: $LOGS/$name.log)" >&2; exit 1; } ) &
  PIDS+=($!)
}
wait_all() { local pid; for pid in "${PIDS[@]}"; do wait "$pid" || { say "FAILED: a job failed (see $LOGS)"; exit 1; }; done; PIDS=(); }

# ---------------------------------------------------------------- stages
evaluate() { # evaluate CKPT RUN METHOD SEED
  $PY eval/run_lmms_eval.py --model "$1" --suite tiny --jsonl "synthetic_test=$DATA/synthetic/test.jsonl" \
    --out "$WORK/eval" --summary "$SUMMARY" --run "$2" --method "$3" ${4:+--seed "$4"}
}

rl_job() { # rl_job METHOD SEED
  local method=$1 seed=$2 dir=$WORK/${1}_s$2 model=$WORK/base train=$DATA/experts/train.jsonl
  [ "$method" = sft_rl ] && model=$WORK/sft_s$seed
  [ "$method" = tgrl_no_filter ] && train=$DATA/experts_nofilter/train.jsonl
  if ! done_marker "$dir"; then
    $PY train/rl.py --config "train/recipes/tiny/$method.yaml" output_dir="$dir" model_name_or_path="$model" \
      train_file="$train" seed="$seed" max_steps="$RL_STEPS" save_steps=100 resume_from_checkpoint=auto
    touch "$dir/.tgrl_done"
  fi
  evaluate "$dir" "${method}_s$seed" "$method" "$seed"
  $PY eval/summarize_training.py --run-dir "$dir" --run "${method}_s$seed" --method "$method" --seed "$seed" \
    --summary "$SUMMARY"
}

sft_job() { # sft_job SEED: stage 1 of SFT-then-RL (and the SFT row)
  local dir=$WORK/sft_s$1
  if ! done_marker "$dir"; then
    $PY train/sft.py --config train/recipes/tiny/sft.yaml output_dir="$dir" model_name_or_path="$WORK/base" \
      train_file="$DATA/experts/train.jsonl" seed="$1" max_steps="$SFT_STEPS"
    touch "$dir/.tgrl_done"
  fi
  evaluate "$dir" "sft_s$1" sft "$1"
}

say "1/6 tiny model + synthetic scenes"
$PY data_prep/build_tiny_model.py --out "$WORK/tiny-init" --size S --seed 0
$PY data_prep/make_synthetic.py --out "$DATA/synthetic" --n-train "$N_TRAIN" --n-test "$N_TEST" --seed 0

say "2/6 oracle teacher trajectories (K=4, 20% wrong facts)"
$PY data_prep/build_teacher_trajectories.py --data "$DATA/synthetic/train.jsonl" --out "$DATA/teacher" \
  --backend oracle --k 4 --seed 0 --wrong-fact-rate 0.2 --no-progress

say "3/6 weak base: short warm-up SFT on correct grounded traces ($BASE_STEPS steps)"
# The warm-up data: correct, well-formed traces (F1+F2; no policy needed for the selection: F3 off).
$PY data_prep/filter_trajectories.py --data "$DATA/synthetic/train.jsonl" --trajectories "$DATA/teacher/trajectories.jsonl" \
  --out "$DATA/warmup" --policy "$WORK/tiny-init" --max-completion-tokens 64 --no-f3 --no-progress
if ! done_marker "$WORK/base"; then
  $PY train/sft.py --config train/recipes/tiny/sft.yaml output_dir="$WORK/base" model_name_or_path="$WORK/tiny-init" \
    train_file="$DATA/warmup/train.jsonl" seed=0 max_steps="$BASE_STEPS" > "$LOGS/base.log" 2>&1
  touch "$WORK/base/.tgrl_done"
fi
evaluate "$WORK/base" base base 0 > "$LOGS/eval_base.log" 2>&1

say "4/6 filtering under the weak base (F1-F3) and the no-filter ablation set"
$PY data_prep/filter_trajectories.py --data "$DATA/synthetic/train.jsonl" --trajectories "$DATA/teacher/trajectories.jsonl" \
  --out "$DATA/experts" --policy "$WORK/base" --max-completion-tokens 64 --no-progress
$PY data_prep/filter_trajectories.py --data "$DATA/synthetic/train.jsonl" --trajectories "$DATA/teacher/trajectories.jsonl" \
  --out "$DATA/experts_nofilter" --policy "$WORK/base" --max-completion-tokens 64 --no-f1 --no-f3 --no-progress

say "5/6 training + evaluation: seeds [$SEEDS], methods [$METHODS], ablations [$ABLATIONS], $RL_STEPS RL steps each"
case " $METHODS " in *" sft_rl "*) for s in $SEEDS; do run_bg "sft_s$s" sft_job "$s"; done; wait_all ;; esac
for s in $SEEDS; do for m in $METHODS; do run_bg "${m}_s$s" rl_job "$m" "$s"; done; done
first_seed=${SEEDS%% *}
for m in $ABLATIONS; do run_bg "${m}_s$first_seed" rl_job "$m" "$first_seed"; done
wait_all

say "6/6 tables and training curves"
$PY eval/make_tables.py --summary "$SUMMARY" --out "$OUT/tables" --table tiny --table tiny_ablations
mapfile -t METRIC_FILES < <(ls "$WORK"/*_s*/metrics.jsonl 2>/dev/null | grep -v '/sft_s')
$PY eval/plot_training.py --metrics "${METRIC_FILES[@]}" --out "$OUT/plots" --smooth 20
cat "$OUT/tables/tiny.md"
say "done in $(( ($(date +%s) - T0) / 60 )) min: tables $OUT/tables, plots $OUT/plots, checkpoints $WORK, logs $LOGS"
