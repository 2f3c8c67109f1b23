"""The registered-comparisons table (tgrl/evaluation/registered.py) and the power of a pre-registration.

    python eval/registered_comparisons.py --prereg results/tiny/preregistration.yaml \
        --summary results/tiny/summary.jsonl --out results/tiny/tables
    python eval/registered_comparisons.py --prereg results/tiny/preregistration.yaml \
        --summary results/tiny/summary.jsonl --mdd --alias sealed_test=synthetic_test \
        --alias sealed_shifted=synthetic_shifted

The first writes OUT/tiny_registered.{md,csv}: per registered comparison both means, the effect (mean
paired difference) with its 95% interval, p, Holm's p, the registered MDD and the verdict; under the table,
what the sealed scoring log shows (each checkpoint scored once, interruptions, refusals).

``--mdd`` prints, per comparison, the measured spread of paired differences in an earlier summary
(``--alias`` maps a registered task to the task those rows used) and the minimal detectable difference at
the registered seeds, as YAML for the pre-registration's ``power_analysis`` section. With ``--items N
--disagreement-samples FILE...`` it adds, per comparison, the spread and the MDD projected to a split of N
items (``registered.projected_sd``: the share of items on which two checkpoints differ, measured from their
per-item samples, sets the split's part of the spread).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from tgrl.evaluation.registered import (
    evaluate,
    item_disagreement,
    load_preregistration,
    minimal_detectable_difference,
    projected_sd,
    render,
    seeds_for,
    spread_table,
)
from tgrl.evaluation.tables import InputError, parse_task_aliases
from tgrl.sealing import SCORING_LOG, describe_scoring
from tgrl.utils import UserError, atomic_write_text, cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prereg", default="results/tiny/preregistration.yaml")
    p.add_argument("--summary", nargs="+", default=["results/tiny/summary.jsonl"])
    p.add_argument("--out", default="results/tiny/tables")
    p.add_argument(
        "--scoring-log",
        type=Path,
        help="the sealed scoring log summarised under the table (default: scoring_log.jsonl beside the "
        "first summary, when it exists)",
    )
    p.add_argument("--mdd", action="store_true", help="print the power analysis instead of the table")
    p.add_argument("--alias", action="append", default=[], help="REGISTERED_TASK=SUMMARY_TASK (with --mdd)")
    p.add_argument("--items", type=int, help="with --mdd: project the spread to a split of this many items")
    p.add_argument(
        "--items-from", type=int, default=1000, help="items of the splits the spread was measured on"
    )
    p.add_argument(
        "--disagreement-samples",
        nargs="+",
        type=Path,
        default=[],
        help="with --items: samples.jsonl of several checkpoints on one split (their item disagreement)",
    )
    return p


def pooled(prereg, rows: list[dict]) -> list[dict]:
    """Per registered task, the root mean square of the measured paired SDs (3 seeds each: one comparison's
    SD is itself noisy) and the minimal detectable difference and seeds for 2 points at that spread."""
    by_task: dict[str, list[float]] = {}
    for c, row in zip(prereg.comparisons, rows, strict=True):
        if str(row.get("source", "")).startswith("paired SD"):
            by_task.setdefault(c.task, []).append(row["sd"])
    out = []
    alpha = prereg.alpha / len(prereg.comparisons)
    for task, sds in by_task.items():
        sd = (sum(v * v for v in sds) / len(sds)) ** 0.5
        mdd = minimal_detectable_difference(len(prereg.seeds), sd, alpha, prereg.power)
        row = {"task": task, "paired_sds": len(sds), "sd": float(f"{sd:.4g}"), "mdd": float(f"{mdd:.4g}")}
        out.append({**row, "seeds_for_2pt": seeds_for(2.0, sd, alpha, prereg.power)})
    return out


def project(prereg, rows: list[dict], args: argparse.Namespace) -> dict:
    """Adds sd_at_N, mdd_at_N and seeds_for_2pt_at_N to every row with a spread; returns the measured item
    disagreement it used."""
    if not args.disagreement_samples:
        raise UserError(
            "--items needs --disagreement-samples (per-item samples of 2+ checkpoints on one split)"
        )
    share, pairs = item_disagreement(args.disagreement_samples)
    alpha = prereg.alpha / len(prereg.comparisons)
    n = args.items
    for row in rows:
        if "sd" in row:
            sd = projected_sd(row["sd"], share, args.items_from, n)
            row[f"sd_at_{n}"] = sd
            row[f"mdd_at_{n}"] = minimal_detectable_difference(len(prereg.seeds), sd, alpha, prereg.power)
            row[f"seeds_for_2pt_at_{n}"] = seeds_for(2.0, sd, alpha, prereg.power)
    return {
        "disagreement": float(f"{share:.4g}"),
        "checkpoint_pairs": pairs,
        "items_from": args.items_from,
        "items_to": n,
        "samples": [str(p) for p in args.disagreement_samples],
    }


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    prereg = load_preregistration(args.prereg)
    try:
        if args.mdd:
            aliases = parse_task_aliases(args.alias, "--alias", "sealed_test=synthetic_test")
            rows = spread_table(prereg, args.summary, aliases)
            report = {"power_analysis": rows, "pooled": pooled(prereg, rows)}
            if args.items:
                report["item_noise"] = project(prereg, rows + report["pooled"], args)
            for row in rows + report["pooled"]:
                for key in ("sd", "mdd", "alpha", f"sd_at_{args.items}", f"mdd_at_{args.items}"):
                    if key in row:
                        row[key] = float(f"{row[key]:.4g}")
            print(yaml.safe_dump(report, sort_keys=False), end="")
            return
        results = evaluate(prereg, args.summary)
    except InputError as err:
        raise UserError(str(err)) from None
    log = args.scoring_log or Path(args.summary[0]).parent / SCORING_LOG
    if args.scoring_log and not log.is_file():
        raise UserError(f"{log}: no such scoring log. Fix: pass the OUT/scoring_log.jsonl of the protocol")
    md, csv = render(prereg, results, args.summary, describe_scoring(log) if log.is_file() else "")
    name = prereg.table_name
    atomic_write_text(f"{args.out}/{name}.md", md)
    atomic_write_text(f"{args.out}/{name}.csv", csv)
    resolved = sum(r.verdict.startswith("resolved") for r in results)
    print(f"{name}: {len(results)} comparisons, {resolved} resolved -> {args.out}/{name}.{{md,csv}}")


if __name__ == "__main__":
    main()
