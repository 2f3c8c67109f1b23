"""Per-step wall time of GRPO vs TGRL on the same tiny batch (CPU, one thread).

    OMP_NUM_THREADS=1 python benchmarks/bench_step.py --checkpoint checkpoints/tiny_base --steps 25

Each method trains ``--steps`` steps from the same tiny checkpoint, data and seed with the tiny
recipes' batch (``--batch`` 32 rollouts = 4 prompts x 8, up to ``--max-len`` 64 tokens, lr 1e-4,
oracle expert trajectories); the wall time between consecutive optimizer steps is
recorded by a callback and the median over steps after ``--warmup`` is printed as a JSON line:
``grpo_trl`` is stock trl.GRPOTrainer, ``grpo`` is TGRLTrainer with inject_mode never, ``tgrl`` the
default TGRL (7+1, vis_dep weights), ``luffy`` TGRL with expert_token_weight none.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class StepTimer:
    """Wall time between consecutive optimizer steps (includes generation, scoring and the update)."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                timer.stamps.append(time.perf_counter())

            def on_train_begin(self, args, state, control, **kwargs):
                timer.stamps.append(time.perf_counter())

        self.stamps: list[float] = []
        self.callback = _Callback()

    def durations(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


def expert_file(data: Path, out: Path, limit: int) -> Path:
    from tgrl.data import load_problems
    from tgrl.teachers.oracle import oracle_trace
    from tgrl.utils import write_jsonl

    rng = random.Random(0)
    rows = []
    for problem in load_problems(data, limit=limit):
        record = problem.to_record()
        record["images"] = problem.image_paths
        record["meta"]["expert"] = {"text": oracle_trace(problem.meta, rng), "teacher": "oracle"}
        rows.append(record)
    path = out / "train_expert.jsonl"
    write_jsonl(path, rows)
    return path


def run(
    method: str, checkpoint: str, data: Path, out: Path, steps: int, batch: int, max_len: int
) -> list[float]:
    import torch
    from transformers import AutoModelForImageTextToText
    from trl import GRPOConfig, GRPOTrainer

    from tgrl.modeling import load_processor
    from tgrl.rewards import get_reward_funcs
    from tgrl.rl_data import build_rl_dataset
    from tgrl.trainer import TGRLConfig, TGRLTrainer

    torch.set_num_threads(1)
    common = dict(
        output_dir=str(out / method),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=batch,
        num_generations=8,
        max_completion_length=max_len,
        max_steps=steps,
        logging_steps=1,
        report_to=[],
        learning_rate=1e-4,
        save_strategy="no",
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
        beta=0.0,
        loss_type="dapo",
        temperature=1.0,
    )
    dataset = build_rl_dataset(data)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    processor = load_processor(checkpoint)
    timer = StepTimer()
    rewards = get_reward_funcs(["accuracy", "format"])
    if method == "grpo_trl":
        trainer = GRPOTrainer(
            model, rewards, args=GRPOConfig(**common), train_dataset=dataset, processing_class=processor
        )
    else:
        method_keys = {
            "grpo": dict(inject_mode="never"),
            "tgrl": dict(inject_mode="always", expert_token_weight="vis_dep"),
            "luffy": dict(inject_mode="always", expert_token_weight="none"),
        }[method]
        args = TGRLConfig(**common, **method_keys, log_data_order=False)
        trainer = TGRLTrainer(model, rewards, args=args, train_dataset=dataset, processing_class=processor)
    trainer.add_callback(timer.callback)
    trainer.train()
    return timer.durations()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/tiny-init")
    ap.add_argument("--data", default="data/synthetic/train.jsonl")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch", type=int, default=32, help="rollouts per step (a multiple of 8)")
    ap.add_argument("--max-len", type=int, default=64, help="max_completion_length")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["grpo_trl", "grpo", "tgrl", "luffy"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = expert_file(Path(args.data), Path(tmp), limit=args.batch // 8 * args.steps)
        for method in args.methods:
            times = run(method, args.checkpoint, data, Path(tmp), args.steps, args.batch, args.max_len)
            times = times[args.warmup :]
            print(
                json.dumps(
                    {
                        "method": method,
                        "median_step_s": round(statistics.median(times), 4),
                        "min_step_s": round(min(times), 4),
                        "mean_step_s": round(statistics.fmean(times), 4),
                        "steps_timed": len(times),
                        "rollouts_per_step": args.batch,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
