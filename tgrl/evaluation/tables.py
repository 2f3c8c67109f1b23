"""Turn evaluation results into the paper's tables: Markdown, CSV and LaTeX, with ours | reported | delta.

    python eval/make_tables.py --summary results/summary.jsonl --tables eval/tables.yaml \
        --reported eval/reported.csv --out results/tables [--table main]

Why generated: a hand-typed table drifts from the results it claims to show (docs/design.md#103-results).
Every number printed here is read from `results/summary.jsonl` (ours) or `eval/reported.csv` (published,
each with its source); the only arithmetic is mean, std, a t-interval over seeds and ours - reported.

results/summary.jsonl (written by eval/run_lmms_eval.py, one JSON object per line, append-only):

    {"run": str,            # run name, e.g. "tgrl_7b_seed1" (one training run = one seed of a method)
     "method": str,         # method key from the recipe: base, grpo, sft_rl, luffy_vl, tgrl, tgrl_no_filter
     "seed": int | null,    # training seed of the run (null for the base model)
     "checkpoint": str,     # path or hub id that was evaluated
     "task": str,           # our task name, e.g. "mathvista_testmini" (list in eval/tables.yaml)
     "metric": str,         # e.g. "acc", "strict", "worst", "fact_acc"
     "value": float,        # accuracy as a FRACTION in [0, 1]; non-accuracy diagnostics in their own unit
     "n": int,              # number of scored items behind the value
     "decoding": str,       # "greedy" or "avg@{k}" (k samples at T=1.0, mean accuracy), e.g. "avg@8"
     "suite": str,          # "paper" or "tiny" (tables filter on it)
     "git_commit": str, "versions": {package: version, ...}, "time": str}  # ISO 8601 time of the eval

Required: run, method, task, metric, value (finite number), n (int >= 0). The rest is type-checked when
present. If the same (run, task, metric) appears more than once among the rows a table selects, the latest
row wins: the greatest `time`, then the later line (the runner appends, so a rerun replaces an old score),
except that a row scored on the first N items (`limit`) never replaces one scored on the whole split.

Tables (eval/tables.yaml; its header lists the task/metric names and method names):
  * ours: the rows of a table row's method (after the table's filter), one value per run; with several runs
    (seeds) the cell is mean +- sample std (and a 95% t-interval when the table sets ci95), and the row says
    how many seeds; a cell with fewer seeds than its row says so. Accuracies print as percent, one decimal.
  * reported: the best-ranked reported.csv row for the table row's selector (see tables.yaml), in percent,
    with a numbered source under the table; delta = ours mean - reported.
  * n: the number of scored items per column, as written by the runner (a range if runs differ).
Errors in the inputs (missing file, bad JSON, a wrong field type, an accuracy > 1) end the program with a
message that names the file and line, and exit status 2.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tgrl.utils import REPO_ROOT, atomic_write_text

REQUIRED = {"run": str, "method": str, "task": str, "metric": str}
OPTIONAL = {
    "checkpoint": str,
    "decoding": str,
    "suite": str,
    "git_commit": str,
    "versions": dict,
    "time": str,
}
REPORTED_COLUMNS = ("base_model", "method", "model", "task", "metric", "protocol", "value", "source")
DASH = "–"


class InputError(Exception):
    """A problem in a user-supplied file: reported as one line, exit status 2, no traceback."""


# -----------------------------------------------------------------------------
# inputs


@dataclass
class Row:
    """One summary row plus where it came from (for error messages and for 'latest row wins')."""

    record: dict[str, Any]  # the summary line's JSON object
    path: str
    line: int
    order: tuple = field(default=())


def parse_time(s: str | None, where: str) -> datetime:
    if s is None:
        return datetime.min.replace(tzinfo=UTC)
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        raise InputError(f"{where}: field 'time' is not an ISO 8601 time: {s!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def load_summary(paths: list[str]) -> list[Row]:
    """Read and validate summary JSONL files; every error names file and line."""
    rows: list[Row] = []
    for file_idx, p in enumerate(paths):
        if not Path(p).is_file():
            raise InputError(f"{p}: summary file not found")
        with open(p, encoding="utf-8") as f:
            for line_no, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                where = f"{p} line {line_no}"
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as e:
                    raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(record, dict):
                    raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
                for k, typ in REQUIRED.items():
                    if not isinstance(record.get(k), typ) or not record[k]:
                        raise InputError(
                            f"{where}: field {k!r} must be a non-empty string, got {record.get(k)!r}"
                        )
                v = record.get("value")
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise InputError(f"{where}: field 'value' must be a finite number, got {v!r}")
                n = record.get("n")
                if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                    raise InputError(f"{where}: field 'n' must be an integer >= 0, got {n!r}")
                seed = record.get("seed")
                if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                    raise InputError(f"{where}: field 'seed' must be an integer or null, got {seed!r}")
                for k, typ in OPTIONAL.items():
                    if record.get(k) is not None and not isinstance(record[k], typ):
                        raise InputError(f"{where}: field {k!r} must be {typ.__name__}, got {record[k]!r}")
                order = (parse_time(record.get("time"), where), file_idx, line_no)
                rows.append(Row(record, p, line_no, order))
    return rows


# A task a benchmark defines as the mean of other tasks' scores; the table derives it per run (and per
# suite and decoding) when every part is there. MMMU-Pro's overall score is the mean of its two settings.
DERIVED: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("mmmu_pro", "acc"): (("mmmu_pro_standard", "acc"), ("mmmu_pro_vision", "acc")),
}


def add_derived_rows(rows: list[Row]) -> list[Row]:
    """Append one derived row per (run, suite, decoding) that has every part of a DERIVED task: the
    mean of the parts' latest values, n = the sum of their n, as recent as its newest part."""
    latest: dict[tuple, Row] = {}
    for r in rows:
        record = r.record
        key = (record["run"], record.get("suite"), record.get("decoding"), record["task"], record["metric"])
        if key not in latest or r.order > latest[key].order:
            latest[key] = r
    derived = []
    for (task, metric), parts in DERIVED.items():
        for run, suite, decoding in sorted({k[:3] for k in latest}, key=str):
            found = [latest.get((run, suite, decoding, *part)) for part in parts]
            if not all(found):
                continue
            newest = max(found, key=lambda r: r.order)
            record = {
                **newest.record,
                "task": task,
                "metric": metric,
                "value": sum(r.record["value"] for r in found) / len(found),
                "n": sum(r.record["n"] for r in found),
                "derived_from": [f"{t}/{m}" for t, m in parts],
            }
            derived.append(Row(record, newest.path, newest.line, newest.order))
    return rows + derived


