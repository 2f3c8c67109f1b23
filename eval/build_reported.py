"""Build eval/reported.csv (the numbers our tables compare against) from a reference CSV of published numbers.

    python eval/build_reported.py --reference PATH/TO/reported_numbers.csv --out eval/reported.csv

Every reported value must be traceable to a published source, so this script is the documented selection
and name mapping, never an edit of a number; run it again when the reference changes. What it keeps:
docs/design.md#93-reported-numbers; protocol families: docs/design.md#92-protocol-families.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
COLUMNS = [
    "base_model",  # the policy's starting checkpoint (what "same setup" means for a comparison)
    "method",  # our method key: base, grpo, dapo, vppo, papo_g, papo_d, tgrl, or a published method's slug
    "model",  # the checkpoint as named by the source
    "task",  # our task name (the `task` of results/summary.jsonl rows)
    "metric",  # our metric name (the `metric` of summary rows)
    "protocol",  # A/B/C/D family, empty if unknown
    "value",  # percent, exactly as in the source; empty only for TGRL rows
    "source",  # paper/README + table
    "benchmark",  # as in the reference
    "split",  # as in the reference
    "metric_as_reported",  # as in the reference
    "method_as_reported",  # as in the reference
    "note",
    "ref_line",  # line number in reported_numbers.csv (header = line 1), for audits
]

BASE_MODELS = {"Qwen2.5-VL-7B-Instruct", "Qwen2.5-VL-3B-Instruct"}

# (benchmark, split) -> (task, metric). Metric-specific cases (WeMath strict, HallusionBench) are in map_task.
SPLIT_MAP: dict[tuple[str, str], tuple[str, str]] = {
    ("MathVista", "testmini"): ("mathvista_testmini", "acc"),
    ("MathVista", "testmini (exact-match subset)"): ("mathvista_testmini", "acc"),
    ("MathVerse", "testmini"): ("mathverse_testmini", "acc"),
    ("MathVerse", 'testmini (overall; "mini")'): ("mathverse_testmini", "acc"),
    ("MathVerse", "testmini ALL"): ("mathverse_testmini", "acc"),
    ("MathVerse", "testmini(all versions)"): ("mathverse_testmini", "acc"),
    ("MathVerse", "testmini (verifiable)"): ("mathverse_testmini", "acc"),
    ("MathVerse", "testmini (as reported)"): ("mathverse_testmini", "acc"),
    ("MathVerse", "testmini vision-only"): ("mathverse_testmini_vision_only", "acc"),
    ("MathVerse", "vision-centric subset"): ("mathverse_testmini_vision_centric", "acc"),
    ("MathVision", "test"): ("mathvision_test", "acc"),
    ("MathVision", "test(3040)"): ("mathvision_test", "acc"),
    ("MathVision", "test(full)"): ("mathvision_test", "acc"),
    ("MathVision", "test(full 3040)"): ("mathvision_test", "acc"),
    ("MathVision", "test (verifiable)"): ("mathvision_test", "acc"),
    ("MathVision", "testmini"): ("mathvision_testmini", "acc"),
    ("MathVision", "testmini(304)"): ("mathvision_testmini", "acc"),
    ("WeMath", "testmini"): ("wemath_testmini", "acc"),
    ("WeMath", "testmini (strict score)"): ("wemath_testmini", "strict"),
    ("WeMath", "testmini strict score"): ("wemath_testmini", "strict"),
    ("WeMath", "testmini strict"): ("wemath_testmini", "strict"),
    ("DynaMath", "(verifiable)"): ("dynamath", "avg"),
    ("DynaMath", "5010"): ("dynamath", "avg"),
    ("DynaMath", "worst-case"): ("dynamath", "worst"),
    ("LogicVista", "test"): ("logicvista", "acc"),
    ("LogicVista", "test(448)"): ("logicvista", "acc"),
    ("MMMU", "val"): ("mmmu_val", "acc"),
    ("MMMU-Pro", "overall"): ("mmmu_pro", "acc"),
    ("MMMU-Pro", "(verifiable)"): ("mmmu_pro", "acc"),
    ("MMMU-Pro", "-"): ("mmmu_pro", "acc"),
    ("MMStar", "val"): ("mmstar", "acc"),
    ("MMStar", "val(1500)"): ("mmstar", "acc"),
    ("Geometry3K", "test"): ("geometry3k_test", "acc"),
    ("MMK12", "test"): ("mmk12_test", "acc"),
    ("HallusionBench", "image q-level"): ("hallusionbench_image", "aacc"),  # per-question accuracy
}

# Source substring -> protocol family. First match wins; sources not listed get "" (unknown).
PROTOCOLS: list[tuple[str, str]] = [
    ("2502.13923", "A"),
    ("QwenLM/Qwen2.5-VL README", "A"),
    ("HF card Qwen/Qwen2.5-VL", "A"),
    ("2504.08837", "A"),
    ("2504.07934", "A"),
    ("2503.07365", "A"),
    ("MM-EUREKA README", "A"),
    ("2503.06749", "A"),
    ("OpenVLThinker README", "A"),
    ("2503.10615", "B"),
    ("SAIL-RL", "B"),
    ("2512.17227", "B"),
    ("LASER README", "B"),
    ("2507.06448", "C"),
    ("2510.09285", "C"),
    ("2504.13055", "D"),
]
PROTOCOL_NOTES = {
    "2509.25848": "protocol mixed: VAPO copies baselines from papers/OpenCompass (family B in part)",
    "2506.07218": "protocol not stated in the transcribed table",
    "2505.14677": "protocol not stated in the transcribed table",
}

# Published checkpoint -> (method slug, base model, substrings of its own sources). Only these sources count
# as self-reported; the same checkpoint scored by another paper is a third-party re-evaluation (dropped).
SELF_REPORTED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "ThinkLite-VL-7B": ("thinklite_vl", "Qwen2.5-VL-7B-Instruct", ("2504.07934",)),
    "MM-Eureka-Qwen-7B": ("mm_eureka", "Qwen2.5-VL-7B-Instruct", ("2503.07365", "MM-EUREKA README")),
    "Vision-R1-7B": ("vision_r1", "Qwen2.5-VL-7B-Instruct", ("2503.06749",)),
    "OpenVLThinker-7B": ("openvlthinker", "Qwen2.5-VL-7B-Instruct", ("OpenVLThinker README",)),
    "VL-Rethinker-7B": ("vl_rethinker", "Qwen2.5-VL-7B-Instruct", ("2504.08837",)),
    "NoisyRollout-7B": ("noisyrollout", "Qwen2.5-VL-7B-Instruct", ("2504.13055",)),
    "NoisyRollout-7B (MMK12)": ("noisyrollout_mmk12", "Qwen2.5-VL-7B-Instruct", ("2504.13055",)),
    "R1-Onevision-7B": ("r1_onevision", "Qwen2.5-VL-7B-Instruct", ("2503.10615",)),
    "R1-OneVision-7B": ("r1_onevision", "Qwen2.5-VL-7B-Instruct", ("2503.10615",)),
    "R1-Onevision-3B": ("r1_onevision", "Qwen2.5-VL-3B-Instruct", ("2503.10615",)),
    "Perception-R1-7B": ("perception_r1", "Qwen2.5-VL-7B-Instruct", ("2506.07218",)),
    "VAPO-Thinker-7B": ("vapo_thinker", "Qwen2.5-VL-7B-Instruct", ("2509.25848",)),
    "VAPO-Thinker-3B": ("vapo_thinker", "Qwen2.5-VL-3B-Instruct", ("2509.25848",)),
    "VPPO-7B": ("vppo", "Qwen2.5-VL-7B-Instruct", ("2510.09285",)),
    "PAPO-D-7B": ("papo_d", "Qwen2.5-VL-7B-Instruct", ("2510.09285",)),  # VPPO Tab1 same-setup row
    "Visionary-R1-3B": ("visionary_r1", "Qwen2.5-VL-3B-Instruct", ("2505.14677",)),
}

# Same-setup baselines trained from the base model itself (model column = the base model).
SAME_SETUP_METHODS: dict[str, str] = {
    "GRPO (ViRL39K, 2 ep)": "grpo",  # PAPO Tab1
    "DAPO (ViRL39K, 2 ep)": "dapo",
    "PAPO-G": "papo_g",
    "PAPO-D": "papo_d",
    "GRPO (ViRL39K)": "grpo",  # VPPO Tab1
    "DAPO (ViRL39K)": "dapo",
    "GRPO n=12 on Geo3K 2.1K": "grpo",  # NoisyRollout Tab1 (its own GRPO baseline; protocol D)
    "GRPO n=12 on MMK12 6.4K": "grpo",
    "GRPO (272.6K QA)": "grpo",  # Visionary-R1 Tab1 (3B)
}

TGRL_SOURCE = "arXiv:2603.26126 (TGRL)"
TGRL_NOTE = "paper tables not public to us (only the abstract); fill in from the paper"


def protocol_of(source: str) -> tuple[str, str]:
    """The protocol family of a source, and a note when the family is unknown or mixed."""
    for key, fam in PROTOCOLS:
        if key in source:
            return fam, ""
    for key, note in PROTOCOL_NOTES.items():
        if key in source:
            return "", note
    return "", "protocol unknown"


def map_task(row: dict[str, str]) -> tuple[str, str, str] | None:
    """(task, metric, note) for a reference row, or None when our suite has no such benchmark/split."""
    bench, split, metric, source = row["benchmark"], row["split"], row["metric"], row["source"]
    if bench == "HallusionBench" and split == "image":
        if metric.startswith("avg(") or metric == "OpenCompass avg":
            return "hallusionbench_image", "mean", "mean of aAcc, fAcc, qAcc"
        return (
            "hallusionbench_image",
            "acc_unspecified",
            "source does not say aAcc or the mean of aAcc/fAcc/qAcc",
        )
    # docs/design.md#93-reported-numbers reads LASER's VLMEvalKit numbers as MathVerse vision-only and WeMath
    # strict score (VLMEvalKit's defaults); the reference CSV row only says "testmini"/"acc".
    if "LASER README" in source and bench == "MathVerse":
        return (
            "mathverse_testmini_vision_only",
            "acc",
            "split per docs/design.md#93-reported-numbers (VLMEvalKit default)",
        )
    if "LASER README" in source and bench == "WeMath":
        return (
            "wemath_testmini",
            "strict",
            "strict score per docs/design.md#93-reported-numbers (VLMEvalKit default)",
        )
    hit = SPLIT_MAP.get((bench, split))
    if hit is None:
        return None
    note = "split not stated by the source" if split == "testmini (as reported)" else ""
    if "(verifiable)" in split or "exact-match subset" in split:
        note = "verifiable (exact-match) subset only"
    return hit[0], hit[1], note


def select(row: dict[str, str]) -> tuple[str, str, str] | None:
    """(base_model, method, note) if the row belongs in reported.csv, else None."""
    model, method, source = row["model"], row["method"], row["source"]
    if model in BASE_MODELS:
        if method.startswith("base") or method == "-":
            note = method if method not in ("base", "-") else ""
            return model, "base", note
        if method in SAME_SETUP_METHODS and any(
            k in source for k in ("2507.06448", "2510.09285", "2504.13055", "2505.14677")
        ):
            return model, SAME_SETUP_METHODS[method], method
        return None
    if model in SELF_REPORTED:
        slug, base, own = SELF_REPORTED[model]
        if any(k in source for k in own):
            return base, slug, ""
    return None


def tgrl_rows(tables_path: Path) -> list[dict[str, str]]:
    """Empty TGRL rows, one per column of the `main` table (the paper's main table is what they stand for)."""
    spec = yaml.safe_load(tables_path.read_text())
    out = []
    for col in spec["tables"]["main"]["columns"]:
        row = dict.fromkeys(COLUMNS, "")
        row.update(
            base_model="Qwen2.5-VL-7B-Instruct",
            method="tgrl",
            model="TGRL-7B (paper)",
            task=col["task"],
            metric=col["metric"],
            source=TGRL_SOURCE,
            note=TGRL_NOTE,
        )
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--reference",
        required=True,
        help="the collected reference CSV (not in the repository; every row names its source)",
    )
    ap.add_argument(
        "--tables", default=str(REPO / "eval/tables.yaml"), help="TGRL rows follow its `main` table"
    )
    ap.add_argument("--out", default=str(REPO / "eval/reported.csv"))
    args = ap.parse_args()

    ref = Path(args.reference)
    if not ref.is_file():
        sys.exit(f"error: reference CSV not found: {ref} (pass --reference)")
    rows: list[dict[str, str]] = []
    with ref.open(newline="") as f:
        for line_no, r in enumerate(csv.DictReader(f), start=2):
            sel = select(r)
            mapped = map_task(r)
            if sel is None or mapped is None:
                continue
            base_model, method, sel_note = sel
            task, metric, map_note = mapped
            protocol, proto_note = protocol_of(r["source"])
            note = "; ".join(n for n in (sel_note, map_note, proto_note) if n)
            rows.append(
                {
                    "base_model": base_model,
                    "method": method,
                    "model": r["model"],
                    "task": task,
                    "metric": metric,
                    "protocol": protocol,
                    "value": r["value"],
                    "source": r["source"],
                    "benchmark": r["benchmark"],
                    "split": r["split"],
                    "metric_as_reported": r["metric"],
                    "method_as_reported": r["method"],
                    "note": note,
                    "ref_line": str(line_no),
                }
            )

    # TGRL rows: keep filled-in ones from an existing file, add empty ones for the rest.
    out = Path(args.out)
    filled: dict[tuple[str, str], dict[str, str]] = {}
    if out.is_file():
        with out.open(newline="") as f:
            for r in csv.DictReader(f):
                if r.get("method") == "tgrl" and r.get("value", "").strip():
                    filled[(r["task"], r["metric"])] = {c: r.get(c, "") for c in COLUMNS}
    for r in tgrl_rows(Path(args.tables)):
        rows.append(filled.pop((r["task"], r["metric"]), r))
    rows.extend(filled.values())

    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".reported.", suffix=".csv")
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out)
    n_tgrl = sum(r["method"] == "tgrl" for r in rows)
    print(f"wrote {out}: {len(rows)} rows ({len(rows) - n_tgrl} reported values, {n_tgrl} TGRL rows)")


if __name__ == "__main__":
    main()
