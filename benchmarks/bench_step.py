"""Per-step wall time of stock TRL GRPO, our GRPO, TGRL and LUFFY-VL, split into its phases (CPU).

    OMP_NUM_THREADS=1 python benchmarks/bench_step.py --work .cache/bench/work --out step.json

Each method trains from its tiny recipe in its own subprocess, the same trainer methods are timed on
stock TRL and ours, and rounds are interleaved so machine drift hits every method alike. Targets: our
GRPO within 5% of stock, TGRL within 15% of GRPO. Methods, phases, ratios: docs/tiny_tier.md#81-benchmarks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from tgrl.benchmarking import (
    PY,
    RECIPE_DIR,
    REPO,
    add_asset_args,
    assets_from_args,
    emit,
    format_table,
    interleaved,
    note,
    run_measured,
    write_out,
)

RECIPES = {
    "grpo_trl": "grpo.yaml",
    "grpo": "grpo.yaml",
    "tgrl": "tgrl.yaml",
    "luffy": "luffy_vl.yaml",
}
PHASES = ("step", "generate", "score", "token_pass", "exp_other", "update")
# (numerator, denominator, target: numerator/denominator must not exceed it; None = informational)
RATIOS = (("grpo", "grpo_trl", 1.05), ("tgrl", "grpo", 1.15), ("luffy", "grpo", None))


# --------------------------------------------------------------------------------------------------
# child: one training run of one method, instrumented


class StepProbe:
    """Per-optimizer-step phase times, wall clock and CPU, by wrapping trainer methods on the instance.

    The wrapped names are the hooks TRL itself calls through ``self``: ``_generate_and_score_completions``
    (the whole experience phase), ``_generate_single_turn`` (generation), ``_calculate_rewards``
    (scoring) and, on TGRLTrainer, ``_token_pass``. ``super()`` calls inside TGRLTrainer bypass the
    instance attribute, so nothing is counted twice. CPU time (``time.process_time``, one torch thread)
    is what the process itself consumed: unlike wall time it barely moves when another job competes for
    the cores, so it is the check on a wall-time ratio taken on a busy machine."""

    def __init__(self, trainer) -> None:
        from transformers import TrainerCallback

        self.current: dict[str, float] = defaultdict(float)
        self.records: list[dict[str, float]] = []
        self._last: tuple[float, float] | None = None
        for name, key in (
            ("_generate_single_turn", "generate"),
            ("_calculate_rewards", "score"),
            ("_token_pass", "token_pass"),
            ("_generate_and_score_completions", "experience"),
        ):
            if hasattr(trainer, name):
                setattr(trainer, name, self._timed(getattr(trainer, name), key))
        probe = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                probe._last = (time.perf_counter(), time.process_time())

            def on_step_end(self, args, state, control, **kwargs):
                probe._close_step()

        trainer.add_callback(_Callback())

    def _timed(self, fn: Callable, key: str) -> Callable:
        def wrapper(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                out = fn(*args, **kwargs)
            finally:
                self.current[key] += time.perf_counter() - wall
                self.current[f"{key}_cpu"] += time.process_time() - cpu
            if key == "experience":
                self._lengths(out)
            return out

        return wrapper

    def _lengths(self, out: dict) -> None:
        """Completion lengths of the batch: on-policy vs expert rows and the padded width (the cost the
        token forwards actually pay)."""
        mask = out["completion_mask"]
        lengths = mask.sum(1).float()
        is_expert = out.get("is_expert")
        on = lengths if is_expert is None else lengths[~is_expert.bool()]
        self.current["len_on_policy"] = on.mean().item() if on.numel() else float("nan")
        if is_expert is not None and bool(is_expert.any()):
            self.current["len_expert"] = lengths[is_expert.bool()].mean().item()
            self.current["rows_expert"] = float(is_expert.sum().item())
        self.current["padded_width"] = float(mask.size(1))
        self.current["prompt_width"] = float(out["prompt_ids"].size(1))  # every row carries its whole prompt
        self.current["rows"] = float(mask.size(0))

    def _close_step(self) -> None:
        now = (time.perf_counter(), time.process_time())
        last = self._last or now
        record = dict(self.current)
        for suffix, i in (("", 0), ("_cpu", 1)):
            record[f"step{suffix}"] = now[i] - last[i]
            experience = record.pop(f"experience{suffix}", 0.0)
            parts = [record.setdefault(f"{k}{suffix}", 0.0) for k in ("generate", "score", "token_pass")]
            record[f"exp_other{suffix}"] = experience - sum(parts)
            record[f"update{suffix}"] = record[f"step{suffix}"] - experience
        self.records.append(record)
        self.current.clear()
        self._last = now


class OpProfile:
    """torch.profiler over the timed steps (after ``warmup``): self CPU time per op, and the time outside any
    op (Python, tokenization, logging). Says whether a step is bound by arithmetic or by overhead."""

    def __init__(self, trainer, warmup: int) -> None:
        from torch.profiler import ProfilerActivity, profile
        from transformers import TrainerCallback

        self.prof = profile(activities=[ProfilerActivity.CPU])
        self.started = False
        profiler = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == warmup and not profiler.started:
                    profiler.prof.start()
                    profiler.started = True

            def on_train_end(self, args, state, control, **kwargs):
                if profiler.started:
                    profiler.prof.stop()

        trainer.add_callback(_Callback())

    def top(self, steps: int, n: int = 12) -> dict[str, Any]:
        events = self.prof.key_averages()
        ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
        in_ops = sum(e.self_cpu_time_total for e in events) / 1e6
        return {
            "op_seconds_per_step": in_ops / steps,
            "top": [
                {
                    "op": e.key,
                    "calls_per_step": e.count / steps,
                    "self_s_per_step": e.self_cpu_time_total / 1e6 / steps,
                }
                for e in ops[:n]
            ],
        }


def stock_config_file(recipe: Path, out: Path) -> Path:
    """The recipe restricted to the keys stock TRL (and the script/model arguments) knows: the same
    TRL settings for stock GRPOTrainer as our GRPO, nothing TGRL-specific."""
    import yaml
    from trl import GRPOConfig, ModelConfig

    from tgrl.recipes import load_recipe
    from tgrl.tgrl_config import RLScriptArguments

    known = {f.name for cls in (GRPOConfig, ModelConfig, RLScriptArguments) for f in fields(cls)}
    kept = {k: v for k, v in load_recipe(recipe).items() if k in known}
    out.write_text(yaml.safe_dump(kept, sort_keys=False))
    return out


def child_main(args: argparse.Namespace) -> None:
    """Train one method for warmup + steps steps and write the per-step records (runs in its own process)."""
    import torch

    torch.set_num_threads(1)
    from trl import GRPOConfig, GRPOTrainer, ModelConfig

    from tgrl.modeling import load_policy, vision_guard
    from tgrl.recipes import parse_recipe
    from tgrl.rewards import get_reward_funcs
    from tgrl.rl_data import build_rl_dataset
    from tgrl.tgrl_config import RLScriptArguments
    from tgrl.trainer import TGRLConfig, TGRLTrainer

    out_dir = Path(args.run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = RECIPE_DIR / RECIPES[args.child]
    overrides = [
        f"output_dir={out_dir / 'run'}",
        f"model_name_or_path={args.base}",
        f"train_file={args.train}",
        f"max_steps={args.warmup + args.steps}",
        "save_strategy=no",
        "report_to=none",
        "logging_steps=1",
        "disable_tqdm=true",
    ]
    if args.batch:
        overrides.append(f"per_device_train_batch_size={args.batch}")
    if args.max_len:
        overrides.append(f"max_completion_length={args.max_len}")
    stock = args.child == "grpo_trl"
    config = stock_config_file(recipe, out_dir / "stock_recipe.yaml") if stock else recipe
    classes = (RLScriptArguments, GRPOConfig if stock else TGRLConfig, ModelConfig)
    (script_args, training_args, model_args), _ = parse_recipe(classes, ["--config", str(config), *overrides])

    dataset = build_rl_dataset(script_args.train_file)
    model, processor = load_policy(model_args, script_args.min_pixels, script_args.max_pixels)
    rewards = get_reward_funcs(script_args.reward_funcs)
    if stock:
        # TGRLTrainer adds this itself; stock TRL needs it too (a sampled <|image_pad|> crashes the step)
        training_args.generation_kwargs = vision_guard(
            training_args.generation_kwargs, processor.tokenizer, training_args.use_vllm
        )
        trainer = GRPOTrainer(
            model, rewards, args=training_args, train_dataset=dataset, processing_class=processor
        )
    else:
        trainer = TGRLTrainer(
            model, rewards, args=training_args, train_dataset=dataset, processing_class=processor
        )
    probe = StepProbe(trainer)
    profiler = OpProfile(trainer, args.warmup) if args.profile else None
    trainer.train()
    result = {
        "method": args.child,
        "recipe": str(recipe.relative_to(REPO)),
        "rows_per_step": training_args.per_device_train_batch_size,
        "num_generations": training_args.num_generations,
        "max_completion_length": training_args.max_completion_length,
        "torch_threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "records": probe.records,
        "ops": profiler.top(args.steps) if profiler else None,
    }
    Path(args.result).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------
# orchestration: interleaved rounds, summaries, ratios


def _median(values: Sequence[float]) -> float | None:
    clean = [v for v in values if v == v]  # drop NaN
    return round(statistics.median(clean), 4) if clean else None


def _mean(values: Sequence[float]) -> float | None:
    clean = [v for v in values if v == v]
    return round(statistics.fmean(clean), 4) if clean else None


def summarize(method: str, runs: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Pooled timed steps of all rounds of one method: median and mean per phase (wall and CPU),
    lengths, memory. Medians of the phases need not add up to the median step; the means do."""
    timed = [rec for run in runs for rec in run["records"][warmup:]]
    if not timed:
        raise RuntimeError(f"{method}: no timed steps (raise --steps or lower --warmup)")
    summary: dict[str, Any] = {"bench": "step", "method": method}
    for stat, fn in (("median", _median), ("mean", _mean)):
        for suffix in ("", "_cpu"):
            for phase in PHASES:
                summary[f"{stat}_{phase}{suffix}_s"] = fn([r[f"{phase}{suffix}"] for r in timed])
    for suffix in ("", "_cpu"):
        summary[f"round_median_step{suffix}_s"] = [
            _median([r[f"step{suffix}"] for r in run["records"][warmup:]]) for run in runs
        ]
    summary["steps_timed"] = len(timed)
    summary["rounds"] = len(runs)
    summary["len_on_policy"] = _mean([r.get("len_on_policy", float("nan")) for r in timed])
    summary["len_expert"] = _mean([r.get("len_expert", float("nan")) for r in timed])
    summary["padded_width"] = _mean([r.get("padded_width", float("nan")) for r in timed])
    summary["prompt_width"] = _mean([r.get("prompt_width", float("nan")) for r in timed])
    if first_ops := runs[0].get("ops"):
        summary["ops"] = first_ops  # --profile: the first round's op profile
    first = runs[0]
    summary["rows_per_step"] = first["rows_per_step"]
    summary["num_generations"] = first["num_generations"]
    summary["max_completion_length"] = first["max_completion_length"]
    summary["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
    summary["process_wall_s"] = [run["process_wall_s"] for run in runs]
    return summary


def ratio_records(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Median-step ratios (wall: judged against the target; CPU: the contention-proof check), plus the
    median of per-round wall ratios (drift check)."""
    out = []
    for num, den, target in RATIOS:
        if num not in summaries or den not in summaries:
            continue
        a, b = summaries[num], summaries[den]
        ratio = a["median_step_s"] / b["median_step_s"]
        per_round = [
            x / y for x, y in zip(a["round_median_step_s"], b["round_median_step_s"], strict=False) if x and y
        ]
        record = {
            "bench": "step_ratio",
            "name": f"{num}/{den}",
            "ratio": round(ratio, 4),
            "cpu_ratio": round(a["median_step_cpu_s"] / b["median_step_cpu_s"], 4),
            "mean_ratio": round(a["mean_step_s"] / b["mean_step_s"], 4),
            "median_round_ratio": round(statistics.median(per_round), 4) if per_round else None,
            "round_ratios": [round(r, 4) for r in per_round],
            "target_max": target,
        }
        if target is not None:
            record["ok"] = ratio <= target
        out.append(record)
    return out


def step_table(summaries: dict[str, dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    header = ["method", "step", *PHASES[1:], "step CPU", "len on/exp/pad", "RSS MB"]
    rows = []
    for method, s in summaries.items():
        lengths = "/".join(
            "-" if s[k] is None else f"{s[k]:.1f}" for k in ("len_on_policy", "len_expert", "padded_width")
        )
        rows.append(
            [
                method,
                *(f"{s[f'median_{p}_s']:.3f}" for p in PHASES),
                f"{s['median_step_cpu_s']:.3f}",
                lengths,
                f"{s['peak_rss_mb']:.0f}",
            ]
        )
    lines = [
        "median seconds per optimizer step (wall unless noted; pooled over rounds, warm-up excluded)",
        format_table(header, rows),
    ]
    for r in ratios:
        verdict = (
            ""
            if r["target_max"] is None
            else f"  target <= {r['target_max']:.2f}: {'OK' if r['ok'] else 'MISSED'}"
        )
        lines.append(
            f"{r['name']}: {r['ratio']:.3f} wall (CPU {r['cpu_ratio']:.3f}, mean {r['mean_ratio']:.3f}, "
            f"per-round {r['round_ratios']}){verdict}"
        )
    return "\n".join(lines)


def op_table(method: str, summary: dict[str, Any]) -> str:
    """The --profile table of one method: the top ops by self CPU time per step, and the step's time outside
    any op; plus the share of the step's sequence positions that are prompt (each rollout repeats it)."""
    ops, step = summary["ops"], summary["mean_step_cpu_s"]
    rows = [
        [
            o["op"][:48],
            f"{o['self_s_per_step']:.4f}",
            f"{o['self_s_per_step'] / step:.1%}",
            f"{o['calls_per_step']:.0f}",
        ]
        for o in ops["top"]
    ]
    outside = step - ops["op_seconds_per_step"]
    rows.append(
        ["(outside any op: Python, tokenizer, logging)", f"{outside:.4f}", f"{outside / step:.1%}", ""]
    )
    prompt, completion = summary["prompt_width"], summary["padded_width"]
    share = prompt / (prompt + completion)
    head = (
        f"{method}: ops by self CPU time per step (profiled run, mean step {step:.3f} s CPU). Prompt "
        f"positions: {prompt:.0f} of {prompt + completion:.0f} per row ({share:.0%}); each prompt repeats "
        f"in the {summary['num_generations']} rows of its group"
    )
    return head + "\n" + format_table(["op", "s/step", "share", "calls/step"], rows)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_asset_args(ap)
    ap.add_argument("--train", help="RL problem JSONL with meta.expert (default: the prepared one)")
    ap.add_argument(
        "--methods", nargs="+", default=["grpo_trl", "grpo", "tgrl", "luffy"], choices=list(RECIPES)
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each runs every method once)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps per run")
    ap.add_argument("--batch", type=int, help="rollouts per step (default: the recipe's 32 = 4 prompts x 8)")
    ap.add_argument("--max-len", type=int, help="max_completion_length (default: the recipe's 64)")
    ap.add_argument("--out", help="write all measurements (incl. per-step records) as one JSON file")
    ap.add_argument(
        "--profile", action="store_true", help="also profile the timed steps' ops (torch.profiler; slower)"
    )
    # internal: one run of one method (the orchestrator starts these)
    ap.add_argument("--child", choices=list(RECIPES), help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        child_main(args)
        return 0

    with tempfile.TemporaryDirectory(prefix="tgrl_bench_") as tmp:
        work = Path(args.work).resolve() if args.work else Path(tmp)
        assets = assets_from_args(args, work)
        train = assets.train
        note(f"base: {assets.base_source}")
        records: list[dict[str, Any]] = []
        runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for r, method in interleaved(args.methods, args.rounds):
            run_dir = work / "step_runs" / f"{stamp}_{method}_r{r}"
            result = run_dir / "result.json"
            cmd = [PY, Path(__file__).resolve(), "--child", method, "--run-dir", run_dir, "--result", result]
            cmd += ["--base", assets.base, "--train", train, "--steps", args.steps, "--warmup", args.warmup]
            if args.batch:
                cmd += ["--batch", str(args.batch)]
            if args.max_len:
                cmd += ["--max-len", str(args.max_len)]
            if args.profile:
                cmd += ["--profile"]
            measured = run_measured(cmd, run_dir / "log.txt")
            run = json.loads(result.read_text())
            run.update(round=r, peak_rss_mb=measured.peak_rss_mb, process_wall_s=measured.wall_s)
            runs[method].append(run)
            steps = [rec["step"] for rec in run["records"][args.warmup :]]
            cpu = [rec["step_cpu"] for rec in run["records"][args.warmup :]]
            note(f"round {r} {method}: median step {_median(steps)} s wall, {_median(cpu)} s CPU")
        summaries = {m: summarize(m, runs[m], args.warmup) for m in args.methods}
        for summary in summaries.values():
            emit(summary, records)
        ratios = ratio_records(summaries)
        for record in ratios:
            emit(record, records)
        print(step_table(summaries, ratios), flush=True)
        for method, summary in summaries.items():
            if summary.get("ops"):
                print(op_table(method, summary), flush=True)
        write_out(
            args.out,
            {
                "bench": "step",
                "settings": {k: v for k, v in vars(args).items() if k not in ("child", "run_dir", "result")},
                "assets": asdict(assets),
                "measurements": records,
                "runs": {m: runs[m] for m in args.methods},
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