def load_reported(path: str) -> list[dict[str, str]]:
    if not Path(path).is_file():
        raise InputError(f"{path}: reported CSV not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REPORTED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing columns {missing}")
        out = []
        for line_no, r in enumerate(reader, start=2):
            if r["value"].strip():
                try:
                    float(r["value"])
                except ValueError:
                    raise InputError(f"{path} line {line_no}: value {r['value']!r} is not a number") from None
            r["_line"] = str(line_no)
            out.append(r)
    return out


def load_tables(path: str) -> dict[str, dict]:
    if not Path(path).is_file():
        raise InputError(f"{path}: tables spec not found")
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({e})") from None
    tables = spec.get("tables") if isinstance(spec, dict) else None
    if not isinstance(tables, dict) or not tables:
        raise InputError(f"{path}: expected a top-level 'tables:' mapping")
    for name, t in tables.items():
        for key in ("title", "columns", "rows"):
            if key not in t:
                raise InputError(f"{path}: table {name!r} has no {key!r}")
        for c in t["columns"]:
            if not {"task", "metric"} <= set(c) or c.get("fmt", "pct") not in FORMATS:
                raise InputError(
                    f"{path}: table {name!r}: column {c} needs task, metric and fmt {'|'.join(FORMATS)}"
                )
        for r in t["rows"]:
            if "method" not in r:
                raise InputError(f"{path}: table {name!r}: row {r} has no 'method'")
    return tables


# -----------------------------------------------------------------------------
# statistics


