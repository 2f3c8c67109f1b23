"""Filter teacher trajectories (F1-F4, docs/design.md#52-filtering) into the TGRL training set.

    python data_prep/filter_trajectories.py --data data/synthetic/train.jsonl \\
        --trajectories data/teacher/oracle/trajectories.jsonl --policy checkpoints/tiny-init \\
        --out data/tgrl/oracle --max-completion-tokens 64

``--max-completion-tokens`` must equal the trainer's ``max_completion_length``; every flag can also
come from ``--config file.yaml``. Outputs and rerun rules: docs/design.md#42-trajectories.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tgrl.data import load_problems
from tgrl.filters import FilterConfig, expert_entry, filter_trajectories
from tgrl.teachers.base import parse_args_with_config, required
from tgrl.utils import (
    UserError,
    cli,
    cpu_threads,
    git_commit,
    package_versions,
    read_jsonl,
    set_torch_threads,
    sha256_file,
    write_json,
    write_jsonl,
)

NEW_SWITCHES = ("f4_quantile", "f3_random_survivor")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    required(p.add_argument("--data", type=Path, help="the problem JSONL the trajectories were built from"))
    required(p.add_argument("--trajectories", type=Path, help="trajectories.jsonl (merged if sharded)"))
    required(p.add_argument("--out", type=Path, help="output folder for the training set"))
    p.add_argument(
        "--policy",
        type=str,
        default=None,
        help="initial policy checkpoint (tokenizer for F2, model for F3/F4)",
    )
    p.add_argument("--no-f1", dest="f1", action="store_false", help="keep incorrect trajectories (ablation)")
    p.add_argument(
        "--no-f2", dest="f2", action="store_false", help="skip the format/length filter (ablation)"
    )
    p.add_argument(
        "--no-f3", dest="f3", action="store_false", help="select by lowest sample_idx, not log-prob"
    )
    p.add_argument(
        "--f3-random-survivor",
        action="store_true",
        help="F3 off, and a survivor drawn at random (seeded by --seed and the problem id) is selected",
    )
    p.add_argument("--f4", dest="f4", action="store_true", help="enable the visual-dependency filter")
    p.add_argument(
        "--f4-quantile",
        type=float,
        default=None,
        help="F4 on, rejecting survivors whose mean s_t is below this quantile of all survivors' (e.g. 0.25)",
    )
    p.add_argument("--max-completion-tokens", type=int, default=1024, help="rollout max length (F2)")
    p.add_argument("--f3-min-logprob", type=float, default=None, help="reject mean log-prob below this")
    p.add_argument("--f4-min", type=float, default=0.0, help="reject mean visual dependency s_t below this")
    p.add_argument(
        "--perturb-mode", default="patch_blackening", choices=["patch_blackening", "noise", "full_mask"]
    )
    p.add_argument("--perturb-patch-size", type=int, default=14)
    p.add_argument("--perturb-prob", type=float, default=0.5)
    p.add_argument(
        "--no-eos", dest="append_eos", action="store_false", help="do not count the end-of-turn token"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (F3/F4)")
    p.add_argument("--dtype", default="float32", help="policy dtype for F3/F4 (float32 | bfloat16 | auto)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--min-pixels",
        type=int,
        default=None,
        help="policy processor min_pixels (default: the checkpoint's; GPU tier: scripts/build_teacher_7b.sh "
        "passes tgrl.pixels.DEFAULT_BUDGET, the 7B recipes' value)",
    )
    p.add_argument("--max-pixels", type=int, default=None, help="as --min-pixels")
    p.add_argument("--no-check-images", action="store_true")
    p.add_argument("--force", action="store_true", help="replace an output made with other settings")
    p.add_argument("--no-progress", action="store_true")
    return p


def relative_images(images: list[str], src_dir: Path, out_dir: Path) -> list[str]:
    """Image paths re-expressed relative to the output folder (the training set can live anywhere)."""
    return [os.path.relpath((src_dir / im).resolve(), out_dir.resolve()) for im in images]


@cli
def main(argv: list[str] | None = None) -> dict:
    args = parse_args_with_config(build_parser(), argv)
    set_torch_threads(cpu_threads(args.device))
    t0 = time.time()
    config = FilterConfig(
        f1_correct=args.f1,
        f2_format_length=args.f2,
        max_completion_tokens=args.max_completion_tokens,
        append_eos=args.append_eos,
        f3_logprob=args.f3 and not args.f3_random_survivor,
        min_mean_logprob=args.f3_min_logprob,
        f4_visual_dependency=args.f4 or args.f4_quantile is not None,
        min_visual_dependency=args.f4_min,
        f4_quantile=args.f4_quantile,
        f3_random_survivor=args.f3_random_survivor,
        perturb_mode=args.perturb_mode,
        perturb_patch_size=args.perturb_patch_size,
        perturb_prob=args.perturb_prob,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    if args.max_completion_tokens < 1 or args.batch_size < 1:
        raise UserError("--max-completion-tokens and --batch-size must be >= 1")
    out: Path = args.out
    manifest_path = out / "manifest.json"
    inputs = {
        "data": {"path": str(args.data), "sha256": sha256_file(args.data) if args.data.exists() else None},
        "trajectories": {
            "path": str(args.trajectories),
            "sha256": sha256_file(args.trajectories) if args.trajectories.exists() else None,
        },
        "policy": args.policy,
    }
    run_key = {
        "inputs": inputs,
        # the newer switches only when set: training sets built before they existed stay valid
        "config": {k: v for k, v in config.__dict__.items() if k not in NEW_SWITCHES or v},
        "dtype": args.dtype,
        "min_pixels": args.min_pixels,
        "max_pixels": args.max_pixels,
    }
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if old.get("run_key") == run_key and (out / "train.jsonl").exists():
            print(f"[filter] {out} already holds this training set (same inputs and settings); nothing to do")
            return old
        if not args.force:
            raise UserError(
                f"{out} holds a training set made from other inputs or settings; "
                "pass --force or another --out"
            )
    if (config.f2_format_length or config.needs_model()) and not args.policy:
        raise UserError("--policy is required for F2 (tokenizer) and F3/F4 (model); or pass --no-f2 --no-f3")

    timings: dict[str, float] = {}
    t = time.time()
    problems = load_problems(args.data, check_images=not args.no_check_images)
    trajectories = [row for _, row in read_jsonl(args.trajectories)]
    teacher_manifest = args.trajectories.parent / "manifest.json"
    teacher_info = None
    if teacher_manifest.exists():
        tm = json.loads(teacher_manifest.read_text(encoding="utf-8"))
        teacher_info = {k: tm.get(k) for k in ("teacher", "backend", "settings", "fingerprint", "complete")}
        if tm.get("complete") is False:
            print(f"[filter] warning: {teacher_manifest} says the teacher run is incomplete", file=sys.stderr)

    timings["load_inputs_s"] = round(time.time() - t, 3)
    t = time.time()
    model = processor = None
    if args.policy:
        from tgrl.modeling import load_model_and_processor, load_processor

        if config.needs_model():
            model, processor = load_model_and_processor(
                args.policy,
                dtype=args.dtype,
                device=args.device,
                min_pixels=args.min_pixels,
                max_pixels=args.max_pixels,
            )
        else:
            processor = load_processor(args.policy, args.min_pixels, args.max_pixels)

    timings["load_policy_s"] = round(time.time() - t, 3)
    t = time.time()
    bar = None
    if config.needs_model() and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=None, desc="filter F3/F4 forward", unit="seq", dynamic_ncols=True)
    result = filter_trajectories(
        problems,
        trajectories,
        config,
        model=model,
        processor=processor,
        progress=bar.update if bar is not None else None,
    )
    if bar is not None:
        bar.close()

    timings["filter_s"] = round(time.time() - t, 3)
    t = time.time()
    src_dir = Path(args.data).parent
    rows = []
    for p in problems:
        rec = p.to_record()
        rec["images"] = relative_images(p.images, src_dir, out)
        rec["meta"] = {**rec["meta"], "expert": expert_entry(result.selected[p.id])}
        rows.append(rec)
    manifest_path.unlink(missing_ok=True)  # written last: its presence marks a finished output
    write_jsonl(out / "train.jsonl", rows)
    write_jsonl(out / "trajectories.filtered.jsonl", result.trajectories)
    timings["write_s"] = round(time.time() - t, 3)
    from tgrl.pixels import budget_of

    manifest = {
        "run_key": run_key,
        "pixel_budget": None if processor is None else budget_of(processor.image_processor).as_dict(),
        "teacher": teacher_info,
        "counts": result.counts,
        "outputs": {
            "train.jsonl": sha256_file(out / "train.jsonl"),
            "trajectories.filtered.jsonl": sha256_file(out / "trajectories.filtered.jsonl"),
        },
        "wall_time_s": round(time.time() - t0, 3),
        "timings": timings,
        "git_commit": git_commit(),
        "versions": package_versions(),
    }
    write_json(manifest_path, manifest)
    pc, tc = result.counts["problems"], result.counts["trajectories"]
    print(
        f"[filter] {tc['in']} trajectories -> {tc['kept']} experts; problems with expert "
        f"{pc['with_expert']}/{pc['in']}; rejects {tc['reject_reasons']}; "
        f"{manifest['wall_time_s']:.1f}s -> {out}"
    )
    return manifest


if __name__ == "__main__":
    main()

# Expected (tiny tier, 3000 problems, oracle K=4 wrong_fact_rate 0.2 seed 0, tiny-init policy, max 64 tokens,
# measured on a 2-core CPU): 12000 trajectories; F1 rejects 1997 (incorrect); F2 0; one expert for 2994/3000
# problems (6 without); fact accuracy 0.80 over all trajectories, 0.94 over the kept ones; ~21 s wall.
