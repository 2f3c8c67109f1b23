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

``--fact-dependency`` adds the visual dependency s_t at the same fact tokens of the same common text
(one more teacher-forced pass with the perturbed image: the trainer's perturbation, half the 14x14
patches black, and its s_t, both passes under logits / T): ``expert_fact_s`` (mean s_t over the fact
tokens) and ``expert_fact_s_share`` (share of them with s_t >= ln 2 - 1/2: the digit's probability at least
halves without half the image). Every checkpoint scores the same text at the same positions, so the
number compares models on what they read from the image, not on what they chose to write; score each
model at its own rollout temperature (tiny RL recipes: 0.3).

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
from tgrl.grounding import GroundingSpec
from tgrl.probe import (
    Perturbation,
    completion_logps,
    completion_visual_dependency,
    content_token_stats,
    fact_dependency,
)
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
    p.add_argument("--limit", type=int, default=None, help="first N problems (protocol, tests)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="score under logits / T (default 1)")
    p.add_argument(
        "--fact-dependency",
        action="store_true",
        help="also s_t at the fact tokens (expert_fact_s, expert_fact_s_share): one perturbed pass more",
    )
    p.add_argument(
        "--perturb-seed", type=int, default=1234, help="seed of the perturbed images (row i: [seed, i])"
    )
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
    spec = GroundingSpec()
    s_ident = {**ident, "fact_dependency": spec.settings(), "perturb_seed": args.perturb_seed}
    s_key = "probe-s-" + hashlib.sha256(json.dumps(s_ident, sort_keys=True).encode()).hexdigest()[:24]
    done = finished_keys(args.summary)
    want_p, want_s = key not in done, args.fact_dependency and s_key not in done
    if not want_p and not want_s:
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
    inputs = ([p.question for p in problems], [p.load_images() for p in problems], texts)
    if want_s:  # the clean pass of the s_t pair is the p probe's pass: one forward less
        perturbation = Perturbation(spec.perturb_mode, spec.perturb_prob, args.perturb_seed)
        scored = completion_visual_dependency(
            model, processor, *inputs, perturbation, batch_size=args.batch_size, temperature=args.temperature
        )
        logps = [dep.logp for dep in scored]
        dependency = fact_dependency(processor.tokenizer, texts, scored, spec.threshold)
    else:
        logps = completion_logps(
            model, processor, *inputs, batch_size=args.batch_size, temperature=args.temperature
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
    rows = rows if want_p else []
    if want_s:
        s_common = {**common, "key": s_key, "settings": {"visual_dependency": spec.settings(), **s_ident}}
        s_values = {
            "expert_fact_s": (dependency.fact_s, "s_t"),
            "expert_fact_s_share": (dependency.fact_share, "share"),
        }
        rows += [
            {**s_common, "metric": m, "value": v, "n": dependency.n_fact_tokens, "unit": unit}
            for m, (v, unit) in s_values.items()
            if v is not None
        ]
    append_locked(args.summary, rows)
    shown = ", ".join(f"{r['metric']}={r['value']:.3f}" for r in rows)
    print(f"[probe] {args.run}: {shown} ({len(problems)} trajectories, {time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
