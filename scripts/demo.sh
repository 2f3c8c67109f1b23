#!/usr/bin/env bash
# Tiny-tier demo on CPU (make demo): the short version of the mini-replication (scripts/reproduce_tiny.sh with
# QUICK=1): scenes, the tiny Qwen2.5-VL, the weak base, oracle teacher + filtering, then GRPO and TGRL at the
# configurations the full protocol selected on its validation splits (results/tiny/selected.json, frozen
# before the sealed splits were scored), one seed, scored on 1,000 held-out scenes. Ends with the table, two
# sentences that read it, a sample (one test scene answered by the weak base, GRPO and TGRL) and the
# trajectory report: GRPO's and TGRL's reasoning on a few test scenes, every token coloured by its visual
# dependency s_t (one HTML file, opens offline), and the twin pairs: each test scene beside its
# counterfactual twin, with whether the stated facts followed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${OUT:-results/tiny_demo}
WORK=${WORK:-checkpoints/tiny_demo}
DATA=${DATA:-data/tiny}

echo "== 1. mini-replication, short version (GRPO vs TGRL, one seed): QUICK=1 scripts/reproduce_tiny.sh"
QUICK=1 OUT=$OUT WORK=$WORK DATA=$DATA bash scripts/reproduce_tiny.sh

echo
echo "== 2. a held-out scene: the prompt, the gold answer, and each model's reply"
$PY - "$DATA/synthetic/test.jsonl" "$WORK" "$OUT/runs.json" <<'PY'
import json
import sys
from pathlib import Path

from tgrl.data import load_problems
from tgrl.modeling import encode_prompts, generate_texts, load_model_and_processor

data, work, runs_file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
problems = [p for p in load_problems(data, limit=12) if p.meta["qtype"] == "diff"][:2]
runs = {r["method"]: Path(r["checkpoint"]) for r in json.loads(runs_file.read_text()) if r["group"] == "main"}
models = {"weak base": work / "base", **{m.upper(): path for m, path in runs.items()}}
for problem in problems:
    counts = problem.meta["counts"]
    print(f"question: {problem.question}  (image {problem.image_paths[0]}: red {counts['red']}, blue {counts['blue']})")
    print(f"gold answer: {problem.answer}")
    for name, path in models.items():
        model, processor = load_model_and_processor(path)
        reply = generate_texts(model, processor, [problem.question], [problem.load_images()], max_new_tokens=48)
        print(f"  {name:9s} {reply[0][0]}")
    print()
model, processor = load_model_and_processor(work / "base")
batch = encode_prompts(processor, [problems[0].question], [problems[0].load_images()])
print("the prompt as the model sees it:", processor.tokenizer.decode(batch["input_ids"][0]))
PY
echo
echo "== 3. the trajectory report: GRPO's and TGRL's own reasoning on a few test scenes, tokens coloured by s_t"
# report_inputs METRIC TASK REQUIRED: `--input METHOD=FOLDER` pairs for eval/report_trajectories.py, the
# results folders of the main runs' evaluations that wrote METRIC on TASK (REQUIRED=1: every main run has one)
report_inputs() {
  $PY - "$OUT/summary.jsonl" "$OUT/runs.json" "$1" "$2" "$3" <<'PY'
import json
import sys

from tgrl.utils import read_jsonl

summary, runs_file, metric, task, required = sys.argv[1:6]
runs = {r["name"]: r["method"] for r in json.load(open(runs_file)) if r["group"] == "main"}
folders = {
    row["run"]: row["results_dir"]
    for _, row in read_jsonl(summary)
    if row.get("run") in runs and row["metric"] == metric and row["task"] == task
}
if required == "1" and len(folders) < len(runs):
    sys.exit(f"no {metric} evaluation on {task} for {sorted(set(runs) - set(folders))} in {summary}")
for run, folder in sorted(folders.items()):
    print("--input")
    print(f"{runs[run].upper()}={folder}")
PY
}
# the protocol's --visual-dependency evaluations of the main runs
mapfile -t REPORT_INPUTS < <(report_inputs vis_dep_reasoning synthetic_test 1)
$PY eval/report_trajectories.py --out "$OUT/report.html" "${REPORT_INPUTS[@]}" --max-samples 16 --seed 0
echo
echo "== 4. twin pairs: each test scene beside its twin (one object removed, recoloured or moved), same question"
mapfile -t TWIN_INPUTS < <(report_inputs twin_tracking synthetic_test_twins 0)
if [ "${#TWIN_INPUTS[@]}" -gt 0 ]; then
  $PY eval/report_trajectories.py --out "$OUT/twins.html" "${TWIN_INPUTS[@]}" --max-samples 24 --seed 0
fi
echo
echo "outputs: $OUT/report.html (the trajectory report: open it in a browser, no network needed),"
echo "         $OUT/twins.html (scene and twin side by side: did the stated facts follow the edit?),"
echo "         $OUT/tables (tables, reading.txt), $OUT/plots (training curves: overlay_main.png first),"
echo "         $WORK (checkpoints, logs); the full protocol: make reproduce (REPRODUCE.md section 5)"
