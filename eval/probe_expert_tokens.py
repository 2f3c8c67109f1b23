"""Expert content-token probability of a checkpoint: summary rows for the tiny table (tgrl/probe.py).

    python eval/probe_expert_tokens.py --model checkpoints/tiny_repro/tgrl_c2_s0 \
        --jsonl data/tiny_repro/synthetic/test.jsonl --task synthetic_test \
        --summary results/tiny/summary.jsonl --run tgrl_c2_s0 --method tgrl --seed 0

For every held-out problem the oracle teacher writes its grounded trajectory (no wrong facts); the checkpoint
scores it by teacher forcing in the trainer's token layout. Rows (``decoding: teacher_forced``):
``expert_fact_p`` (mean p of the tokens stating the scene's counts: the content the reasoning should carry
from the image), ``expert_low_p`` / ``expert_low_share`` (tokens with p < 0.5), ``expert_mean_p`` (all
tokens). ``--temperature T`` scores under logits / T (the policy of runs whose rollouts sample at T); its
rows get ``decoding: teacher_forced_t<T>``, so the tables (T = 1) never mix them.
Comparable across every method, the weak base included (the start of every run). Idempotent: a row set
is keyed by checkpoint, its weights' sha256, data and its hash, so a rerun adds nothing (and a checkpoint
retrained at the same path is probed again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from tgrl.data import load_problems
from tgrl.evaluation.runner import append_locked, finished_keys
from tgrl.probe import completion_logps, content_token_stats
from tgrl.teachers.oracle import oracle_trace
from tgrl.utils import UserError, cli, git_commit, set_torch_threads, sha256_file, weights_sha256


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--jsonl", type=Path, required=True, help="synthetic problems (meta with the scene)")
    p.add_argument("--task", default="synthetic_test", help="the table task the rows sit beside")
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--suite", default="tiny")
    p.add_argument("--limit", type=int, default=None, help="first N problems (tests)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="score under logits / T (default 1)")
    return p


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.temperature <= 0:
        raise UserError(f"--temperature {args.temperature}: must be > 0. Fix: pass e.g. --temperature 0.3")
    ident = {
        "checkpoint": str(args.model.resolve()),
        "data": sha256_file(args.jsonl),
        "limit": args.limit,
        "task": args.task,
        "run": args.run,
        "weights_sha256": weights_sha256(args.model),  # a retrained checkpoint is a new probe
    }
    if args.temperature != 1.0:  # keys of T = 1 rows stay what they were
        ident["temperature"] = args.temperature
    key = "probe-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    if key in finished_keys(args.summary):
        print(f"[probe] {args.run}: already in {args.summary}; nothing to do")
        return
    set_torch_threads()
    from tgrl.modeling import load_model_and_processor

    problems = load_problems(args.jsonl, limit=args.limit)
    missing = [p.id for p in problems if not (p.meta or {}).get("counts")]
    if missing:
        raise UserError(
            f"{args.jsonl}: problem {missing[0]} has no scene metadata (meta.counts), so the oracle cannot "
            "write its expert trajectory. Fix: use a synthetic split (data_prep/make_synthetic.py)"
        )
    t0 = time.time()
    model, processor = load_model_and_processor(args.model)
    texts = [oracle_trace(p.meta) for p in problems]
    logps = completion_logps(
        model,
        processor,
        [p.question for p in problems],
        [p.load_images() for p in problems],
        texts,
        batch_size=args.batch_size,
        temperature=args.temperature,
    )
    stats = content_token_stats(processor.tokenizer, texts, logps)
    common = {
        "key": key,
        "run": args.run,
        "method": args.method,
        "seed": args.seed,
        "checkpoint": ident["checkpoint"],
        "weights_sha256": ident["weights_sha256"],
        "task": args.task,
        "suite": args.suite,
        "decoding": "teacher_forced" if args.temperature == 1.0 else f"teacher_forced_t{args.temperature:g}",
        "git_commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    values = {
        "expert_fact_p": (stats.fact_p, stats.n_fact_tokens),
        "expert_low_p": (stats.low_p, stats.n_tokens),
        "expert_low_share": (stats.low_share, stats.n_tokens),
        "expert_mean_p": (stats.mean_p, stats.n_tokens),
    }
    rows = [{**common, "metric": m, "value": v, "n": n} for m, (v, n) in values.items() if v is not None]
    append_locked(args.summary, rows)
    shown = ", ".join(f"{r['metric']}={r['value']:.3f}" for r in rows)
    print(f"[probe] {args.run}: {shown} ({len(problems)} trajectories, {time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
