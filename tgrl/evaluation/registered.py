"""Registered comparisons: the pre-registered, seed-paired tests of the tiny protocol and their power.

A pre-registration (YAML committed before the final run, results/tiny/preregistration.yaml) names each
comparison, its primary metric and the seeds; this module runs the paired t-tests with Holm's correction
over the family and computes the minimal detectable difference from the exact noncentral-t power. The
test, the formula and pending (``metric: TBD``) comparisons: docs/tiny_tier.md#7-fair-protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from tgrl.evaluation.tables import Row, latest_per_run, load_summary
from tgrl.utils import UserError, load_yaml_mapping, read_jsonl

STATUSES = ("draft", "final", "exploratory")  # exploratory: a list declared beside the registered family


@dataclass
class Comparison:
    """One registered comparison: ``a`` minus ``b`` on (task, metric, decoding)."""

    id: str
    a: str
    b: str
    task: str
    metric: str
    decoding: str = "greedy"
    scale: float = 100.0  # fractions shown in percentage points
    question: str = ""

    @property
    def pending(self) -> bool:
        return self.metric.upper().startswith("TBD") or self.task.upper().startswith("TBD")


@dataclass
class Preregistration:
    path: Path
    status: str
    seeds: list[int]
    alpha: float
    power: float
    comparisons: list[Comparison]
    mdd: dict[str, float] = field(default_factory=dict)  # registered minimal detectable difference per id

    @property
    def exploratory(self) -> bool:
        return self.status == "exploratory"

    @property
    def table_name(self) -> str:
        return "tiny_exploratory" if self.exploratory else "tiny_registered"


def load_preregistration(path: str | Path) -> Preregistration:
    """Read and check a pre-registration; errors name the file, the entry and the fix."""
    path = Path(path)
    raw = load_yaml_mapping(path, "pre-registration")
    status = str(raw.get("status", "")).lower()
    if status not in STATUSES:
        raise UserError(f"{path}: status must be one of {STATUSES}, got {raw.get('status')!r}")
    seeds = raw.get("seeds")
    if not isinstance(seeds, list) or len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise UserError(f"{path}: seeds must be a list of at least 2 distinct integers, got {seeds!r}")
    test = raw.get("test") or {}
    if test.get("type", "paired_t") != "paired_t" or test.get("sides", "two") != "two":
        raise UserError(f"{path}: test must be the two-sided paired t-test (type: paired_t, sides: two)")
    if test.get("correction", "holm") != "holm":
        raise UserError(f"{path}: test.correction must be holm")
    comparisons, ids = [], set()
    for i, entry in enumerate(raw.get("comparisons") or []):
        missing = [k for k in ("id", "a", "b", "task", "metric") if not entry.get(k)]
        if missing:
            raise UserError(f"{path}: comparisons[{i}] misses {missing}")
        if entry["id"] in ids:
            raise UserError(f"{path}: comparisons[{i}]: id {entry['id']!r} given twice")
        ids.add(entry["id"])
        known = {"id", "a", "b", "task", "metric", "decoding", "scale", "question"}
        if set(entry) - known:
            raise UserError(f"{path}: comparisons[{i}] has unknown keys {sorted(set(entry) - known)}")
        comparisons.append(Comparison(**{k: entry[k] for k in entry}))
    if not comparisons:
        raise UserError(f"{path}: no comparisons registered")
    prereg = Preregistration(
        path, status, [int(s) for s in seeds], float(test.get("alpha", 0.05)), float(raw.get("power", 0.8)),
        comparisons, registered_mdd(raw.get("power_analysis") or []),
    )  # fmt: skip
    pending = [c.id for c in comparisons if c.pending]
    if status == "final" and pending:
        raise UserError(f"{path}: status final, but {pending} have no metric yet (TBD). Fix: name them")
    return prereg


def registered_mdd(power_analysis: list[dict[str, Any]]) -> dict[str, float]:
    """id -> the minimal detectable difference of the pre-registration's power section: at the sealed
    split size (``mdd_at_N``, the largest N) where it was projected, else ``mdd``; ids without one: absent."""
    out = {}
    for entry in power_analysis:
        projected = sorted(
            (int(k.removeprefix("mdd_at_")), v) for k, v in entry.items() if k.startswith("mdd_at_")
        )
        value = projected[-1][1] if projected else entry.get("mdd")
        if "id" in entry and value is not None:
            out[str(entry["id"])] = float(value)
    return out


# --------------------------------------------------------------------------------------------------
# statistics


@dataclass
class PairedTest:
    n: int
    mean: float
    sd: float
    ci: tuple[float, float]
    t: float
    p: float


def paired_t_test(differences: list[float], confidence: float = 0.95) -> PairedTest:
    """Two-sided one-sample t-test of mean(differences) = 0 and the t-interval of the mean."""
    n = len(differences)
    if n < 2:
        raise ValueError("a paired t-test needs at least 2 pairs")
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    if se == 0:
        t, p = (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    else:
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), n - 1))
    return PairedTest(n, mean, sd, (mean - half, mean + half), t, p)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): p_(i) * (m - i + 1), made monotone."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def minimal_detectable_difference(n: int, sd: float, alpha: float, power: float = 0.8) -> float:
    """The smallest true mean paired difference the two-sided paired t-test at level ``alpha`` detects with
    probability ``power`` from ``n`` pairs whose differences have standard deviation ``sd`` (module
    docstring: the exact noncentral-t power)."""
    if n < 2 or sd <= 0:
        raise ValueError("needs n >= 2 pairs and a positive spread")
    df, crit = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)

    def achieved(delta: float) -> float:
        nc = delta * math.sqrt(n) / sd
        return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))

    lo, hi = 0.0, sd
    while achieved(hi) < power:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if achieved(mid) < power else (lo, mid)
    return hi


def seeds_for(target: float, sd: float, alpha: float, power: float = 0.8, most: int = 200) -> int | None:
    """The fewest paired seeds whose minimal detectable difference is at most ``target``."""
    for n in range(2, most + 1):
        if minimal_detectable_difference(n, sd, alpha, power) <= target:
            return n
    return None


# --------------------------------------------------------------------------------------------------
# from the summary


def per_seed(
    latest: dict[tuple[str, str, str, str], Row], method: str, task: str, metric: str, decoding: str
):
    """seed -> value of ``method``'s runs (the latest row per run); two runs of one method at one seed on
    the same metric are an error naming them."""
    out: dict[int, tuple[float, str]] = {}
    for (run, row_task, row_metric, row_decoding), row in latest.items():
        rec = row.record
        if (rec.get("method"), row_task, row_metric, row_decoding) != (method, task, metric, decoding):
            continue
        seed = rec.get("seed")
        if seed in out:
            raise UserError(
                f"{row.path}: runs {out[seed][1]} and {run} are both {method} seed {seed} on {task} "
                f"{metric}; a registered comparison pairs one run per seed"
            )
        out[seed] = (float(rec["value"]), run)
    return {seed: value for seed, (value, _) in out.items()}


@dataclass
class Result:
    comparison: Comparison
    seeds: list[int]  # the registered seeds both methods have
    test: PairedTest | None
    holm_p: float | None = None
    verdict: str = ""
    # a's and b's mean over the paired seeds (scaled like the effect)
    means: tuple[float, float] | None = None


def evaluate(prereg: Preregistration, summary_paths: list[str]) -> list[Result]:
    """Every registered comparison on the registered seeds; Holm over the family. A comparison without both
    methods at every registered seed is ``incomplete`` (never tested on fewer seeds than registered)."""
    latest = latest_per_run(load_summary(summary_paths))
    results = []
    for c in prereg.comparisons:
        if c.pending:
            results.append(Result(c, [], None, verdict="pending (metric TBD)"))
            continue
        a = per_seed(latest, c.a, c.task, c.metric, c.decoding)
        b = per_seed(latest, c.b, c.task, c.metric, c.decoding)
        both = [s for s in prereg.seeds if s in a and s in b]
        if len(both) < len(prereg.seeds):
            missing = sorted(set(prereg.seeds) - set(both))
            results.append(Result(c, both, None, verdict=f"incomplete (no pair at seeds {missing})"))
            continue
        means = (c.scale * sum(a[s] for s in both) / len(both), c.scale * sum(b[s] for s in both) / len(both))
        results.append(Result(c, both, paired_t_test([c.scale * (a[s] - b[s]) for s in both]), means=means))
    # Holm over the registered family: untested members count as p = 1 (the family size never shrinks)
    adjusted = holm([r.test.p if r.test else 1.0 for r in results])
    suffix = " (exploratory)" if prereg.exploratory else ""
    for r, p in zip(results, adjusted, strict=True):
        if r.test is not None:
            r.holm_p = p
            r.verdict = ("resolved" if p < prereg.alpha else "not resolved") + suffix
    return results


def _num(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:+.{digits}f}" if digits == 2 else f"{x:.{digits}f}"


def _p(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.2g}" if x >= 0.001 else f"{x:.1e}"


def render(
    prereg: Preregistration, results: list[Result], summary_paths: list[str], footer: str = ""
) -> tuple[str, str]:
    """(Markdown, CSV) of the registered-comparisons table; ``footer``: a paragraph under the table."""
    header = ["comparison", "a - b", "primary metric", "n seeds", "a", "b", "effect", "95% CI", "p", "Holm p",
              "registered MDD", "verdict"]  # fmt: skip
    md = ["| " + " | ".join(header) + " |", "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    csv = [
        "id,a,b,task,metric,decoding,n,mean_a,mean_b,effect,ci_lo,ci_hi,sd,t,p,holm_p,registered_mdd,verdict"
    ]
    for r in results:
        c, t = r.comparison, r.test
        mdd = prereg.mdd.get(c.id)
        ci = f"[{t.ci[0]:+.2f}, {t.ci[1]:+.2f}]" if t else ""
        means = [f"{m:.2f}" for m in r.means] if r.means else ["", ""]
        cells = [c.id, f"{c.a} - {c.b}", f"{c.task} {c.metric} ({c.decoding})", str(len(r.seeds)), *means,
                 _num(t.mean) if t else "", ci, _p(t.p if t else None), _p(r.holm_p),
                 f"{mdd:.1f}" if mdd is not None else "", r.verdict]  # fmt: skip
        md.append("| " + " | ".join(cells) + " |")
        values = (
            [f"{t.mean:.4f}", f"{t.ci[0]:.4f}", f"{t.ci[1]:.4f}", f"{t.sd:.4f}", f"{t.t:.4f}"]
            if t
            else [""] * 5
        )
        mean_values = [f"{m:.4f}" for m in r.means] if r.means else ["", ""]
        holm_p = f"{r.holm_p:.6g}" if r.holm_p is not None else ""
        csv.append(",".join([c.id, c.a, c.b, c.task, c.metric, c.decoding, str(len(r.seeds)), *mean_values,
                             *values, f"{t.p:.6g}" if t else "", holm_p,
                             f"{mdd:.4g}" if mdd is not None else "", r.verdict]))  # fmt: skip
    kind = "Exploratory" if prereg.exploratory else "Registered"
    caption = (
        f"{kind} comparisons of {prereg.path} (status: {prereg.status}): per comparison a's and "
        f"b's mean over seeds {prereg.seeds}, the mean paired difference a - b (percentage points for "
        "accuracies), its 95% t-interval, the two-sided paired t-test's p and Holm's adjusted p over the "
        f"{len(results)} comparisons of the file; resolved: Holm p < {prereg.alpha}. "
    )
    if prereg.exploratory:
        caption += (
            "Exploratory: not the registered family (when and why this list was written: the file's "
            "header); a resolved comparison here is a lead to register next, not a confirmed finding. "
        )
    else:
        caption += (
            "Registered MDD: the minimal detectable difference of the pre-registration's power section "
            f"(power {prereg.power} at Holm's first step, from earlier spreads); a true difference below it "
            "will most likely be not resolved, and a comparison that is not resolved is not evidence of no "
            "difference. "
        )
    summaries = " and ".join(summary_paths)
    caption += f"Generated by eval/registered_comparisons.py from {summaries}; do not edit by hand."
    title = f"## Tiny tier: {kind.lower()} comparisons"
    text = title + "\n\n" + caption + "\n\n" + "\n".join(md) + "\n"
    if footer:
        text += "\n" + footer + "\n"
    return text, "\n".join(csv) + "\n"


def spread_table(
    prereg: Preregistration, summary_paths: list[str], aliases: dict[str, str], reference: str = "tgrl"
) -> list[dict[str, Any]]:
    """Per comparison, the measured spread of paired differences and the minimal detectable difference at
    the registered seeds (alpha / m, ``power``), from an earlier summary (``aliases`` maps a registered task
    to the task those rows used). The spread is the SD of the paired differences where both methods have
    at least 2 common seeds; otherwise sqrt(2) times ``reference``'s seed SD on that metric (independent
    runs of equal spread)."""
    latest = latest_per_run(load_summary(summary_paths))
    m = len(prereg.comparisons)
    alpha = prereg.alpha / m
    out = []
    for c in prereg.comparisons:
        row: dict[str, Any] = {"id": c.id, "alpha": alpha, "seeds": len(prereg.seeds)}
        if c.pending:
            out.append({**row, "source": "metric TBD"})
            continue
        task = aliases.get(c.task, c.task)
        a = per_seed(latest, c.a, task, c.metric, c.decoding)
        b = per_seed(latest, c.b, task, c.metric, c.decoding)
        common = sorted(set(a) & set(b))
        if len(common) >= 2:
            test = paired_t_test([c.scale * (a[s] - b[s]) for s in common])
            sd, source = test.sd, f"paired SD over seeds {common} ({task})"
        else:
            ref = per_seed(latest, reference, task, c.metric, c.decoding)
            if len(ref) < 2:
                out.append(
                    {**row, "source": f"no spread: fewer than 2 {reference} seeds on {task} {c.metric}"}
                )
                continue
            values = [c.scale * v for v in ref.values()]
            mean = sum(values) / len(values)
            ref_sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            sd, source = (
                math.sqrt(2) * ref_sd,
                f"sqrt(2) x {reference} seed SD over seeds {sorted(ref)} ({task})",
            )
        mdd = minimal_detectable_difference(len(prereg.seeds), sd, alpha, prereg.power)
        row.update(sd=sd, source=source, mdd=mdd, seeds_for_2pt=seeds_for(2.0, sd, alpha, prereg.power))
        out.append(row)
    return out


# --------------------------------------------------------------------------------------------------
# the split size's share of the spread


def item_disagreement(sample_files: list[Path], metric: str = "acc") -> tuple[float, int]:
    """The mean, over every pair of the given per-item result files (``samples.jsonl`` of different
    checkpoints on the same split, matched by ``doc_id``), of the share of items whose ``metric`` differs;
    and the number of pairs."""
    scored = []
    for path in sample_files:
        rows = {row["doc_id"]: float(row[metric]) for _, row in read_jsonl(path) if metric in row}
        if not rows:
            raise UserError(f"{path}: no per-item {metric!r}. Fix: pass the samples.jsonl of an evaluation")
        scored.append((path, rows))
    if len(scored) < 2:
        raise UserError("item disagreement needs the samples of at least 2 checkpoints")
    shares = []
    for i, (path_a, a) in enumerate(scored):
        for path_b, b in scored[i + 1 :]:
            if set(a) != set(b):
                raise UserError(f"{path_a} and {path_b} score different items: not the same split")
            shares.append(sum(a[k] != b[k] for k in a) / len(a))
    return sum(shares) / len(shares), len(shares)


def projected_sd(
    sd: float, disagreement: float, items_from: int, items_to: int, scale: float = 100.0
) -> float:
    """The SD of paired differences on a split of ``items_to`` items, from ``sd`` measured on ``items_from``.

    A measured difference is the two checkpoints' difference on the whole distribution plus the items'
    sampling noise, of variance ``disagreement / items`` (items where exactly one is right count +-1, their
    signs balanced): sd^2 = sd_model^2 + scale^2 d / N. The model part is kept (at least 0) and the item
    part rescaled."""
    item_var = scale * scale * disagreement
    model_var = max(sd * sd - item_var / items_from, 0.0)
    return math.sqrt(model_var + item_var / items_to)


# ------------------------------------------------------------------------------------------------------
# replication: the same registered family run again (another protocol version, fresh sealed splits)


def replication_outcome(original: dict[str, str], again: dict[str, str]) -> str:
    """What a rerun's row says of the original's (rows of the tables' CSV): replicated (both resolved, same
    sign), reversed, not replicated (resolved only in the original), new (resolved only in the rerun), not
    resolved in either, or incomplete."""
    if not original.get("effect") or not again.get("effect"):
        return "incomplete"
    first, second = (row["verdict"].startswith("resolved") for row in (original, again))
    same_sign = (float(original["effect"]) > 0) == (float(again["effect"]) > 0)
    if first and second:
        return "replicated" if same_sign else "reversed"
    if first:
        return "not replicated"
    return "resolved only in the rerun" if second else "not resolved in either"


def read_table_csv(path: str | Path) -> dict[str, dict[str, str]]:
    """A registered or exploratory table's CSV (render's), by comparison id."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such table. Fix: run eval/registered_comparisons.py first")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = {"id", "effect", "ci_lo", "ci_hi", "verdict"} - set(rows[0] if rows else {})
    if missing:
        raise UserError(f"{path}: not a registered-comparisons table (columns {sorted(missing)} missing)")
    return {row["id"]: row for row in rows}


