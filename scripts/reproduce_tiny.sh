#!/usr/bin/env bash
# Mini-replication of the paper's experiment on the tiny tier (CPU, ~0.66M-parameter Qwen2.5-VL), under the
# fair protocol of train/tiny_protocol.yaml (REPRODUCE.md section 5).
#
#   bash scripts/reproduce_tiny.sh            # full (make reproduce): tuning at 2 seeds, 8 seeds + ablations; run count and time: REPRODUCE.md section 5
#   QUICK=1 bash scripts/reproduce_tiny.sh    # demo (make demo): GRPO vs TGRL at the committed selection, one seed
#
# Pipeline (every stage is skipped when its output is complete, so a rerun resumes; training resumes from its
# last checkpoint): synthetic scenes (train / val / test / shifted splits) -> tiny initial model -> weak base (a
# warm-up SFT on grounded traces: it knows the format and states facts at ~38%, below the diff/cmp transition)
# -> oracle teacher trajectories (K=4, 20% wrong facts) -> filtering (F1-F3 under the weak base) -> the protocol
# (scripts/run_protocol.py: every method's grid at 2 seeds on the validation splits, the freeze of the selection,
# the sealed test and shifted splits, the selected entries and the ablations at 8 seeds on them; one progress
# line per finished run) -> tables (OUT/tables) and training curves (OUT/plots).
#
# Overrides: PROTOCOL=train/tiny_protocol.yaml BASE_STEPS=700 N_TRAIN=3000 N_VAL=1000 N_TEST=1000 N_SHIFTED=1000
#            JOBS=2 OUT=results/tiny WORK=checkpoints/tiny DATA=data/tiny STAGE=all (tune: stop after the selection)
#            SELECTED=results/tiny/selected.json DEMO_METHODS="grpo tgrl" (QUICK=1 only)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

if [ "${QUICK:-0}" = "1" ]; then
  OUT=${OUT:-results/tiny_demo}; WORK=${WORK:-checkpoints/tiny_demo}
fi
PROTOCOL=${PROTOCOL:-train/tiny_protocol.yaml}
BASE_STEPS=${BASE_STEPS:-700}
N_TRAIN=${N_TRAIN:-3000}
N_VAL=${N_VAL:-1000}
N_TEST=${N_TEST:-1000}
N_SHIFTED=${N_SHIFTED:-1000}
JOBS=${JOBS:-2}
STAGE=${STAGE:-all}
OUT=${OUT:-results/tiny}
WORK=${WORK:-checkpoints/tiny}
DATA=${DATA:-data/tiny}
SELECTED=${SELECTED:-results/tiny/selected.json}
DEMO_METHODS=${DEMO_METHODS:-"grpo tgrl"}
LOGS=$WORK/logs
mkdir -p "$OUT" "$WORK" "$LOGS"
T0=$(date +%s)

