"""Eval and teacher throughput on the tiny tier, each measurement in its own process with its peak RSS.

    OMP_NUM_THREADS=1 python benchmarks/bench_throughput.py --work .cache/bench/work --out throughput.json

It runs the real entry points (eval/run_lmms_eval.py, data_prep/build_teacher_trajectories.py) as
subprocesses, never re-implementations, on the weak base and data of bench_step.py's ``--work`` folder.
Measurements and rates: docs/tiny_tier.md#81-benchmarks.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tgrl.benchmarking import (
    PY,
    Assets,
    add_asset_args,
    assets_from_args,
    emit,
    format_table,
    interleaved,
    note,
    run_measured,
    write_out,
)

MEASUREMENTS = ("eval", "teacher_oracle", "teacher_hf")


def measure_eval(assets: Assets, n: int, scratch: Path) -> dict[str, Any]:
    """One run of the lmms-eval runner on n test items; items/s from the runner's own timer."""
    summary = scratch / "summary.jsonl"
    cmd = [PY, "eval/run_lmms_eval.py", "--model", assets.base, "--suite", "tiny", "--device", "cpu"]
    cmd += ["--jsonl", f"bench_test={assets.test}", "--limit", n, "--run", "bench"]
    cmd += ["--out", scratch / "raw", "--summary", summary]
    measured = run_measured(cmd, scratch / "log.txt")
    rows = [json.loads(line) for line in summary.read_text().splitlines() if line.strip()]
    row = next(r for r in rows if r["metric"] == "acc")
    items, seconds = row["n"], row["eval_seconds"]
    return {
        "items": items,
        "eval_seconds": seconds,
        "samples_per_s": items / seconds,
        "process_wall_s": measured.wall_s,
        "process_samples_per_s": items / measured.wall_s,
        "peak_rss_mb": measured.peak_rss_mb,
        "acc": row["value"],
        "settings": {
            k: row["settings"].get(k) for k in ("backend", "batch_size", "max_new_tokens", "decoding")
        },
    }


def head_file(problems: str, n: int) -> Path:
    """The first n problems as their own file beside the original (image paths stay relative to it), so
    the builder's up-front image check covers only the measured problems, not the whole split."""
    src = Path(problems)
    dst = src.parent / f"{src.stem}.head{n}.jsonl"
    if not dst.exists():
        lines = src.read_text().splitlines(keepends=True)
        if len(lines) < n:
            raise SystemExit(f"error: {src} has {len(lines)} problems, fewer than {n}; raise --n-train")
        dst.write_text("".join(lines[:n]))
    return dst


def measure_teacher(assets: Assets, backend: str, n: int, k: int, scratch: Path) -> dict[str, Any]:
    """One teacher build of n problems x k samples; problems/s from the builder's own wall time (which
    includes reading the problems and building the teacher, i.e. loading the model for hf)."""
    out = scratch / "teacher"
    data = head_file(assets.problems, n)
    cmd = [PY, "data_prep/build_teacher_trajectories.py", "--data", data, "--out", out]
    cmd += ["--backend", backend, "--k", k, "--seed", "0", "--limit", n, "--no-progress"]
    if backend == "oracle":
        cmd += ["--wrong-fact-rate", "0.2"]
    else:
        cmd += ["--model", assets.base, "--max-tokens", "64", "--batch-size", "8", "--dtype", "float32"]
    measured = run_measured(cmd, scratch / "log.txt")
    manifest = json.loads((out / "manifest.json").read_text())
    problems, samples = manifest["input"]["n_problems"], manifest["counts"]["generated_this_run"]
    seconds = manifest["wall_time_s"]
    return {
        "problems": problems,
        "samples": samples,
        "k": k,
        "wall_time_s": seconds,
        "problems_per_s": problems / seconds,
        "samples_per_s": samples / seconds,
        "process_wall_s": measured.wall_s,
        "process_problems_per_s": problems / measured.wall_s,
        "peak_rss_mb": measured.peak_rss_mb,
        "reward_mean": manifest["counts"].get("reward_mean"),
    }


