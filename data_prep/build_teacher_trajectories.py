"""Sample K expert trajectories per problem from a teacher (docs/design.md#51-teachers): append-only,
resumable, shardable.

    python data_prep/build_teacher_trajectories.py --data data/synthetic/train.jsonl \\
        --out data/teacher/oracle --backend oracle --k 4 --seed 0 --wrong-fact-rate 0.2

Backends ``oracle``, ``hf``, ``vllm``, ``openai``; every flag can also come from ``--config file.yaml``.
Output, resume, failed and skipped problems, shards: docs/design.md#42-trajectories.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from collections import Counter
from pathlib import Path
from typing import Any

from tgrl.data import Problem, load_problems
from tgrl.teachers import (
    TEACHER_BACKENDS,
    SampleSettings,
    TeacherJob,
    get_teacher_class,
    make_teacher,
    stable_int,
)
from tgrl.teachers.base import TeacherInput, parse_args_with_config, required
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
)

EXIT_INCOMPLETE = 3
# Backend options that change speed or robustness, never the trajectories: a resumed run may change them.
OPERATIONAL_OPTIONS = {
    "batch_size",
    "device",
    "max_concurrency",
    "max_retries",
    "request_timeout",
    "backoff_base",
    "backoff_max",
    "retry_after_max",
    "gpu_memory_utilization",
    "enforce_eager",
    "max_num_seqs",
    "max_images_per_prompt",
}


def shard_name(stem: str, suffix: str, num_shards: int, shard_index: int) -> str:
    if num_shards == 1:
        return f"{stem}{suffix}"
    return f"{stem}.shard-{shard_index:05d}-of-{num_shards:05d}{suffix}"


def in_shard(problem_id: str, num_shards: int, shard_index: int) -> bool:
    """Deterministic split by a stable hash of the id: independent of file order and of --limit."""
    return num_shards == 1 or stable_int("tgrl-shard", problem_id, bits=62) % num_shards == shard_index


def read_done(path: Path) -> dict[tuple[str, int], float | None]:
    """Finished (id, sample_idx) -> reward (only what resuming and the manifest need, so a 150k-sample
    log does not sit in memory); a duplicate in the log is an error (it never should be)."""
    done: dict[tuple[str, int], float | None] = {}
    if not path.exists():
        return done
    for line, row in read_jsonl(path, tolerate_torn_tail=True):
        key = (row["id"], int(row["sample_idx"]))
        if key in done:
            raise UserError(f"{path}:{line}: (id={key[0]!r}, sample_idx={key[1]}) is written twice")
        done[key] = row.get("reward")
    return done


def previous_skips(previous: dict | None, problems: dict) -> dict[str, str]:
    """Problems an earlier run with the same settings recorded as skipped (id -> reason)."""
    entries = (previous or {}).get("skipped") or []
    return {e["id"]: e["reason"] for e in entries if e.get("id") in problems}


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def _backend_option_specs() -> dict[str, tuple[Any, dict[str, Any]]]:
    """Every backend option as (type, {backend: default}), from the backends' Options dataclasses."""
    specs: dict[str, tuple[Any, dict[str, Any]]] = {}
    for backend in TEACHER_BACKENDS:
        cls = get_teacher_class(backend)
        hints = typing.get_type_hints(cls.Options)
        for f in dataclasses.fields(cls.Options):
            tp = hints[f.name]
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            specs.setdefault(f.name, (args[0] if args else tp, {}))[1][backend] = f.default
    return specs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    required(parser.add_argument("--data", type=Path, help="problem JSONL (schema: tgrl.data)"))
    required(parser.add_argument("--out", type=Path, help="output folder"))
    required(parser.add_argument("--backend", choices=sorted(TEACHER_BACKENDS), help="teacher backend"))
    parser.add_argument(
        "--k", type=int, default=4, help="samples per problem (docs/design.md#51-teachers: 4)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=1024, help="teacher's max new tokens per sample")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems (smoke runs)")
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--shard-index", type=int, default=0)
    parser.add_argument("--no-check-images", action="store_true", help="skip decoding every image up front")
    parser.add_argument("--force", action="store_true", help="discard trajectories made with other settings")
    parser.add_argument(
        "--retry-skipped", action="store_true", help="try again the problems the manifest lists as skipped"
    )
    parser.add_argument("--flush-every", type=int, default=64, help="append after this many samples")
    parser.add_argument("--manifest-every", type=float, default=30.0, help="seconds between manifest updates")
    parser.add_argument("--no-progress", action="store_true")
    group = parser.add_argument_group("backend options (each applies to the backends named in its help)")
    for name, (tp, defaults) in _backend_option_specs().items():
        flag = "--" + name.replace("_", "-")
        help_text = "default " + ", ".join(f"{backend}: {default!r}" for backend, default in defaults.items())
        if tp is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif tp is dict:
            group.add_argument(flag, dest=name, type=json.loads, default=None, help=help_text + " (JSON)")
        else:
            group.add_argument(flag, dest=name, type=tp, default=None, help=help_text)
    return parser


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


class Builder:
    """One run over one shard: plan what is missing, generate, append, keep the manifest current."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        if args.k < 1:
            raise UserError(f"--k must be >= 1, got {args.k}")
        if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
            raise UserError(f"--shard-index must be in [0, {args.num_shards}) and --num-shards >= 1")
        self.settings = SampleSettings(
            temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed
        )
        specs = _backend_option_specs()
        self.options = {name: getattr(args, name) for name in specs if getattr(args, name) is not None}
        self.out: Path = args.out
        self.traj_path = self.out / shard_name("trajectories", ".jsonl", args.num_shards, args.shard_index)
        self.manifest_path = self.out / shard_name("manifest", ".json", args.num_shards, args.shard_index)

    def fingerprint(self, data_sha: str) -> dict[str, Any]:
        """What determines the trajectories: a resumed run must match it exactly."""
        a = self.args
        return {
            "backend": a.backend,
            "teacher_options": {
                k: v for k, v in sorted(self.options.items()) if k not in OPERATIONAL_OPTIONS
            },
            "k": a.k,
            **dataclasses.asdict(self.settings),
            "data_sha256": data_sha,
            "num_shards": a.num_shards,
            "shard_index": a.shard_index,
        }

    def check_resume(self, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            if self.traj_path.exists() and self.traj_path.stat().st_size > 0 and not self.args.force:
                raise UserError(
                    f"{self.traj_path} exists without {self.manifest_path.name}; pass --force to start over"
                )
            return None
        old = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        if old.get("fingerprint") == fingerprint:
            return old
        if not self.args.force:
            prev = old.get("fingerprint", {})
            diff = sorted(k for k in set(prev) | set(fingerprint) if prev.get(k) != fingerprint.get(k))
            raise UserError(
                f"{self.out} holds trajectories made with other settings (differs in {diff}). "
                "Fix: pass --force to discard them, or choose another --out"
            )
        return None

    def run(self) -> int:
        a = self.args
        t_start = time.time()
        problems: list[Problem] = load_problems(a.data, check_images=not a.no_check_images)
        n_in_file = len(problems)
        problems = [p for p in problems if in_shard(p.id, a.num_shards, a.shard_index)]
        if a.limit is not None:
            problems = problems[: a.limit]
        data_sha = sha256_file(a.data)
        fingerprint = self.fingerprint(data_sha)
        previous = self.check_resume(fingerprint)
        if previous is None:
            self.traj_path.unlink(missing_ok=True)
            self.manifest_path.unlink(missing_ok=True)
        cut = repair_torn_tail(self.traj_path)
        if cut:
            print(
                f"[teacher] cut a torn last line ({cut} bytes) from {self.traj_path}; it will be regenerated"
            )
        done = read_done(self.traj_path)
        by_id = {p.id: p for p in problems}
        skipped = {} if a.retry_skipped else previous_skips(previous, by_id)
        jobs = []
        for p in problems:
            missing = tuple(i for i in range(a.k) if (p.id, i) not in done)
            if missing and p.id not in skipped:
                jobs.append(TeacherJob(TeacherInput.from_problem(p), missing))
        n_missing = sum(len(j.sample_indices) for j in jobs)
        expected = len(problems) * a.k
        self.state = {
            "problems": problems,
            "n_in_file": n_in_file,
            "data_sha": data_sha,
            "fingerprint": fingerprint,
            "previous_wall": float((previous or {}).get("total_wall_time_s", 0.0)),
            "t_start": t_start,
            "generated": 0,
            "failed": 0,
            "failures": [],
            "skipped": skipped,
            "finish": Counter(),
        }
        if n_missing == 0:
            n_skipped = sum(1 for pid in skipped for i in range(a.k) if (pid, i) not in done)
            print(
                f"[teacher] {self.traj_path}: all {expected - n_skipped} samples present"
                + (f", {len(skipped)} problems skipped (the manifest's 'skipped')" if skipped else "")
                + "; nothing to do"
            )
            if not (previous and previous.get("complete") and not previous.get("running")):
                self.write_manifest(done, teacher_info=(previous or {}).get("teacher_info"), final=True)
            return 0
        print(
            f"[teacher] {len(problems)} problems x {a.k} samples = {expected}; {expected - n_missing} done, "
            f"{n_missing} to generate with backend {a.backend!r} -> {self.traj_path}"
        )
        # The manifest exists (running) before the first append, so a kill at any moment resumes.
        self.write_manifest(done, teacher_info=None, final=False)
        options = dict(self.options)
        if a.backend == "vllm" and "max_images_per_prompt" not in options:
            options["max_images_per_prompt"] = max(len(p.images) for p in problems)  # vLLM's mm limit
        teacher = make_teacher(a.backend, self.settings, options)
        from tgrl.rewards import warm_up

        warm_up()  # math-verify's one-time cold start, before the first bounded comparison (record())
        bar = None
        if not a.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=n_missing, desc="teacher", unit="sample", dynamic_ncols=True)
        buffer: list[dict] = []
        last_manifest = time.time()
        try:
            for samples in teacher.generate(jobs):
                for s in samples:
                    if s.skipped:  # this problem cannot run under these settings: record it, go on
                        self.state["skipped"].setdefault(s.id, s.error or "skipped by the backend")
                        continue
                    if s.text is None:
                        self.state["failed"] += 1
                        if len(self.state["failures"]) < 20:
                            self.state["failures"].append(
                                {"id": s.id, "sample_idx": s.sample_idx, "error": s.error}
                            )
                        continue
                    record = self.record(by_id[s.id], s, teacher.name)
                    buffer.append(record)
                    done[(s.id, s.sample_idx)] = record["reward"]
                    self.state["generated"] += 1
                    self.state["finish"][s.finish_reason or "unknown"] += 1
                if bar is not None:
                    bar.update(len(samples))
                    if self.state["failed"]:
                        bar.set_postfix(failed=self.state["failed"])
                if len(buffer) >= a.flush_every:
                    append_jsonl(self.traj_path, buffer)
                    buffer = []
                if time.time() - last_manifest >= a.manifest_every:
                    append_jsonl(self.traj_path, buffer)
                    buffer = []
                    self.write_manifest(done, teacher.describe(), final=False)
                    last_manifest = time.time()
        finally:
            append_jsonl(self.traj_path, buffer)
            if bar is not None:
                bar.close()
            self.write_manifest(done, teacher.describe(), final=True)
            teacher.close()
        manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        c = manifest["counts"]
        print(
            f"[teacher] wrote {self.state['generated']} samples in {manifest['wall_time_s']:.1f}s "
            f"({manifest['throughput_samples_per_s']:.1f}/s); {c['done']}/{c['expected']} done; "
            f"mean reward {c['reward_mean']}; manifest {self.manifest_path}"
        )
        if self.state["skipped"]:
            first_id, first_reason = next(iter(self.state["skipped"].items()))
            print(
                f"[teacher] {len(self.state['skipped'])} problems skipped (reasons in the manifest's "
                f"'skipped'; --retry-skipped tries them again), e.g. {first_id!r}: {first_reason}",
                file=sys.stderr,
            )
        if self.state["failed"]:
            print(
                f"[teacher] {self.state['failed']} samples failed after retries (first: "
                f"{self.state['failures'][0]['error']}). Rerun the same command to retry exactly those.",
                file=sys.stderr,
            )
            return EXIT_INCOMPLETE
        return 0

    def record(self, problem: Problem, sample, teacher_name: str) -> dict[str, Any]:
        from tgrl.rewards import check_gold, score_completion

        gold_ok = check_gold(problem.answer, problem.choices, problem.answer_type) is None
        reward = (
            score_completion(sample.text, problem.answer, problem.choices, problem.answer_type)
            if gold_ok
            else None
        )
        return {
            "id": sample.id,
            "teacher": teacher_name,
            "sample_idx": sample.sample_idx,
            "text": sample.text,
            "reward": reward,
            "kept": None,
            "reject_reason": None,
            "n_tokens": sample.n_tokens,
            "mean_logprob": None,
            "finish_reason": sample.finish_reason,
            "gen": {
                "temperature": self.settings.temperature,
                "top_p": self.settings.top_p,
                "max_tokens": self.settings.max_tokens,
                "seed": sample.seed,
            },
        }

    def write_manifest(self, done: dict, teacher_info: dict | None, final: bool) -> None:
        a, st = self.args, self.state
        problems = st["problems"]
        ids = {p.id for p in problems}
        mine = [reward for (pid, _), reward in done.items() if pid in ids]
        rewards = [r for r in mine if r is not None]
        expected = len(problems) * a.k
        skipped = {pid: reason for pid, reason in st["skipped"].items() if pid in ids}
        skipped_pairs = sum(1 for pid in skipped for i in range(a.k) if (pid, i) not in done)
        wall = time.time() - st["t_start"]
        manifest = {
            "teacher": (teacher_info or {}).get("name"),
            "backend": a.backend,
            "teacher_info": teacher_info,
            "settings": {"k": a.k, **dataclasses.asdict(self.settings)},
            "fingerprint": st["fingerprint"],
            "input": {
                "path": str(a.data),
                "sha256": st["data_sha"],
                "n_problems_in_file": st["n_in_file"],
                "n_problems": len(problems),
                "limit": a.limit,
            },
            "shard": {"num_shards": a.num_shards, "shard_index": a.shard_index},
            "trajectories_file": self.traj_path.name,
            "counts": {
                "expected": expected,
                "done": len(mine),
                "missing": expected - len(mine) - skipped_pairs,
                "skipped_problems": len(skipped),
                "skipped_samples": skipped_pairs,
                "outside_current_problem_set": len(done) - len(mine),
                "generated_this_run": st["generated"],
                "failed_this_run": st["failed"],
                "reward_mean": round(sum(rewards) / len(rewards), 4) if rewards else None,
                "n_correct": int(sum(rewards)),
                "finish_reason_this_run": dict(st["finish"]),
            },
            "failures_this_run": st["failures"],
            "skipped": [{"id": pid, "reason": reason} for pid, reason in sorted(skipped.items())],
            "complete": len(mine) + skipped_pairs == expected,
            "running": not final,
            "wall_time_s": round(wall, 3),
            "total_wall_time_s": round(st["previous_wall"] + wall, 3),
            "throughput_samples_per_s": round(st["generated"] / wall, 3) if wall > 0 else None,
            "git_commit": git_commit(),
            "versions": package_versions(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(self.manifest_path, manifest)


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args_with_config(build_parser(), argv)
    set_torch_threads(cpu_threads(str(args.device or "cpu")) if args.backend == "hf" else None)
    code = Builder(args).run()
    if code:
        raise SystemExit(code)
    return 0


if __name__ == "__main__":
    main()

# Expected (tiny tier, 3000 synthetic train problems, --k 4 --wrong-fact-rate 0.2 --seed 0, measured on a
# 2-core CPU): 12000 samples in ~1.3 s wall; counts.reward_mean 0.8336 (n_correct 10003).
