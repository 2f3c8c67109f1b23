"""eval/make_tables.py and eval/reported.csv: generated tables against checked-in expected output.

The expected files in tests/fixtures/tables/expected/ were generated once from the fixture summary and
checked by eye; a few numbers are also recomputed here independently (mean, sample std, t-interval), so a
regenerated expected file cannot silently carry a wrong statistic. If an intended change to the table
layout breaks the comparison, regenerate with:

    python eval/make_tables.py --summary tests/fixtures/tables/summary.jsonl \
        --tables tests/fixtures/tables/tables.yaml --reported tests/fixtures/tables/reported.csv \
        --out tests/fixtures/tables/expected
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tgrl.evaluation.tables as mt
from eval import make_tables

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures" / "tables"
SCRIPT = REPO / "eval" / "make_tables.py"


def run_fixture(out: Path, summary: Path = FIX / "summary.jsonl") -> int:
    return make_tables.main(
        [
            "--summary",
            str(summary),
            "--tables",
            str(FIX / "tables.yaml"),
            "--reported",
            str(FIX / "reported.csv"),
            "--out",
            str(out),
        ]
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def cell(rows: list[dict[str, str]], method: str, task: str, metric: str) -> dict[str, str]:
    (hit,) = [r for r in rows if r["method"] == method and r["task"] == task and r["metric"] == metric]
    return hit


@pytest.fixture(scope="module")
def fixture_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tables")
    assert run_fixture(out) == 0
    return out


@pytest.mark.parametrize("name", ["main.md", "main.csv", "main.tex", "tiny.md", "tiny.csv", "tiny.tex"])
def test_matches_expected_files(fixture_out: Path, name: str) -> None:
    assert (fixture_out / name).read_text() == (FIX / "expected" / name).read_text()


def test_statistics_recomputed_independently(fixture_out: Path) -> None:
    main = read_csv(fixture_out / "main.csv")
    # GRPO MathVista over 3 seeds; the fixture also holds an older duplicate (0.60) and a row appended later
    # but stamped earlier (0.10): the latest by time wins, so only 0.70/0.72/0.71 count.
    grpo = cell(main, "grpo", "mathvista_testmini", "acc")
    vals = [70.0, 72.0, 71.0]
    assert float(grpo["ours_mean"]) == pytest.approx(statistics.mean(vals), abs=0.005)
    assert float(grpo["ours_std"]) == pytest.approx(statistics.stdev(vals), abs=0.005)
    assert grpo["n_seeds"] == "3" and grpo["runs"] == "grpo_7b_s1 grpo_7b_s2 grpo_7b_s3"
    # TGRL MathVerse: seed 3 was never evaluated there, so k=2
    tgrl = cell(main, "tgrl", "mathverse_testmini", "acc")
    assert tgrl["n_seeds"] == "2"
    assert float(tgrl["ours_std"]) == pytest.approx(statistics.stdev([50.0, 52.0]), abs=0.005)
    # base vs the tech report (prefer list), WeMath strict from OpenCompass (protocol B beats the VAPO row
    # whose protocol is unknown), delta = ours - reported
    base = cell(main, "base", "mathvista_testmini", "acc")
    assert base["reported"] == "68.2" and "2502.13923" in base["reported_source"]
    assert float(base["delta"]) == pytest.approx(68.9 - 68.2, abs=0.005)
    assert cell(main, "base", "wemath_testmini", "strict")["reported_protocol"] == "B"
    # the avg@8 row of the base model is a different protocol: not in the greedy table
    assert base["n_seeds"] == "1" and float(base["ours_mean"]) == pytest.approx(68.9)

    tiny = read_csv(fixture_out / "tiny.csv")
    t = cell(tiny, "tgrl", "synthetic_test", "acc")
    vals = [80.0, 84.0, 82.0]
    m, s = statistics.mean(vals), statistics.stdev(vals)
    try:
        from scipy import stats

        t975 = float(stats.t.ppf(0.975, df=2))
    except ImportError:  # pragma: no cover
        t975 = 4.302652729749464  # Student t, df=2, 0.975 quantile
    half = t975 * s / math.sqrt(3)
    assert float(t["ours_ci95_lo"]) == pytest.approx(m - half, abs=0.005)
    assert float(t["ours_ci95_hi"]) == pytest.approx(m + half, abs=0.005)
    # a raw (non-percent) diagnostic keeps its unit
    vd = cell(tiny, "tgrl", "synthetic_test", "vis_dep_expert")
    assert float(vd["ours_mean"]) == pytest.approx(statistics.mean([0.412, 0.398, 0.405]), abs=5e-5)


def test_markdown_shows_layout(fixture_out: Path) -> None:
    md = (fixture_out / "main.md").read_text()
    assert "| GRPO | ours (3 seeds) | 71.0 ± 1.0 | 49.0 ± 1.0 | – |" in md
    assert "51.0 ± 1.4 (k=2)" in md  # fewer seeds in one cell than in its row
    assert "paper tables not public to us" in md
    assert "SFT-then-RL (sft_rl): no results yet" in md  # rows without data are listed, not silently lost
    assert "LogicVista" not in md.split("\n\n")[2]  # a column without data is left out of the table
    assert "| n (items) | | 1000 | 3940 | 1740 |" in md


def test_t_quantile_matches_known_values() -> None:
    known = {1: 12.706204736174707, 2: 4.302652729749464, 4: 2.7764451051977934, 9: 2.2621571627982053}
    for df, q in known.items():
        assert mt.t_quantile_975(df) == pytest.approx(q, rel=1e-9)


def test_latest_row_wins_by_time_then_line(tmp_path: Path) -> None:
    base = {"method": "grpo", "task": "mathvista_testmini", "metric": "acc", "n": 10, "suite": "paper"}
    lines = [
        {**base, "run": "r1", "seed": 1, "value": 0.1, "time": "2026-01-02T00:00:00"},
        {**base, "run": "r1", "seed": 1, "value": 0.2, "time": "2026-01-03T00:00:00+00:00"},  # newest
        {**base, "run": "r1", "seed": 1, "value": 0.3, "time": "2026-01-01T00:00:00"},
        {**base, "run": "r2", "seed": 2, "value": 0.4},  # no time: file order decides
        {**base, "run": "r2", "seed": 2, "value": 0.5},
    ]
    p = tmp_path / "summary.jsonl"
    p.write_text("".join(json.dumps(d) + "\n" for d in lines))
    rows = mt.load_summary([str(p)])
    spec = {
        "title": "t",
        "columns": [{"task": "mathvista_testmini", "metric": "acc"}],
        "rows": [{"method": "grpo"}],
    }
    b = mt.build_table("t", spec, rows, [])
    c = b.rows[0].cells[0]
    assert c.runs == ["r1", "r2"] and c.values == [0.2, 0.5]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"run": "a"\n', "line 1: not valid JSON"),
        (
            '{"run": "a", "method": "m", "task": "t", "metric": "acc", "value": 0.5, "n": 3}\n[1, 2]\n',
            "line 2: expected a JSON object",
        ),
        (
            '\n{"run": "a", "method": "m", "task": "t", "metric": "acc", "value": "0.5", "n": 3}\n',
            "line 2: field 'value'",
        ),
        ('{"method": "m", "task": "t", "metric": "acc", "value": 0.5, "n": 3}\n', "line 1: field 'run'"),
        (
            '{"run": "a", "method": "m", "task": "t", "metric": "acc", "value": 0.5, "n": 2.5}\n',
            "line 1: field 'n'",
        ),
        (
            '{"run": "a", "method": "m", "task": "t", "metric": "acc", "value": 0.5, "n": 3, "time": "yesterday"}\n',
            "line 1: field 'time'",
        ),
    ],
)
def test_malformed_summary_names_file_and_line(tmp_path: Path, capsys, content: str, message: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    assert run_fixture(tmp_path / "out", summary=p) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(p) in err and message in err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_percent_instead_of_fraction_is_an_error(tmp_path: Path, capsys) -> None:
    p = tmp_path / "pct.jsonl"
    row = {
        "run": "g",
        "method": "grpo",
        "task": "mathvista_testmini",
        "metric": "acc",
        "value": 71.3,
        "n": 1000,
    }
    p.write_text(json.dumps({**row, "suite": "paper", "decoding": "greedy"}) + "\n")
    assert run_fixture(tmp_path / "out", summary=p) == 2
    err = capsys.readouterr().err
    assert f"{p} line 1" in err and "fraction" in err


def test_cli_missing_summary_exits_2_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--summary", str(missing), "--out", str(tmp_path / "o")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_repo_tables_spec_with_fixture_summary(tmp_path: Path) -> None:
    """The real eval/tables.yaml and eval/reported.csv render every table from the fixture summary."""
    rc = make_tables.main(["--summary", str(FIX / "summary.jsonl"), "--out", str(tmp_path)])
    assert rc == 0
    spec = yaml.safe_load((REPO / "eval" / "tables.yaml").read_text())
    for name in spec["tables"]:
        for ext in ("md", "csv", "tex"):
            assert (tmp_path / f"{name}.{ext}").stat().st_size > 0
    main = read_csv(tmp_path / "main.csv")
    base = cell(main, "base", "mathvista_testmini", "acc")
    assert base["reported"] == "68.2" and base["reported_protocol"] == "A"
    assert "TGRL (ours)" in (tmp_path / "main.md").read_text()


# -----------------------------------------------------------------------------
# eval/reported.csv


def test_reported_csv_schema() -> None:
    rows = read_csv(REPO / "eval" / "reported.csv")
    need = {
        "base_model",
        "method",
        "model",
        "task",
        "metric",
        "protocol",
        "value",
        "source",
        "benchmark",
        "split",
        "note",
    }
    assert need <= set(rows[0])
    assert len(rows) > 50
    for i, r in enumerate(rows, start=2):
        assert r["protocol"] in {"", "A", "B", "C", "D"}, f"line {i}"
        assert r["task"] and r["metric"] and r["source"].strip(), (
            f"line {i}: task, metric and source required"
        )
        if r["method"] == "tgrl":
            if not r["value"].strip():
                assert "not public" in r["note"], f"line {i}: an empty TGRL row must say why"
            continue
        v = float(r["value"])  # every non-TGRL row carries a number
        assert 0.0 <= v <= 100.0, f"line {i}: reported values are percentages"


def test_reported_csv_has_tgrl_row_per_main_column() -> None:
    rows = read_csv(REPO / "eval" / "reported.csv")
    spec = yaml.safe_load((REPO / "eval" / "tables.yaml").read_text())
    tgrl = {(r["task"], r["metric"]) for r in rows if r["method"] == "tgrl"}
    for c in spec["tables"]["main"]["columns"]:
        assert (c["task"], c["metric"]) in tgrl
    # the same-setup anchors the tables rely on are present
    keys = {(r["method"], r["protocol"], r["base_model"]) for r in rows}
    for method in ("base", "grpo", "dapo", "vppo", "papo_d"):
        assert (method, "C", "Qwen2.5-VL-7B-Instruct") in keys


def test_mmmu_pro_overall_is_derived_from_both_settings(tmp_path: Path) -> None:
    """MMMU-Pro's overall score is the mean of its standard and vision settings (2409.02813); a run
    with only one setting gets no overall cell, and the latest value of each part is used."""
    base = {"method": "grpo", "metric": "acc", "suite": "paper", "decoding": "greedy", "seed": 1}
    lines = [
        {**base, "run": "r1", "task": "mmmu_pro_standard", "value": 0.1, "n": 1730},
        {**base, "run": "r1", "task": "mmmu_pro_standard", "value": 0.40, "n": 1730},  # rerun: wins
        {**base, "run": "r1", "task": "mmmu_pro_vision", "value": 0.30, "n": 1730},
        {**base, "run": "r2", "task": "mmmu_pro_standard", "value": 0.50, "n": 1730},  # no vision
    ]
    p = tmp_path / "summary.jsonl"
    p.write_text("".join(json.dumps(d) + "\n" for d in lines))
    rows = mt.add_derived_rows(mt.load_summary([str(p)]))
    derived = [r.record for r in rows if r.record["task"] == "mmmu_pro"]
    assert len(derived) == 1 and derived[0]["run"] == "r1"
    assert derived[0]["value"] == pytest.approx(0.35) and derived[0]["n"] == 3460
    spec = {"title": "t", "columns": [{"task": "mmmu_pro", "metric": "acc"}], "rows": [{"method": "grpo"}]}
    cell = mt.build_table("t", spec, rows, []).rows[0].cells[0]
    assert cell.runs == ["r1"] and cell.values == [pytest.approx(0.35)]
