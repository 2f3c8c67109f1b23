#!/usr/bin/env bash
# Tiny-tier demo on CPU (make demo): the tiny Qwen2.5-VL checkpoint and the synthetic scenes with a sample,
# then a short version of the mini-replication (scripts/reproduce_tiny.sh with QUICK=1: weak base, oracle
# teacher + filtering, GRPO vs TGRL for one seed, lmms-eval on 1,000 held-out items, table + curves).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

echo "== 1. tiny Qwen2.5-VL checkpoint (tokenizer + processor + model built from code)"
$PY data_prep/build_tiny_model.py --out checkpoints/tiny-init --size S --seed 0
echo "== 2. synthetic visual-reasoning scenes"
$PY data_prep/make_synthetic.py --out data/synthetic --n-train 3000 --n-test 1000 --seed 0
echo "== 3. a sample: prompt as the model sees it, gold answer, and the untrained model's reply"
$PY - <<'PY'
from tgrl.data import load_problems
from tgrl.modeling import encode_prompts, generate_texts, load_model_and_processor
problem = load_problems("data/synthetic/test.jsonl", limit=1)[0]
model, processor = load_model_and_processor("checkpoints/tiny-init")
batch = encode_prompts(processor, [problem.question], [problem.load_images()])
print("prompt:", processor.tokenizer.decode(batch["input_ids"][0]))
print("image :", problem.image_paths[0], "| gold answer:", problem.answer, "| meta counts:", problem.meta["counts"])
print("reply :", generate_texts(model, processor, [problem.question], [problem.load_images()], max_new_tokens=16)[0][0])
PY
echo "== 4. mini-replication, short version (GRPO vs TGRL, one seed): scripts/reproduce_tiny.sh QUICK=1"
QUICK=1 bash scripts/reproduce_tiny.sh
echo
echo "outputs: checkpoints/tiny-init (model), data/synthetic (scenes), results/tiny_demo/tables (table),"
echo "         results/tiny_demo/plots (training curves), checkpoints/tiny_demo (runs, logs)"