def t_quantile_975(df: int) -> float:
    """Two-sided 95% quantile of Student's t with integer df, without scipy.

    Uses the exact finite series for P(|T| <= t) with integer df (Abramowitz & Stegun 26.7.3/26.7.4) and
    bisection, so the interval needs nothing beyond the standard library.
    """

    def central(t: float) -> float:
        th = math.atan(t / math.sqrt(df))
        s, c = math.sin(th), math.cos(th)
        if df % 2 == 1:
            term, acc = c, c if df > 1 else 0.0
            for k in range(3, df - 1, 2):  # c + 2/3 c^3 + 2*4/(3*5) c^5 + ... up to c^(df-2)
                term *= c * c * (k - 1) / k
                acc += term
            return 2.0 / math.pi * (th + s * acc)
        term, acc = 1.0, 1.0
        for k in range(2, df - 1, 2):  # 1 + 1/2 c^2 + 1*3/(2*4) c^4 + ... up to c^(df-2)
            term *= c * c * (k - 1) / k
            acc += term
        return s * acc

    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if central(mid) < 0.95 else (lo, mid)
    return (lo + hi) / 2


@dataclass
class Cell:
    """Ours for one (table row, column): one value per run."""

    values: list[float]
    runs: list[str]
    seeds: list[Any]
    ns: list[int]

    @property
    def k(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.k

    @property
    def std(self) -> float | None:
        if self.k < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.k - 1))

    def ci95(self, clip: bool = False) -> tuple[float, float] | None:
        """95% t-interval of the mean over seeds; clip=True bounds it to [0, 1] (an accuracy's range)."""
        if self.k < 2:
            return None
        half = t_quantile_975(self.k - 1) * self.std / math.sqrt(self.k)
        lo, hi = self.mean - half, self.mean + half
        return (max(lo, 0.0), min(hi, 1.0)) if clip else (lo, hi)


# -----------------------------------------------------------------------------
# building one table


def matches(d: dict[str, Any], flt: dict[str, Any] | None) -> bool:
    """Every filter field must match one of its glob patterns (a missing field matches nothing)."""
    for k, pats in (flt or {}).items():
        pats = pats if isinstance(pats, list) else [pats]
        v = d.get(k)
        if v is None or not any(fnmatch.fnmatchcase(str(v), str(p)) for p in pats):
            return False
    return True


def pick_reported(reported: list[dict[str, str]], sel: dict[str, Any], task: str, metric: str) -> dict | None:
    """The best reported row for a selector: first preferred source, then protocol order, then file order."""
    sel = dict(sel)
    prefer = sel.pop("prefer", [])
    protocols = sel.get("protocol")
    cands = []
    for i, r in enumerate(reported):
        if r["task"] != task or r["metric"] != metric:
            continue
        if not all(r.get(k, "") in (v if isinstance(v, list) else [v]) for k, v in sel.items()):
            continue
        p_rank = next((j for j, s in enumerate(prefer) if s in r["source"]), len(prefer))
        proto_rank = protocols.index(r["protocol"]) if isinstance(protocols, list) else 0
        cands.append(((p_rank, proto_rank, i), r))
    return (
        dict(min(cands, key=lambda c: c[0])[1]) if cands else None
    )  # a copy: tables number sources separately


# Column formats: pct (a fraction printed x100, one decimal), pp (a difference of fractions in percentage
# points, signed: the multimodal gain), raw (three decimals), count (an integer with thousands separators:
# steps, sequences), dec1 (one decimal: minutes); the last two print the mean only.
FORMATS = ("pct", "pp", "raw", "count", "dec1")
MEAN_ONLY = ("count", "dec1")  # budgets (equal by construction) and wall time: the mean, no spread


def fmt_num(x: float, fmt: str, digits_pct: int = 1, digits_raw: int = 3) -> str:
    if fmt == "pct":
        return f"{x * 100:.{digits_pct}f}"
    if fmt == "pp":
        return f"{x * 100:+.{digits_pct}f}"
    if fmt == "count":
        return f"{x:,.0f}"
    if fmt == "dec1":
        return f"{x:.1f}"
    return f"{x:.{digits_raw}f}"


@dataclass
class TableRow:
    """One row of a table (a method): its spec from tables.yaml, our cell and the reported row per column,
    and ``k``, the most runs behind any of its cells."""

    spec: dict
    cells: list[Cell | None]
    reported: list[dict | None]
    k: int


@dataclass
class Table:
    """A table with every cell decided; renderers only format it."""

    name: str
    spec: dict
    columns: list[dict]
    rows: list[TableRow]
    sources: list[str]
    notes: list[str]
    n_by_col: list[str]
    inputs: list[str] = field(default_factory=lambda: ["results/summary.jsonl", "eval/reported.csv"])


