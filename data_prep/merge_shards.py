"""Join the shards of a sharded teacher run and check every (id, sample_idx) is present exactly once.

    python data_prep/merge_shards.py --out data/teacher/qwen72b            # the folder the shards wrote to
    python data_prep/merge_shards.py --out OUT --data data/virl39k/train.jsonl   # data moved since

Reads ``OUT/manifest.shard-*-of-N.json`` and their trajectory files, checks that all N shards are
there, were made with the same settings and are complete, that no pair is duplicated and none of the
problems x K pairs is missing (errors name the pairs; problems a shard recorded as skipped, with the reason,
are carried over, not missing), then writes ``OUT/trajectories.jsonl``
(data-file order, then sample index) and ``OUT/manifest.json`` atomically.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from pathlib import Path

from tgrl.data import load_problems
from tgrl.utils import UserError, cli, git_commit, read_jsonl, sha256_file, write_json, write_jsonl

_SHARD_RE = re.compile(r"^manifest\.shard-(\d{5})-of-(\d{5})\.json$")


def _pairs(pairs: list[tuple[str, int]], limit: int = 10) -> str:
    shown = ", ".join(f"({pid!r}, {idx})" for pid, idx in pairs[:limit])
    return shown + (f" ... ({len(pairs)} in all)" if len(pairs) > limit else "")


def merge(out: Path, data: Path | None = None) -> dict:
    manifests = {}
    for path in sorted(out.glob("manifest.shard-*-of-*.json")):
        m = _SHARD_RE.match(path.name)
        if m:
            manifests[(int(m.group(1)), int(m.group(2)))] = json.loads(path.read_text(encoding="utf-8"))
    if not manifests:
        raise UserError(f"{out}: no shard manifests (manifest.shard-IIIII-of-NNNNN.json). Fix: check --out")
    totals = {n for _, n in manifests}
    if len(totals) != 1:
        raise UserError(
            f"{out}: shards of different runs (num_shards {sorted(totals)}); keep one run per folder"
        )
    num_shards = totals.pop()
    missing_shards = sorted(set(range(num_shards)) - {i for i, _ in manifests})
    if missing_shards:
        raise UserError(
            f"{out}: shard(s) {missing_shards} of {num_shards} have no manifest. Fix: run "
            f"build_teacher_trajectories.py with --num-shards {num_shards} --shard-index I for each"
        )
    shards = [manifests[(i, num_shards)] for i in range(num_shards)]

    def settings(m: dict) -> dict:
        return {k: v for k, v in m["fingerprint"].items() if k != "shard_index"}

    reference = settings(shards[0])
    for i, m in enumerate(shards):
        if settings(m) != reference:
            diff = sorted(k for k in reference if settings(m).get(k) != reference[k])
            raise UserError(f"{out}: shard {i} was made with other settings than shard 0 (differs in {diff})")
        if not m.get("complete") or m.get("running"):
            raise UserError(
                f"{out}: shard {i} is incomplete ({m['counts']['missing']} samples missing"
                f"{', still running' if m.get('running') else ''}). Fix: rerun that shard's command"
            )

    data = data or Path(shards[0]["input"]["path"])
    if not data.exists():
        raise UserError(f"{data}: the problem file of the teacher run is missing. Fix: pass --data")
    if sha256_file(data) != reference["data_sha256"]:
        raise UserError(f"{data}: differs from the file the shards were built from (sha256 mismatch)")
    problems = load_problems(data, check_images=False)
    limits = {m["input"].get("limit") for m in shards}
    k = reference["k"]
    order = {p.id: n for n, p in enumerate(problems)}

    counts: Counter = Counter()
    rows = []
    for m in shards:
        path = out / m["trajectories_file"]
        for _, row in read_jsonl(path):
            counts[(row["id"], int(row["sample_idx"]))] += 1
            rows.append(row)
    duplicated = sorted(pair for pair, n in counts.items() if n > 1)
    if duplicated:
        raise UserError(
            f"{out}: {len(duplicated)} (id, sample_idx) pairs appear more than once: {_pairs(duplicated)}"
        )
    unknown = sorted(pair for pair in counts if pair[0] not in order or not 0 <= pair[1] < k)
    if unknown:
        raise UserError(
            f"{out}: {len(unknown)} pairs are not problems x range({k}) of {data}: {_pairs(unknown)}"
        )
    skipped = {e["id"]: e["reason"] for m in shards for e in m.get("skipped") or []}
    if limits == {None}:
        expected = {(p.id, i) for p in problems for i in range(k) if p.id not in skipped}
        missing = sorted(expected - set(counts))
        if missing:
            raise UserError(
                f"{out}: {len(missing)} (id, sample_idx) pairs are missing: {_pairs(missing)}. "
                "Fix: rerun the shard that owns them (build_teacher_trajectories.py resumes)"
            )
    rows.sort(key=lambda r: (order[r["id"]], int(r["sample_idx"])))
    write_jsonl(out / "trajectories.jsonl", rows)
    rewards = [r["reward"] for r in rows if r.get("reward") is not None]
    manifest = {
        "teacher": shards[0].get("teacher"),
        "backend": shards[0].get("backend"),
        "teacher_info": shards[0].get("teacher_info"),
        "settings": shards[0].get("settings"),
        "fingerprint": {**reference, "num_shards": 1, "shard_index": 0, "merged_from_shards": num_shards},
        "input": {
            "path": str(data),
            "sha256": reference["data_sha256"],
            "n_problems_in_file": len(problems),
            "n_problems": len({r["id"] for r in rows}),
            "limit": None if limits == {None} else sorted(limits),
        },
        "trajectories_file": "trajectories.jsonl",
        "trajectories_sha256": sha256_file(out / "trajectories.jsonl"),
        "counts": {
            "expected": len(rows) if limits != {None} else len(problems) * k,
            "done": len(rows),
            "missing": 0,
            "skipped_problems": len(skipped),
            "reward_mean": round(sum(rewards) / len(rewards), 4) if rewards else None,
            "n_correct": int(sum(rewards)),
        },
        "shards": [
            {"index": i, "done": m["counts"]["done"], "total_wall_time_s": m.get("total_wall_time_s")}
            for i, m in enumerate(shards)
        ],
        "total_wall_time_s": round(sum(m.get("total_wall_time_s") or 0 for m in shards), 3),
        "skipped": [{"id": pid, "reason": reason} for pid, reason in sorted(skipped.items())],
        "complete": True,
        "running": False,
        "git_commit": git_commit(),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(out / "manifest.json", manifest)
    return manifest


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path, help="the folder holding the shard files")
    parser.add_argument(
        "--data", type=Path, default=None, help="the problem file (default: from the manifests)"
    )
    args = parser.parse_args(argv)
    manifest = merge(args.out, args.data)
    print(
        f"[merge] {manifest['shards'].__len__()} shards -> {manifest['counts']['done']} trajectories, every "
        f"(id, sample_idx) exactly once -> {args.out / 'trajectories.jsonl'}"
    )


if __name__ == "__main__":
    main()
