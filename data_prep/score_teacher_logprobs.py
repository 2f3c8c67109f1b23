"""Store the teacher's per-token log-probs of each expert trajectory (for ``expert_ratio: teacher_is``).

    python data_prep/score_teacher_logprobs.py --data data/tgrl/oracle/train.jsonl \\
        --teacher checkpoints/teacher --policy checkpoints/tiny_base --temperature 1.0

The true importance ratio needs pi_teacher of every expert token in the policy's tokenization, which
generation backends do not report, so this re-scores the final texts with a local copy of the teacher.
Why, the outputs and resume: docs/design.md#42-trajectories.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tgrl.data import load_problems
from tgrl.modeling import response_token_ids
from tgrl.probe import response_logprobs
from tgrl.rl_data import expert_text
from tgrl.teachers.base import parse_args_with_config, required
from tgrl.utils import (
    UserError,
    append_jsonl,
    cli,
    cpu_threads,
    git_commit,
    package_versions,
    read_jsonl,
    repair_torn_tail,
    set_torch_threads,
    sha256_file,
    write_json,
    write_jsonl,
)

SETTINGS_KEY = "_settings"  # first line of the resume log: what the scores were made with


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    required(
        p.add_argument("--data", type=Path, help="training set from filter_trajectories.py (train.jsonl)")
    )
    required(p.add_argument("--teacher", type=str, help="the teacher checkpoint (local folder or hub id)"))
    p.add_argument("--policy", type=str, default=None, help="policy checkpoint whose tokenizer must match")
    p.add_argument("--temperature", type=float, default=1.0, help="the teacher's sampling temperature")
    p.add_argument("--out-name", default="train.teacher_is.jsonl", help="output file name (next to --data)")
    p.add_argument("--batch-size", type=int, default=8, help="trajectories per forward pass")
    p.add_argument("--dtype", default="float32", help="teacher dtype (float32 | bfloat16 | auto)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (shard over all GPUs)")
    p.add_argument(
        "--min-pixels",
        type=int,
        default=None,
        help="teacher processor min_pixels (default: the checkpoint's; GPU tier: tgrl.pixels.DEFAULT_BUDGET)",
    )
    p.add_argument("--max-pixels", type=int, default=None, help="as --min-pixels")
    p.add_argument("--force", action="store_true", help="discard scores made with other settings")
    p.add_argument("--no-progress", action="store_true")
    return p


def check_same_tokenizer(teacher_tok, policy_tok, teacher: str, policy: str) -> None:
    """Token-level ratios need one tokenization: the same vocabulary and end-of-turn token."""
    if (
        teacher_tok.get_vocab() != policy_tok.get_vocab()
        or teacher_tok.eos_token_id != policy_tok.eos_token_id
    ):
        raise UserError(
            f"the teacher ({teacher}) and the policy ({policy}) tokenize differently, so per-token teacher "
            "log-probs cannot be aligned with the policy's tokens. Fix: use a teacher from the policy's "
            "family, or train with expert_ratio shaped / raw_p (no teacher log-probs needed)"
        )


def load_resume_log(path: Path, settings: dict, force: bool) -> dict[str, list[float]]:
    """Scores already computed with these settings (``{}`` for a fresh run)."""
    if not path.exists():
        return {}
    repair_torn_tail(path)  # a kill mid-write leaves half a line: cut it so appends start clean
    rows = [row for _, row in read_jsonl(path)]
    if not rows:  # killed while writing the header: nothing was scored
        path.unlink()
        return {}
    if rows[0].get(SETTINGS_KEY) != settings:
        if not force:
            raise UserError(
                f"{path} holds scores made with other inputs or settings; pass --force to discard them "
                "or --out-name to write elsewhere"
            )
        path.unlink()
        return {}
    return {row["id"]: row["teacher_logprobs"] for row in rows[1:]}


@cli
def main(argv: list[str] | None = None) -> dict:
    args = parse_args_with_config(build_parser(), argv)
    if args.temperature <= 0 or args.batch_size < 1:
        raise UserError("--temperature must be > 0 and --batch-size >= 1")
    set_torch_threads(cpu_threads(args.device))
    t0 = time.time()
    out = args.data.parent / args.out_name
    if out.resolve() == args.data.resolve():
        raise UserError(
            f"--out-name {args.out_name} would overwrite the input {args.data}; choose another name"
        )
    log_path = out.with_name(out.name + ".partial.jsonl")
    manifest_path = out.with_name(out.name + ".manifest.json")
    settings = {
        "data_sha256": sha256_file(args.data) if args.data.exists() else None,
        "teacher": args.teacher,
        "temperature": args.temperature,
        "dtype": args.dtype,
        "min_pixels": args.min_pixels,
        "max_pixels": args.max_pixels,
    }
    problems = load_problems(args.data)
    raw_rows = [row for _, row in read_jsonl(args.data)]
    todo_ids = [p.id for p in problems if expert_text(p)]
    scores = load_resume_log(log_path, settings, args.force)

    missing = [p for p in problems if expert_text(p) and p.id not in scores]
    if missing:
        from tqdm import tqdm

        from tgrl.modeling import load_model_and_processor, load_processor

        model, processor = load_model_and_processor(
            args.teacher,
            dtype=args.dtype,
            device=args.device,
            min_pixels=args.min_pixels,
            max_pixels=args.max_pixels,
        )
        tokenizer = processor.tokenizer
        if args.policy:
            policy_tok = load_processor(args.policy).tokenizer
            check_same_tokenizer(tokenizer, policy_tok, args.teacher, args.policy)
        if not log_path.exists():
            append_jsonl(log_path, [{SETTINGS_KEY: settings}])
        missing.sort(key=lambda p: len(expert_text(p)), reverse=True)  # similar lengths share a batch
        bar = tqdm(total=len(missing), desc="teacher log-probs", disable=args.no_progress)
        for start in range(0, len(missing), args.batch_size):
            chunk = missing[start : start + args.batch_size]
            ids = [response_token_ids(tokenizer, expert_text(p)) for p in chunk]
            logp, _ = response_logprobs(
                model,
                processor,
                [p.question for p in chunk],
                [p.load_images() for p in chunk],
                [p.choices for p in chunk],
                ids,
                temperature=args.temperature,
            )
            rows = [
                {"id": p.id, "teacher_logprobs": [round(v, 4) for v in logp[i, : len(ids[i])].tolist()]}
                for i, p in enumerate(chunk)
            ]
            append_jsonl(log_path, rows)  # durable before the next batch: a kill loses one batch at most
            scores.update({r["id"]: r["teacher_logprobs"] for r in rows})
            bar.update(len(chunk))
        bar.close()

    for row in raw_rows:
        expert = (row.get("meta") or {}).get("expert")
        if expert:
            expert["teacher_logprobs"] = scores[row["id"]]
    write_jsonl(out, raw_rows)
    flat = [v for i in todo_ids for v in scores[i]]
    manifest = {
        "data": str(args.data),
        "out": str(out),
        "settings": settings,
        "policy": args.policy,
        "problems": len(problems),
        "scored": len(todo_ids),
        "scored_this_run": len(missing),
        "tokens": len(flat),
        "mean_teacher_logprob": sum(flat) / len(flat) if flat else None,
        "wall_s": round(time.time() - t0, 2),
        "git_commit": git_commit(),
        "versions": package_versions(),
    }
    write_json(manifest_path, manifest)
    print(
        f"[teacher-logprobs] {len(todo_ids)}/{len(problems)} problems have an expert; "
        f"scored {len(missing)} now; {len(flat)} tokens, mean log-prob {manifest['mean_teacher_logprob']} "
        f"-> {out}"
    )
    return manifest


if __name__ == "__main__":
    main()