def latest_per_run(rows: list[Row]) -> dict[tuple[str, str, str, str], Row]:
    """The latest row of each (run, task, metric, decoding): the greatest time, then the later line. A row
    scored on the first N items only (``limit``) never replaces one scored on the whole split: the protocol's
    grounding evaluation repeats the greedy accuracy on a subset, after the full-split evaluation."""
    latest: dict[tuple[str, str, str, str], Row] = {}

    def rank(r: Row) -> tuple:
        return (r.record.get("limit") is None, r.order)

    for r in rows:
        key = (r.record["run"], r.record["task"], r.record["metric"], str(r.record.get("decoding")))
        if key not in latest or rank(r) > rank(latest[key]):
            latest[key] = r
    return latest


def column_hits(latest: dict[tuple[str, str, str, str], Row], column: dict) -> list[Row]:
    """A column's rows, one per run (sorted by run): its task and metric, and its ``decoding`` when the
    column names one (a table can show greedy and avg@k accuracy side by side); else the latest of any."""
    per_run: dict[str, Row] = {}
    for (run, task, metric, decoding), r in latest.items():
        if task != column["task"] or metric != column["metric"]:
            continue
        if "decoding" in column and decoding != column["decoding"]:
            continue
        if run not in per_run or r.order > per_run[run].order:
            per_run[run] = r
    return [per_run[run] for run in sorted(per_run)]


def gather_cells(rows: list[Row], columns: list[dict]) -> list[Cell | None]:
    """Ours per column from one table row's summary rows: one value per run (None: no run)."""
    latest = latest_per_run(rows)
    cells: list[Cell | None] = []
    for c in columns:
        hits = column_hits(latest, c)
        if c.get("fmt", "pct") == "pct":
            for r in hits:
                if not 0.0 <= r.record["value"] <= 1.0:
                    raise InputError(
                        f"{r.path} line {r.line}: {c['task']}/{c['metric']} value {r.record['value']} is "
                        "outside [0, 1]; summary.jsonl stores accuracy as a fraction, not a percentage"
                    )
        cells.append(
            Cell(
                [r.record["value"] for r in hits],
                [r.record["run"] for r in hits],
                [r.record.get("seed") for r in hits],
                [r.record["n"] for r in hits],
            )
            if hits
            else None
        )
    return cells


def gather_row(
    row_spec: dict, selected: list[Row], columns: list[dict], reported: list[dict[str, str]], notes: list[str]
) -> TableRow | None:
    """One table row (a method) from the table's selected summary rows and reported.csv; None when it has
    neither (noted). Notes also say when a row has reported values only or runs that share a seed."""
    mine = [
        r
        for r in selected
        if r.record["method"] == row_spec["method"] and matches(r.record, row_spec.get("filter"))
    ]
    cells = gather_cells(mine, columns)
    reported_cells = [
        pick_reported(reported, row_spec["reported"], c["task"], c["metric"])
        if "reported" in row_spec
        else None
        for c in columns
    ]
    has_ours = any(cells)
    has_reported = any(r is not None and r["value"].strip() for r in reported_cells)
    row_name = f"{row_spec.get('label', row_spec['method'])} ({row_spec['method']})"
    if not has_ours and not has_reported:
        notes.append(f"{row_name}: no results yet")
        return None
    if not has_ours and not row_spec.get("reference_only"):
        notes.append(f"{row_name}: no results of ours yet, reported values only")
    runs_seeds: dict[str, Any] = {}
    for cell in cells:
        if cell:
            runs_seeds.update(zip(cell.runs, cell.seeds, strict=True))
    seeds = [s for s in runs_seeds.values() if s is not None]
    if len(seeds) != len(set(seeds)):
        notes.append(f"{row_spec['method']}: several runs share a seed ({sorted(runs_seeds.items())})")
    return TableRow(row_spec, cells, reported_cells, max((c.k for c in cells if c), default=0))


def drop_empty_columns(columns: list[dict], rows: list[TableRow], notes: list[str]) -> list[dict]:
    """Leave out the columns no kept row has data in (noted); the rows lose those cells too."""
    keep = [
        j
        for j in range(len(columns))
        if any(
            row.cells[j] or (row.reported[j] is not None and row.reported[j]["value"].strip()) for row in rows
        )
    ]
    dropped = [
        columns[j].get("label", f"{columns[j]['task']}/{columns[j]['metric']}")
        for j in range(len(columns))
        if j not in keep
    ]
    if dropped:
        notes.append("columns without data left out: " + ", ".join(dropped))
    for row in rows:
        row.cells = [row.cells[j] for j in keep]
        row.reported = [row.reported[j] for j in keep]
    return [columns[j] for j in keep]