say() { printf '[%s +%ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - T0 ))" "$*"; }
done_marker() { [ -f "$1/.tgrl_done" ]; }

say "1/6 tiny model + synthetic scenes (train, val, test, shifted, and the held-out splits' twins)"
$PY data_prep/build_tiny_model.py --out "$WORK/tiny-init" --size S --seed 0
$PY data_prep/make_synthetic.py --out "$DATA/synthetic" --n-train "$N_TRAIN" --n-val "$N_VAL" --n-test "$N_TEST" \
  --n-shifted "$N_SHIFTED" --seed 0 --twins

say "2/6 oracle teacher trajectories (K=4, 20% wrong facts)"
$PY data_prep/build_teacher_trajectories.py --data "$DATA/synthetic/train.jsonl" --out "$DATA/teacher" \
  --backend oracle --k 4 --seed 0 --wrong-fact-rate 0.2 --no-progress

if [ "${QUICK:-0}" != "1" ]; then  # a protocol frozen elsewhere resumes from its own base and training sets
  $PY scripts/run_protocol.py --protocol "$PROTOCOL" --work "$WORK" --data "$DATA" --out "$OUT" --restore-inputs
fi

say "3/6 weak base: warm-up SFT on correct grounded traces ($BASE_STEPS steps)"
# The warm-up data: correct, well-formed traces (F1+F2; no policy needed for the selection: F3 off).
$PY data_prep/filter_trajectories.py --data "$DATA/synthetic/train.jsonl" \
  --trajectories "$DATA/teacher/trajectories.jsonl" --out "$DATA/warmup" --policy "$WORK/tiny-init" \
  --max-completion-tokens 64 --no-f3 --no-progress
if ! done_marker "$WORK/base"; then
  $PY train/sft.py --config train/recipes/tiny/sft.yaml output_dir="$WORK/base" model_name_or_path="$WORK/tiny-init" \
    train_file="$DATA/warmup/train.jsonl" seed=0 max_steps="$BASE_STEPS" > "$LOGS/base.log" 2>&1
  touch "$WORK/base/.tgrl_done"
fi

say "4/6 filtering under the weak base (F1-F3; the ablations' sets are built by the protocol, train_sets)"
$PY data_prep/filter_trajectories.py --data "$DATA/synthetic/train.jsonl" \
  --trajectories "$DATA/teacher/trajectories.jsonl" --out "$DATA/experts" --policy "$WORK/base" \
  --max-completion-tokens 64 --no-progress

if [ "${QUICK:-0}" = "1" ]; then
  say "5/6 demo: $DEMO_METHODS at the entries $SELECTED selected (one seed; the full protocol tunes them)"
  # shellcheck disable=SC2086  # DEMO_METHODS is a list of method names
  $PY scripts/run_protocol.py --protocol "$PROTOCOL" --work "$WORK" --data "$DATA" --out "$OUT" --jobs "$JOBS" \
    --selected "$SELECTED" --methods $DEMO_METHODS
else
  say "5/6 the protocol: tuning on validation, the freeze, then the selected entries and ablations (8 seeds) on the sealed splits"
  $PY scripts/run_protocol.py --protocol "$PROTOCOL" --work "$WORK" --data "$DATA" --out "$OUT" --jobs "$JOBS" \
    --stage "$STAGE"
  [ "$STAGE" = "all" ] || { say "stopped after stage '$STAGE' of the protocol (STAGE=all runs the rest)"; exit 0; }
fi

say "6/6 tables and training curves"
TABLES=(--table tiny --table tiny_headline --table tiny_grounding --table tiny_ablations)
if [ "${QUICK:-0}" = "1" ]; then  # the demo scores the synthetic test splits (it never touches a sealed one)
  $PY eval/make_tables.py --summary "$OUT/summary.jsonl" --out "$OUT/tables" "${TABLES[@]}"
else  # the same tables read from the sealed splits, and the pre-registered tests
  $PY eval/make_tables.py --summary "$OUT/summary.jsonl" --out "$OUT/tables" "${TABLES[@]}" \
    --task-alias synthetic_test=sealed_test --task-alias synthetic_shifted=sealed_shifted \
    --task-alias synthetic_test_twins=sealed_test_twins
  for LIST in preregistration exploratory; do  # the registered family, then the exploratory list beside it
    $PY eval/registered_comparisons.py --prereg "$OUT/$LIST.yaml" --summary "$OUT/summary.jsonl" --out "$OUT/tables"
  done
fi
$PY eval/plot_training.py --runs-json "$OUT/runs.json" --out "$OUT/plots" --smooth 20
cat "$OUT/tables/tiny.md"
if [ "${QUICK:-0}" = "1" ]; then
  $PY -c "import sys; from tgrl.protocol import reading; from tgrl.utils import read_jsonl; \
print(reading([r for _, r in read_jsonl(sys.argv[1])], sys.argv[2:]))" "$OUT/summary.jsonl" grpo tgrl \
    | tee "$OUT/tables/reading.txt"
else
  cat "$OUT/tables/tiny_registered.md"
fi
say "done in $(( ($(date +%s) - T0) / 60 )) min: tables $OUT/tables, plots $OUT/plots, checkpoints $WORK, logs $LOGS"
