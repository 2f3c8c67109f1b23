"""Evaluate one checkpoint on lmms-eval tasks with every score-moving setting pinned and recorded.

    python eval/run_lmms_eval.py --model CKPT --jsonl data/synthetic/test.jsonl --out results/raw
    python eval/run_lmms_eval.py --model Qwen/Qwen2.5-VL-7B-Instruct --suite paper --run base_7b --method base
    accelerate launch --num_processes 8 eval/run_lmms_eval.py --model CKPT --suite paper ...  # data parallel

A rerun skips finished (checkpoint, task) pairs. The protocol: docs/design.md#91-protocol; what is
recorded and how it resumes: tgrl/evaluation/runner.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tgrl.evaluation import runner
from tgrl.utils import UserError, cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="checkpoint folder or hub id")
    p.add_argument(
        "--tasks", default="", help="comma-separated: our tasks (with or without tgrl_), lmms-eval built-ins"
    )
    p.add_argument(
        "--jsonl", action="append", default=[], help="[NAME=]FILE: the generic task on a problem JSONL"
    )
    p.add_argument("--suite", help="a suite of eval/suites.yaml: its tasks and settings (flags override)")
    p.add_argument("--suites-file", default=str(runner.SUITES_FILE))
    p.add_argument(
        "--out", default=str(runner.DEFAULT_OUT), help="raw lmms-eval outputs go to OUT/<run>/<task>__<hash>/"
    )
    p.add_argument(
        "--summary", default=str(runner.DEFAULT_SUMMARY), help="summary JSONL the rows are appended to"
    )
    p.add_argument("--run", help="run name (default: from the checkpoint folder)")
    p.add_argument("--method", help="method key (base, grpo, tgrl, ...; default: the run name)")
    p.add_argument("--seed", type=int, help="training seed of the run (a label, not the sampling seed)")
    p.add_argument(
        "--limit",
        type=int,
        help="first N documents per task (the protocol's secondary measures, tests, smoke runs)",
    )
    p.add_argument("--force", action="store_true", help="redo tasks the summary already has")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    g = p.add_argument_group("settings that move scores (defaults: the suite's, then the built-in ones)")
    g.add_argument("--backend", choices=["hf", "vllm"])
    g.add_argument("--dtype")
    g.add_argument("--batch-size", dest="batch_size", type=int)
    g.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    g.add_argument("--decoding", help="greedy or avg@K (K samples per question, mean accuracy)")
    g.add_argument("--temperature", type=float, help="for avg@K (default 1.0)")
    g.add_argument("--top-p", dest="top_p", type=float, help="for avg@K (default 1.0)")
    g.add_argument("--eval-seed", dest="eval_seed", type=int, help="sampling and lmms-eval seed")
    g.add_argument("--min-pixels", dest="min_pixels", type=int)
    g.add_argument("--max-pixels", dest="max_pixels", type=int)
    g.add_argument("--attn-implementation", dest="attn_implementation")
    g.add_argument("--tensor-parallel-size", dest="tensor_parallel_size", type=int, help="vllm")
    g.add_argument("--gpu-memory-utilization", dest="gpu_memory_utilization", type=float, help="vllm")
    g.add_argument("--max-model-len", dest="max_model_len", type=int, help="vllm")
    g.add_argument("--judge", help="LLM judge model name for responses the rules score 0 (off by default)")
    g.add_argument(
        "--visual-dependency",
        dest="visual_dependency",
        action="store_true",
        default=None,
        help="after generation, one clean and one perturbed-image teacher-forced pass per response (the "
        "trainer's perturbation and s_t, docs/design.md#54-token-quantities; no sampling): adds "
        "vis_dep_reasoning, vis_dep_answer, "
        "vis_dep_reasoning_share (and _correct / _incorrect) rows and per-token s_t in samples.jsonl. "
        "hf backend only (batched; on GPU for 7B): with vllm the run stops with an error, because vLLM "
        "cannot score a given response under a perturbed image. Off by default",
    )
    g.add_argument(
        "--blind",
        action="store_true",
        default=None,
        help="the blind control: every image replaced by an all-black image of its size (same prompt, "
        "image tokens and pixel budget), on any task, ours or lmms-eval built-ins. Rows get decoding "
        "<decoding>_blind; once the same evaluation with the image is in the summary too, mg_<metric> rows "
        "hold the multimodal gain (with image - blind, MMStar's MG, arXiv 2403.20330)",
    )
    m = p.add_argument_group("helpers for scripts/eval_all.sh")
    m.add_argument(
        "--list-checkpoints", action="store_true", help="print checkpoint<TAB>run<TAB>method<TAB>seed"
    )
    m.add_argument("--manifest", help="with --list-checkpoints: JSONL of {checkpoint, run, method, seed}")
    m.add_argument(
        "--checkpoints-dir", default="checkpoints", help="with --list-checkpoints: discover under it"
    )
    m.add_argument(
        "--checkpoint", action="append", default=[], help="with --list-checkpoints: explicit paths"
    )
    m.add_argument("--print-setting", help="print one resolved setting (e.g. backend) and exit")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_checkpoints:
        for entry in runner.list_checkpoints(args.manifest, args.checkpoints_dir, args.checkpoint):
            seed = "" if entry["seed"] is None else str(entry["seed"])
            print("\t".join([entry["checkpoint"], str(entry["run"]), str(entry["method"]), seed]))
        return 0

    suite = runner.load_suite(args.suite, Path(args.suites_file)) if args.suite else None
    settings = runner.resolve_settings(vars(args), suite)
    if args.print_setting:
        if args.print_setting not in settings:
            raise UserError(f"unknown setting {args.print_setting!r}; known: {sorted(settings)}")
        print(settings[args.print_setting])
        return 0
    if settings["judge"]:
        os.environ["TGRL_JUDGE_MODEL"] = str(settings["judge"])
    if not args.model:
        raise UserError("--model is required (a checkpoint folder or hub id)")
    plan = runner.plan_evaluation(
        args.model,
        [t.strip() for t in args.tasks.split(",") if t.strip()],
        list(args.jsonl),
        settings,
        suite=suite,
        suite_name=args.suite,
        run=args.run,
        method=args.method,
        seed=args.seed,
        limit=args.limit,
        summary=args.summary,
        force=args.force,
    )
    if not plan.pending:
        return 0
    try:
        runner.run_plan(plan, args.out, args.device)
    except runner.EvaluationFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