def render_replication(
    original_path: str | Path, rerun_path: str | Path, labels: tuple[str, str] = ("original", "rerun")
) -> tuple[str, str, dict[str, int]]:
    """(Markdown, CSV, outcome counts): each comparison of the original table beside the rerun's, the
    rerun's effect inside the original's 95% interval or not, and ``replication_outcome``."""
    original, rerun = read_table_csv(original_path), read_table_csv(rerun_path)
    absent = sorted(set(original) ^ set(rerun))
    if absent:
        raise UserError(f"{original_path} and {rerun_path} list other comparisons: {absent}")
    first, second = labels
    header = ["comparison", f"{first} effect [95% CI]", f"{first} verdict", f"{second} effect [95% CI]",
              f"{second} verdict", f"{second} inside {first}'s CI", "outcome"]  # fmt: skip
    md = ["| " + " | ".join(header) + " |", "|---|---|---|---|---|---|---|"]
    csv = ["id,effect_1,ci_lo_1,ci_hi_1,verdict_1,effect_2,ci_lo_2,ci_hi_2,verdict_2,inside,outcome"]
    counts: dict[str, int] = {}  # outcome -> comparisons, in order of first appearance

    def shown(row: dict[str, str]) -> str:
        if not row["effect"]:
            return ""
        return f"{float(row['effect']):+.2f} [{float(row['ci_lo']):+.2f}, {float(row['ci_hi']):+.2f}]"

    for cid, a in original.items():
        b = rerun[cid]
        inside = ""
        if a["effect"] and b["effect"]:
            inside = "yes" if float(a["ci_lo"]) <= float(b["effect"]) <= float(a["ci_hi"]) else "no"
        outcome = replication_outcome(a, b)
        counts[outcome] = counts.get(outcome, 0) + 1
        md.append(
            f"| {cid} | {shown(a)} | {a['verdict']} | {shown(b)} | {b['verdict']} | {inside} | {outcome} |"
        )
        csv.append(",".join([cid, a["effect"], a["ci_lo"], a["ci_hi"], a["verdict"], b["effect"], b["ci_lo"],
                             b["ci_hi"], b["verdict"], inside, outcome]))  # fmt: skip
    tally = ", ".join(f"{n} {k}" for k, n in counts.items())
    caption = (
        f"The comparisons of {original_path} ({first}) beside the same comparisons run again, "
        f"{rerun_path} ({second}): effects with their 95% t-intervals and verdicts as each table gives them. "
        "Outcome: replicated (resolved in both, same sign), reversed, not replicated (resolved in the first "
        "only), resolved only in the rerun, or not resolved in either. "
        f"{tally}. Generated by eval/replication_table.py; do not edit by hand."
    )
    text = f"## Replication: {first} vs {second}\n\n{caption}\n\n" + "\n".join(md) + "\n"
    return text, "\n".join(csv) + "\n", counts
