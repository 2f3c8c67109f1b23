"""What prefix sharing saves in the update: the loss forward + backward of one RL step, as TRL does it (each
of the 32 rows carries its whole prompt) and as the trainer's share_prompt_prefix does it (each prompt
computed once per group, its keys and values repeated over the group's rows: tgrl/prefix_sharing.py).

    OMP_NUM_THREADS=1 python benchmarks/bench_prefix_sharing.py --work .cache/bench/work [--repeats 5]

Prints one JSON line: CPU seconds of each (median over repeats), their ratio, and the check that both give
the same per-token log-probabilities and gradient (max |difference|; the relative gradient difference).
Why it matters: benchmarks/README.md#where-a-steps-time-goes---profile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tgrl.benchmarking import add_asset_args, assets_from_args


def step_inputs(base: str, problems: str, prompts: int, group: int, completion: int, seed: int = 0):
    """The policy, ``prompts`` problems' chat inputs (left-padded) and random completion ids, one per row."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from tgrl.data import load_problems
    from tgrl.prompts import build_messages

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(base)
    chosen = load_problems(problems, limit=prompts)
    texts = [
        processor.apply_chat_template(build_messages(p.question), add_generation_prompt=True) for p in chosen
    ]
    images = [p.load_images()[0] for p in chosen]
    enc = processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left")
    vocab = model.config.text_config.vocab_size
    completions = torch.randint(vocab // 2, vocab, (prompts * group, completion))
    return model, enc, completions


def forwards(model, enc, completions: torch.Tensor, group: int) -> dict[str, Callable[[], torch.Tensor]]:
    """Two ways to get the completions' log-probabilities under ``model`` (with gradient), both through
    TRL's fused LM head as GRPOTrainer adds it: TRL's per-row forward, and the trainer's prefix sharing."""
    from trl.trainer.utils import add_fused_lm_head

    from tgrl.prefix_sharing import shared_prefix_logps_and_entropies

    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    rows, width = completions.shape
    ids = torch.cat([enc.input_ids.repeat_interleave(group, 0), completions], 1)
    mask = torch.cat([enc.attention_mask.repeat_interleave(group, 0), torch.ones_like(completions)], 1)
    pixels = enc.pixel_values.view(len(enc.input_ids), -1, enc.pixel_values.size(-1))
    inputs = {
        "pixel_values": pixels.repeat_interleave(group, 0).flatten(0, 1),
        "image_grid_thw": enc.image_grid_thw.repeat_interleave(group, 0),
    }
    mm = enc.get("mm_token_type_ids")
    if mm is not None:
        inputs["mm_token_type_ids"] = torch.cat([mm.repeat_interleave(group, 0), 0 * completions], 1)

    def every_row() -> torch.Tensor:  # TRL's _get_per_token_logps_and_entropies: prompt + completion per row
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :-width] = -100
        return model(
            input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, **inputs
        ).log_probs[:, -width:]

    def shared_prefix() -> torch.Tensor:  # the trainer's share_prompt_prefix
        return shared_prefix_logps_and_entropies(model, ids, mask, width, num_images=[1] * rows, **inputs)[0]

    return {"every_row": every_row, "shared_prefix": shared_prefix}


def measure(model, fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Median CPU seconds of forward + backward of the mean log-prob; the last log-probs and gradient."""
    seconds = []
    for _ in range(repeats + 1):  # the first is a warm-up
        model.zero_grad(set_to_none=True)
        start = time.process_time()
        logps = fn()
        logps.mean().backward()
        seconds.append(time.process_time() - start)
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return statistics.median(seconds[1:]), logps.detach(), grad


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_asset_args(ap)
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step (the recipes': 4)")
    ap.add_argument("--group", type=int, default=8, help="rows per prompt (num_generations: 8)")
    ap.add_argument("--completion", type=int, default=25, help="completion tokens per row (measured: ~25)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    assets = assets_from_args(args, Path(args.work or ".cache/bench/work"), need_train=False)
    model, enc, completions = step_inputs(assets.base, assets.test, args.prompts, args.group, args.completion)
    model.train()
    results = {
        name: measure(model, fn, args.repeats)
        for name, fn in forwards(model, enc, completions, args.group).items()
    }
    (full_s, full_lp, full_g), (shared_s, shared_lp, shared_g) = (
        results["every_row"],
        results["shared_prefix"],
    )
    record = {
        "bench": "prefix_sharing",
        "rows": completions.size(0),
        "prompt_positions": enc.input_ids.size(1),
        "completion_positions": completions.size(1),
        "every_row_cpu_s": round(full_s, 4),
        "shared_prefix_cpu_s": round(shared_s, 4),
        "speedup": round(full_s / shared_s, 3),
        "max_abs_logp_diff": float((full_lp - shared_lp).abs().max()),
        "grad_rel_diff": float((full_g - shared_g).norm() / full_g.norm()),
    }
    print(json.dumps(record), flush=True)
    return 0 if record["max_abs_logp_diff"] < 1e-4 and record["grad_rel_diff"] < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