def number_sources(rows: list[TableRow]) -> list[str]:
    """The reported values' sources in order of first use; each reported row gets its number."""
    sources: list[str] = []
    for row in rows:
        for r in row.reported:
            if r is not None:
                label = r["source"] + (f" (protocol {r['protocol']})" if r["protocol"] else "")
                if r.get("note", "") and not r["value"].strip():
                    label += f": {r['note']}"
                if label not in sources:
                    sources.append(label)
                r["_src_idx"] = str(sources.index(label) + 1)
    return sources


def items_per_column(rows: list[TableRow], n_columns: int) -> list[str]:
    """The n line: scored items per column, a range when the runs differ."""
    n_by_col = []
    for j in range(n_columns):
        ns = [n for row in rows if row.cells[j] for n in row.cells[j].ns]
        n_by_col.append(DASH if not ns else str(min(ns)) if min(ns) == max(ns) else f"{min(ns)}-{max(ns)}")
    return n_by_col


def build_table(name: str, spec: dict, summary: list[Row], reported: list[dict[str, str]]) -> Table:
    """Decide every cell of one table of tables.yaml: gather its rows, drop empty columns, number the
    sources, count the items."""
    selected = [r for r in summary if matches(r.record, spec.get("filter"))]
    notes: list[str] = []
    if summary and not selected:
        notes.append(
            f"none of the {len(summary)} summary rows matches this table's filter {spec.get('filter')}"
        )
    rows = [
        row
        for row_spec in spec["rows"]
        if (row := gather_row(row_spec, selected, spec["columns"], reported, notes)) is not None
    ]
    columns = drop_empty_columns(spec["columns"], rows, notes)
    sources = number_sources(rows)
    return Table(name, spec, columns, rows, sources, notes, items_per_column(rows, len(columns)))


# -----------------------------------------------------------------------------
# rendering


def ours_text(cell: Cell | None, fmt: str, row_k: int, ci: bool) -> str:
    if cell is None:
        return DASH
    s = fmt_num(cell.mean, fmt)
    if fmt in MEAN_ONLY:
        return s if cell.k == row_k else f"{s} (k={cell.k})"
    if cell.std is not None:
        s += f" ± {fmt_num(cell.std, 'pct' if fmt == 'pp' else fmt)}"  # a spread has no sign
    if ci and cell.ci95():
        lo, hi = cell.ci95(clip=fmt == "pct")
        s += f" [{fmt_num(lo, fmt)}, {fmt_num(hi, fmt)}]"
    if cell.k != row_k:
        s += f" (k={cell.k})"
    return s


def reported_value(r: dict | None) -> float | None:
    return float(r["value"]) if r is not None and r["value"].strip() else None


def delta_value(cell: Cell | None, r: dict | None, fmt: str) -> float | None:
    rv = reported_value(r)
    if cell is None or rv is None:
        return None
    return (cell.mean * 100 if fmt == "pct" else cell.mean) - rv


def grid(table: Table, src_mark: Callable[[str], str]) -> list[tuple[str, str, list[str]]]:
    """(row label, line kind, cells) lines shared by the Markdown and LaTeX renderers."""
    ci = bool(table.spec.get("ci95"))
    lines = []
    for row in table.rows:
        fmts = [c.get("fmt", "pct") for c in table.columns]
        label = row.spec.get("label", row.spec["method"])
        first = True
        if row.k > 0:  # rows without runs of ours (yet) show only their reported line
            k = row.k
            kind = f"ours ({k} seeds)" if k > 1 else "ours (1 run)"
            lines.append(
                (label, kind, [ours_text(c, f, k, ci) for c, f in zip(row.cells, fmts, strict=True)])
            )
            first = False
        if any(r is not None for r in row.reported):
            reported_line = [
                DASH
                if r is None
                else (
                    f"{r['value']} {src_mark(r['_src_idx'])}"
                    if r["value"].strip()
                    else f"n/a {src_mark(r['_src_idx'])}"
                )
                for r in row.reported
            ]
            lines.append((label if first else "", "reported", reported_line))
            ds = [delta_value(c, r, f) for c, r, f in zip(row.cells, row.reported, fmts, strict=True)]
            if any(d is not None for d in ds):
                lines.append(("", "delta", [DASH if d is None else f"{d:+.1f}" for d in ds]))
    return lines