# the headline rate of each measurement, and the keys whose per-round values are summarized
RATE_KEY = {"eval": "samples_per_s", "teacher_oracle": "problems_per_s", "teacher_hf": "problems_per_s"}
ROUNDED = ("samples_per_s", "problems_per_s", "process_samples_per_s", "process_problems_per_s")


def summarize(name: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of each rate (and every round's value), max peak RSS, the fixed settings."""
    record: dict[str, Any] = {"bench": name}
    first = rounds[0]
    for key, value in first.items():
        if key in ROUNDED or key in ("eval_seconds", "wall_time_s", "process_wall_s"):
            values = [r[key] for r in rounds]
            record[key] = round(statistics.median(values), 3)
            record[f"{key}_rounds"] = [round(v, 3) for v in values]
        elif key == "peak_rss_mb":
            record[key] = max(r[key] for r in rounds)
        else:
            record[key] = value
    record["rounds"] = len(rounds)
    return record


def throughput_table(records: list[dict[str, Any]]) -> str:
    header = ["measurement", "items", "rate (in-process)", "rate (whole process)", "process s", "RSS MB"]
    rows = []
    for r in records:
        unit = "samples/s" if r["bench"] == "eval" else "problems/s"
        items = r.get("items", r.get("problems"))
        rate = r[RATE_KEY[r["bench"]]]
        whole = r["process_samples_per_s"] if r["bench"] == "eval" else r["process_problems_per_s"]
        rows.append(
            [
                r["bench"],
                items,
                f"{rate:.1f} {unit}",
                f"{whole:.2f} {unit}",
                f"{r['process_wall_s']:.1f}",
                f"{r['peak_rss_mb']:.0f}",
            ]
        )
    return "median over rounds\n" + format_table(header, rows)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_asset_args(ap)
    ap.add_argument("--measure", nargs="+", default=list(MEASUREMENTS), choices=MEASUREMENTS)
    ap.add_argument("--eval-n", type=int, default=500, help="test items per eval run (<= --n-test)")
    ap.add_argument(
        "--oracle-n", type=int, default=1000, help="problems per oracle teacher run (<= --n-train)"
    )
    ap.add_argument("--hf-n", type=int, default=64, help="problems per hf teacher run")
    ap.add_argument(
        "--k", type=int, default=4, help="teacher samples per problem (docs/design.md#51-teachers)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--out", help="write all measurements as one JSON file")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tgrl_bench_") as tmp:
        work = Path(args.work).resolve() if args.work else Path(tmp)
        assets = assets_from_args(args, work, need_train=False)
        note(f"base: {assets.base_source}")
        results: dict[str, list[dict[str, Any]]] = defaultdict(list)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for r, name in interleaved(args.measure, args.repeats):
            scratch = work / "throughput_runs" / f"{stamp}_{name}_r{r}"
            if name == "eval":
                result = measure_eval(assets, args.eval_n, scratch)
            else:
                n = args.oracle_n if name == "teacher_oracle" else args.hf_n
                result = measure_teacher(assets, name.removeprefix("teacher_"), n, args.k, scratch)
            results[name].append(result)
            note(
                f"round {r} {name}: {result[RATE_KEY[name]]:.2f} {RATE_KEY[name]}, peak RSS "
                f"{result['peak_rss_mb']} MB"
            )
            if not args.work:
                shutil.rmtree(scratch, ignore_errors=True)
        records: list[dict[str, Any]] = []
        for name in args.measure:
            emit(summarize(name, results[name]), records)
        print(throughput_table(records), flush=True)
        write_out(
            args.out,
            {
                "bench": "throughput",
                "settings": vars(args),
                "assets": asdict(assets),
                "measurements": records,
                "rounds": dict(results),
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