def caption_text(table: Table) -> str:
    s = table.spec.get("caption", "").strip()
    if table.spec.get("protocol"):
        s += f" Protocol: {table.spec['protocol'].strip()}"
    ci = ", with a 95% t-interval [lo, hi] clipped to [0, 100]" if table.spec.get("ci95") else ""
    s += (
        f" Ours: mean ± sample std over seeds{ci}; k = runs behind a cell when it differs from its row; "
        "accuracies in percent"
    )
    if table.sources:
        s += "; delta = ours - reported"
    return s.strip() + "; n = scored items per column."


def render_markdown(table: Table) -> str:
    out = [f"## {table.spec['title']}", "", caption_text(table), ""]
    header = ["Method", ""] + [c.get("label", f"{c['task']}/{c['metric']}") for c in table.columns]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|---|" + "---:|" * len(table.columns))
    kind_label = {"reported": "reported", "delta": "Δ"}
    for label, kind, cells in grid(table, lambda i: f"[{i}]"):
        line = [label, kind_label.get(kind, kind)] + cells
        out.append("| " + " | ".join(x.replace("|", "\\|") for x in line) + " |")
    out.append("| n (items) | | " + " | ".join(table.n_by_col) + " |")
    out.append("")
    if table.sources:
        out.append(
            "Reported values: " + "; ".join(f"[{i}] {s}" for i, s in enumerate(table.sources, 1)) + "."
        )
        out.append("")
    if table.notes:
        out.append("Notes: " + "; ".join(table.notes) + ".")
        out.append("")
    out.append(f"Generated by eval/make_tables.py from {' and '.join(table.inputs)}; do not edit by hand.")
    return "\n".join(out) + "\n"


def latex_escape(s: str) -> str:
    escapes = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
    }
    s = "".join(escapes.get(ch, ch) for ch in s)
    return (
        s.replace("±", r"$\pm$")
        .replace("Δ", r"$\Delta$")
        .replace("–", "--")
        .replace("~", r"\textasciitilde{}")
    )


def render_latex(table: Table) -> str:
    cols = "ll" + "r" * len(table.columns)
    out = [
        "% Generated by eval/make_tables.py; do not edit by hand.",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\caption{" + latex_escape(table.spec["title"] + ". " + caption_text(table)) + "}",
        r"\label{tab:" + table.name + "}",
        r"\begin{tabular}{" + cols + "}",
        r"\toprule",
        " & ".join(["Method", ""] + [latex_escape(c.get("label", c["task"])) for c in table.columns])
        + r" \\",
        r"\midrule",
    ]
    kind_label = {"reported": "reported", "delta": r"$\Delta$"}
    # source marks go through escaping as control characters, then become superscripts
    for label, kind, cells in grid(table, lambda i: f"\x00{i}\x01"):
        cells = [latex_escape(c).replace(" \x00", r"\textsuperscript{").replace("\x01", "}") for c in cells]
        if label and kind != "delta" and out[-1] != r"\midrule":
            out.append(r"\addlinespace")
        out.append(
            " & ".join([latex_escape(label), kind_label.get(kind, latex_escape(kind))] + cells) + r" \\"
        )
    out += [
        r"\midrule",
        " & ".join(["n (items)", ""] + [latex_escape(n) for n in table.n_by_col]) + r" \\",
        r"\bottomrule",
        r"\end{tabular}",
    ]
    foot = []
    if table.sources:
        foot.append(
            "Reported values: "
            + "; ".join(f"$^{i}$ {latex_escape(s)}" for i, s in enumerate(table.sources, 1))
            + "."
        )
    if table.notes:
        foot.append("Notes: " + latex_escape("; ".join(table.notes)) + ".")
    if foot:
        out += [r"\par\footnotesize " + " ".join(foot)]
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


CSV_FIELDS = [
    "table", "row", "method", "column", "task", "metric", "fmt", "ours_mean", "ours_std", "ours_ci95_lo",
    "ours_ci95_hi", "n_seeds", "runs", "seeds", "n_items", "reported", "reported_protocol", "reported_source",
    "reported_note", "delta",
]  # fmt: skip


def render_csv(table: Table) -> str:
    """Tidy CSV, one line per (row, column); pct values in percent with two decimals."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in table.rows:
        for c, cell, r in zip(table.columns, row.cells, row.reported, strict=True):
            fmt = c.get("fmt", "pct")

            def f2(x: float, fmt: str = fmt) -> str:
                return fmt_num(x, fmt, 2, 4)

            ci = cell.ci95(clip=fmt == "pct") if cell else None
            d = delta_value(cell, r, fmt)
            w.writerow(
                {
                    "table": table.name,
                    "row": row.spec.get("label", row.spec["method"]),
                    "method": row.spec["method"],
                    "column": c.get("label", ""),
                    "task": c["task"],
                    "metric": c["metric"],
                    "fmt": fmt,
                    "ours_mean": f2(cell.mean) if cell else "",
                    "ours_std": f2(cell.std) if cell and cell.std is not None else "",
                    "ours_ci95_lo": f2(ci[0]) if ci else "",
                    "ours_ci95_hi": f2(ci[1]) if ci else "",
                    "n_seeds": cell.k if cell else 0,
                    "runs": " ".join(cell.runs) if cell else "",
                    "seeds": " ".join("null" if s is None else str(s) for s in cell.seeds) if cell else "",
                    "n_items": " ".join(str(n) for n in cell.ns) if cell else "",
                    "reported": r["value"] if r else "",
                    "reported_protocol": r["protocol"] if r else "",
                    "reported_source": r["source"] if r else "",
                    "reported_note": r.get("note", "") if r else "",
                    "delta": f"{d:.2f}" if d is not None else "",
                }
            )
    return buf.getvalue()


# -----------------------------------------------------------------------------


def _shown_path(path: str | Path) -> str:
    """A path as a table footer names it: relative to the repository when inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


def parse_task_aliases(
    values: list[str], flag: str = "--task-alias", example: str = "synthetic_test=sealed_test"
) -> dict[str, str]:
    """``--task-alias NAMED=SUMMARY`` values as a mapping (a table's or plot's task -> the task its rows
    carry, e.g. synthetic_test -> sealed_test); a malformed value is an :class:`InputError` naming
    ``flag``."""
    bad = [a for a in values if a.count("=") != 1 or "" in a.split("=")]
    if bad:
        raise InputError(f"{flag} {bad}: expected SPEC_TASK=TASK, e.g. {example}")
    return dict(a.split("=") for a in values)


def with_task_aliases(spec: dict, aliases: dict[str, str]) -> dict:
    """The table spec with each column's task renamed by ``aliases`` (the same table read from other splits,
    e.g. synthetic_test -> sealed_test), the renaming stated in the protocol line."""
    if not aliases:
        return spec
    columns = [{**c, "task": aliases.get(c["task"], c["task"])} for c in spec["columns"]]
    renamed = ", ".join(f"{a} as {b}" for a, b in aliases.items())
    protocol = f"{spec.get('protocol', '').strip()} Splits: {renamed}.".strip()
    return {**spec, "columns": columns, "protocol": protocol}


def write_tables(
    summary_paths: list[str],
    tables_path: str,
    reported_path: str,
    out: str | Path,
    names: list[str] | None,
    task_aliases: dict[str, str] | None = None,
) -> None:
    """Render the named tables of ``tables_path`` (default: all) to ``out/<name>.{md,csv,tex}``, one line
    per table on stdout; ``task_aliases`` renames the columns' tasks (:func:`with_task_aliases`). Input
    errors raise :class:`InputError` before anything is written."""
    tables = {
        name: with_task_aliases(spec, task_aliases or {}) for name, spec in load_tables(tables_path).items()
    }
    summary = add_derived_rows(load_summary(summary_paths))
    reported = load_reported(reported_path)
    names = names or list(tables)
    unknown = [n for n in names if n not in tables]
    if unknown:
        raise InputError(f"{tables_path}: no table named {unknown} (have {list(tables)})")
    out = Path(out)
    for name in names:
        table = build_table(name, tables[name], summary, reported)
        table.inputs = [_shown_path(p) for p in [*summary_paths, reported_path]]  # the files it read
        atomic_write_text(out / f"{name}.md", render_markdown(table))
        atomic_write_text(out / f"{name}.csv", render_csv(table))
        atomic_write_text(out / f"{name}.tex", render_latex(table))
        print(f"{name}: {len(table.rows)} rows x {len(table.columns)} columns -> {out / name}.{{md,csv,tex}}")
