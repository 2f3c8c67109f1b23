"""Registered comparisons (tgrl/evaluation/registered.py, eval/registered_comparisons.py): the paired
t-test, Holm, the minimal detectable difference and the table, against values computed by hand."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from tgrl.evaluation.registered import (
    evaluate,
    holm,
    item_disagreement,
    load_preregistration,
    minimal_detectable_difference,
    paired_t_test,
    projected_sd,
    render,
    seeds_for,
    spread_table,
)
from tgrl.utils import REPO_ROOT, UserError


def t3_two_sided_p(t: float) -> float:
    """P(|T| > t) for Student's t with 3 degrees of freedom, closed form (A&S 26.7.3):
    P(|T| <= t) = (2 / pi) (theta + sin(theta) cos(theta)), theta = atan(t / sqrt(3))."""
    theta = math.atan(t / math.sqrt(3))
    return 1 - 2 / math.pi * (theta + math.sin(theta) * math.cos(theta))


def test_paired_t_test_by_hand():
    # d = 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), se sqrt(5/3)/2, t = 2.5 / se = sqrt(15) = 3.873
    result = paired_t_test([1.0, 2.0, 3.0, 4.0])
    se = math.sqrt(5 / 3) / 2
    assert result.mean == 2.5 and result.sd == pytest.approx(math.sqrt(5 / 3))
    assert result.t == pytest.approx(math.sqrt(15))
    assert result.p == pytest.approx(t3_two_sided_p(math.sqrt(15)), abs=1e-9)
    assert result.p == pytest.approx(0.0305, abs=5e-4)
    # t_{0.975, 3} = 3.182446 (tables)
    assert result.ci == pytest.approx((2.5 - 3.182446 * se, 2.5 + 3.182446 * se), abs=1e-5)
    assert paired_t_test([-1.0, -2.0, -3.0, -4.0]).p == pytest.approx(result.p)  # two-sided
    with pytest.raises(ValueError):
        paired_t_test([1.0])


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.04 -> 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_minimal_detectable_difference_matches_known_power_values():
    # A paired t-test with effect size d = 1, alpha 0.05 two-sided, needs 10 pairs for power 0.8 (power
    # 0.803 at n = 10, G*Power; 9 pairs fall short): so the MDD at n = 10 is just below 1 sigma, at 9 above
    assert 0.98 < minimal_detectable_difference(10, 1.0, 0.05) < 1.0
    assert minimal_detectable_difference(9, 1.0, 0.05) > 1.0
    assert seeds_for(1.0, 1.0, 0.05) == 10
    # large n: the normal approximation (z_{0.975} + z_{0.8}) sigma / sqrt(n)
    assert minimal_detectable_difference(400, 2.0, 0.05) == pytest.approx(2 * 2.801585 / 20, rel=5e-3)
    # it scales with sigma, and a stricter alpha (Holm's first step, alpha / m) needs a larger difference
    assert minimal_detectable_difference(8, 3.0, 0.05) == pytest.approx(
        3 * minimal_detectable_difference(8, 1, 0.05)
    )
    assert minimal_detectable_difference(8, 1.0, 0.05 / 12) > minimal_detectable_difference(8, 1.0, 0.05)


def rows(method, values, task="sealed_test", metric="acc"):
    return [
        {"run": f"{method}_s{s}", "method": method, "seed": s, "task": task, "metric": metric, "value": v,
         "n": 1000, "decoding": "greedy", "time": "2026-01-01T00:00:00"}
        for s, v in enumerate(values)
    ]  # fmt: skip


PREREG = {
    "status": "draft",
    "seeds": [0, 1, 2, 3],
    "test": {"type": "paired_t", "sides": "two", "correction": "holm", "alpha": 0.05},
    "power": 0.8,
    "comparisons": [
        {"id": "tgrl_vs_grpo", "a": "tgrl", "b": "grpo", "task": "sealed_test", "metric": "acc"},
        {"id": "tgrl_vs_luffy", "a": "tgrl", "b": "luffy_vl", "task": "sealed_test", "metric": "acc"},
        {"id": "grounding", "a": "tgrl", "b": "grpo", "task": "sealed_twins", "metric": "TBD: tracking"},
    ],
}


def test_registered_table_from_a_summary(tmp_path):
    summary = tmp_path / "summary.jsonl"
    data = rows("grpo", [0.60, 0.61, 0.62, 0.63]) + rows("tgrl", [0.61, 0.63, 0.65, 0.67])
    data += rows("luffy_vl", [0.61, 0.63, 0.65])  # seed 3 missing
    summary.write_text("".join(json.dumps(r) + "\n" for r in data))
    path = tmp_path / "prereg.yaml"
    path.write_text(yaml.safe_dump(PREREG))
    prereg = load_preregistration(path)
    results = {r.comparison.id: r for r in evaluate(prereg, [str(summary)])}
    grpo = results["tgrl_vs_grpo"]
    # differences in points: 1, 2, 3, 4 -> the hand-computed test above; Holm over 3 (two untested = 1)
    assert grpo.test.mean == pytest.approx(2.5) and grpo.test.p == pytest.approx(
        t3_two_sided_p(math.sqrt(15))
    )
    assert grpo.holm_p == pytest.approx(3 * grpo.test.p) and grpo.verdict == "not resolved"
    assert results["tgrl_vs_luffy"].verdict.startswith("incomplete (no pair at seeds [3])")
    assert results["grounding"].verdict == "pending (metric TBD)"
    md, csv = render(prereg, list(results.values()), [str(summary)], footer="Sealed scorings: none.")
    # both means over the paired seeds (tgrl 64, grpo 61.5), then the effect; no registered MDD here
    assert "| tgrl_vs_grpo | tgrl - grpo | sealed_test acc (greedy) | 4 | 64.00 | 61.50 | +2.50 |" in md
    assert md.rstrip().endswith("Sealed scorings: none.")
    assert csv.splitlines()[1].startswith(
        "tgrl_vs_grpo,tgrl,grpo,sealed_test,acc,greedy,4,64.0000,61.5000,2.5000,"
    )
    # a larger effect is resolved
    data = rows("grpo", [0.60, 0.61, 0.62, 0.63]) + rows("tgrl", [0.70, 0.715, 0.73, 0.74])
    summary.write_text("".join(json.dumps(r) + "\n" for r in data))
    assert evaluate(prereg, [str(summary)])[0].verdict == "resolved"


def test_the_table_shows_the_registered_mdd(tmp_path):
    """The power section's MDD at the sealed split size (the largest projected N), else the plain one."""
    spec = yaml.safe_load(yaml.safe_dump(PREREG))
    spec["power_analysis"] = [
        {"id": "tgrl_vs_grpo", "mdd": 5.8, "mdd_at_1000": 5.5, "mdd_at_4000": 5.19},
        {"id": "tgrl_vs_luffy", "mdd": 3.9},
    ]
    path = tmp_path / "prereg.yaml"
    path.write_text(yaml.safe_dump(spec))
    prereg = load_preregistration(path)
    assert prereg.mdd == {"tgrl_vs_grpo": 5.19, "tgrl_vs_luffy": 3.9}
    summary = tmp_path / "summary.jsonl"
    data = rows("grpo", [0.60, 0.61, 0.62, 0.63]) + rows("tgrl", [0.61, 0.63, 0.65, 0.67])
    summary.write_text("".join(json.dumps(r) + "\n" for r in data))
    md, csv = render(prereg, evaluate(prereg, [str(summary)]), [str(summary)])
    line = next(row for row in md.splitlines() if row.startswith("| tgrl_vs_grpo |"))
    assert line.endswith("| 5.2 | not resolved |")
    assert csv.splitlines()[1].endswith(",5.19,not resolved")


def test_the_cli_writes_the_table_with_the_scoring_log_beside_the_summary(tmp_path):
    from eval import registered_comparisons
    from tgrl.sealing import ScoringLog

    summary = tmp_path / "summary.jsonl"
    data = rows("grpo", [0.60, 0.61, 0.62, 0.63]) + rows("tgrl", [0.61, 0.63, 0.65, 0.67])
    summary.write_text("".join(json.dumps(r) + "\n" for r in data))
    path = tmp_path / "prereg.yaml"
    path.write_text(yaml.safe_dump(PREREG))
    log = ScoringLog(tmp_path, "sel")
    for run in ("grpo_s0", "tgrl_s0"):
        log.start(run, run, "sealed_test", "d", None)
        log.scored(run, run, "sealed_test", "d")
    argv = ["--prereg", str(path), "--summary", str(summary), "--out", str(tmp_path / "tables")]
    registered_comparisons.main(argv)
    md = (tmp_path / "tables" / "tiny_registered.md").read_text()
    assert "Sealed scorings (" in md and "2 checkpoints on 1 sealed splits" in md
    with pytest.raises(SystemExit):  # a named log that does not exist is an error naming it
        registered_comparisons.main([*argv, "--scoring-log", str(tmp_path / "missing.jsonl")])
    other = tmp_path / "logs" / "other_log.jsonl"  # a named log is read, whatever its file name
    other.parent.mkdir()
    other.write_text((tmp_path / "scoring_log.jsonl").read_text().split("\n", 1)[0] + "\n")
    registered_comparisons.main([*argv, "--scoring-log", str(other)])
    md = (tmp_path / "tables" / "tiny_registered.md").read_text()
    assert f"Sealed scorings ({other}): 0 checkpoints" in md and "Started, not scored: grpo_s0" in md


def test_an_exploratory_list_is_marked_as_such_and_written_beside(tmp_path):
    from eval import registered_comparisons

    spec = yaml.safe_load(yaml.safe_dump(PREREG))
    spec["status"] = "exploratory"
    spec["comparisons"] = spec["comparisons"][:1]
    path = tmp_path / "exploratory.yaml"
    path.write_text(yaml.safe_dump(spec))
    summary = tmp_path / "summary.jsonl"
    data = rows("grpo", [0.60, 0.61, 0.62, 0.63]) + rows("tgrl", [0.70, 0.715, 0.73, 0.74])
    summary.write_text("".join(json.dumps(r) + "\n" for r in data))
    registered_comparisons.main(["--prereg", str(path), "--summary", str(summary), "--out", str(tmp_path)])
    md = (tmp_path / "tiny_exploratory.md").read_text()
    assert not (tmp_path / "tiny_registered.md").exists()
    assert md.startswith("## Tiny tier: exploratory comparisons") and "not the registered family" in md
    assert "| resolved (exploratory) |" in md


def test_the_committed_exploratory_list_loads():
    prereg = load_preregistration(REPO_ROOT / "results" / "tiny" / "exploratory.yaml")
    registered = load_preregistration(REPO_ROOT / "results" / "tiny" / "preregistration.yaml")
    assert prereg.exploratory and prereg.seeds == registered.seeds
    family = {(c.a, c.b, c.task, c.metric, c.decoding) for c in registered.comparisons}
    assert not family & {(c.a, c.b, c.task, c.metric, c.decoding) for c in prereg.comparisons}


def test_power_analysis_uses_the_measured_paired_spread(tmp_path, capsys):
    summary = tmp_path / "summary.jsonl"
    data = rows("grpo", [0.60, 0.61, 0.62], task="synthetic_test")
    data += rows("tgrl", [0.61, 0.63, 0.65], task="synthetic_test")
    data += rows("luffy_vl", [0.61], task="synthetic_test")
    summary.write_text("".join(json.dumps(r) + "\n" for r in data))
    path = tmp_path / "prereg.yaml"
    path.write_text(yaml.safe_dump(PREREG))
    prereg = load_preregistration(path)
    table = {r["id"]: r for r in spread_table(prereg, [str(summary)], {"sealed_test": "synthetic_test"})}
    assert table["tgrl_vs_grpo"]["sd"] == pytest.approx(1.0)  # differences 1, 2, 3 points
    assert table["tgrl_vs_grpo"]["alpha"] == pytest.approx(0.05 / 3)
    assert table["tgrl_vs_grpo"]["mdd"] == pytest.approx(minimal_detectable_difference(4, 1.0, 0.05 / 3))
    assert table["tgrl_vs_luffy"]["sd"] == pytest.approx(
        math.sqrt(2) * 2.0
    )  # one luffy seed: sqrt(2) x tgrl SD
    assert table["grounding"]["source"] == "metric TBD"

    # the CLI's projection to a larger split: the item disagreement of the given samples sets the item part
    from eval import registered_comparisons

    samples = []
    for name, correct in (("a", [1, 0, 1, 0]), ("b", [1, 1, 1, 0])):
        samples.append(tmp_path / f"{name}.jsonl")
        samples[-1].write_text(
            "".join(json.dumps({"doc_id": i, "acc": v}) + "\n" for i, v in enumerate(correct))
        )
    args = [
        "--prereg",
        str(path),
        "--summary",
        str(summary),
        "--mdd",
        "--alias",
        "sealed_test=synthetic_test",
    ]
    registered_comparisons.main(
        [*args, "--items", "4", "--items-from", "2", "--disagreement-samples", *map(str, samples)]
    )
    report = yaml.safe_load(capsys.readouterr().out)
    assert report["item_noise"]["disagreement"] == 0.25 and report["item_noise"]["checkpoint_pairs"] == 1
    row = {r["id"]: r for r in report["power_analysis"]}["tgrl_vs_grpo"]
    assert row["sd_at_4"] == pytest.approx(projected_sd(1.0, 0.25, 2, 4), rel=1e-3)  # floored model part

    # a malformed --alias is a clear error (exit 2) naming the flag, not a silent mapping
    with pytest.raises(SystemExit) as exit_info:
        registered_comparisons.main([*args[:-1], "sealed_test"])
    assert exit_info.value.code == 2
    assert "--alias ['sealed_test']: expected" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.update(status="final"), "have no metric yet"),
        (lambda p: p.update(seeds=[0]), "at least 2"),
        (lambda p: p["test"].update(correction="bonferroni"), "holm"),
        (lambda p: p["comparisons"].append(dict(p["comparisons"][0])), "given twice"),
        (lambda p: p["comparisons"][0].pop("metric"), "misses"),
    ],
)
def test_bad_preregistrations_are_errors_naming_the_file(tmp_path, change, message):
    spec = yaml.safe_load(yaml.safe_dump(PREREG))
    change(spec)
    path = tmp_path / "prereg.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match=message) as err:
        load_preregistration(path)
    assert "prereg.yaml" in str(err.value)


def test_the_committed_final_preregistration_loads():
    prereg = load_preregistration(REPO_ROOT / "results" / "tiny" / "preregistration.yaml")
    assert prereg.status == "final" and len(prereg.seeds) >= 8
    ids = {c.id for c in prereg.comparisons}
    needed = ("grpo", "no_reweight", "no_f1", "no_f3", "luffy_vl", "sft_rl")
    for other in needed:
        needed_id = f"tgrl_vs_{other}"
        assert {f"{needed_id}_test", f"{needed_id}_shifted"} <= ids


def test_projected_sd_by_hand():
    # sd 2 points at 1,000 items, disagreement 0.25: item part 100^2 * 0.25 / 1000 = 2.5, model part 1.5
    assert projected_sd(2.0, 0.25, 1000, 4000) == pytest.approx(math.sqrt(1.5 + 0.625))
    assert projected_sd(2.0, 0.25, 1000, 1000) == pytest.approx(2.0)
    assert projected_sd(1.0, 0.25, 1000, 4000) == pytest.approx(math.sqrt(0.625))  # model part floored at 0


def test_projected_sd_matches_a_simulation():
    """Checkpoint pairs whose per-item correctness is drawn around item difficulties, with a seed-level shift
    of their difference (the model part): the SD of paired differences over many seeds on a fixed 4,000-item
    split is what projected_sd predicts from the same experiment on a fixed 1,000-item split."""
    import numpy as np

    rng = np.random.default_rng(0)
    seeds = 600

    def experiment(n_items):
        q = rng.uniform(0.2, 0.8, n_items)  # the split, fixed across seeds
        shift = rng.normal(0.0, 0.01, seeds)  # the seed-level difference between the two methods
        a = rng.random((seeds, n_items)) < q
        b = rng.random((seeds, n_items)) < (q - shift[:, None])
        diffs = 100 * (a.mean(1) - b.mean(1))
        return diffs.std(ddof=1), (a != b).mean()

    sd_1000, share = experiment(1000)
    sd_4000, _ = experiment(4000)
    assert projected_sd(sd_1000, share, 1000, 4000) == pytest.approx(sd_4000, rel=0.1)
    assert sd_4000 < 0.75 * sd_1000  # the item part dominates here: the projection is not a no-op


def test_item_disagreement_by_hand(tmp_path):
    paths = []
    for name, correct in (("a", [1, 0, 1, 0]), ("b", [1, 1, 1, 0]), ("c", [0, 0, 0, 0])):
        path = tmp_path / f"{name}.jsonl"
        path.write_text(
            "".join(json.dumps({"doc_id": i, "acc": float(v)}) + "\n" for i, v in enumerate(correct))
        )
        paths.append(path)
    assert item_disagreement(paths) == (pytest.approx((1 / 4 + 2 / 4 + 3 / 4) / 3), 3)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"doc_id": 9, "acc": 1.0}) + "\n")
    with pytest.raises(UserError, match="different items"):
        item_disagreement([paths[0], other])
    with pytest.raises(UserError, match="at least 2"):
        item_disagreement(paths[:1])


def test_v3_registers_v2s_family_and_exploratory_list_verbatim():
    """Protocol v3 replicates v2: its pre-registration and exploratory list are v2's (only comments added)."""
    for name in ("preregistration.yaml", "exploratory.yaml"):
        v2, v3 = (yaml.safe_load((REPO_ROOT / "results" / v / name).read_text()) for v in ("tiny", "tiny_v3"))
        assert v3 == v2, name
    prereg = load_preregistration(REPO_ROOT / "results" / "tiny_v3" / "preregistration.yaml")
    assert len(prereg.comparisons) == 18


def test_replication_table_classifies_each_comparison(tmp_path):
    from eval import replication_table

    head = "id,a,b,task,metric,decoding,n,mean_a,mean_b,effect,ci_lo,ci_hi,sd,t,p,holm_p,registered_mdd,"
    head += "verdict\n"

    def table(name, rows):
        path = tmp_path / f"{name}.csv"
        lines = [
            f"{cid},x,y,t,acc,greedy,8,0,0,{e},{lo},{hi},1,1,0.1,0.1,2,{v}" for cid, e, lo, hi, v in rows
        ]
        path.write_text(head + "\n".join(lines) + "\n")
        return path

    first = table("v2", [("same", 5, 3, 7, "resolved"), ("flip", 4, 2, 6, "resolved"),
                         ("lost", 3, 1, 5, "resolved"), ("new", 0.5, -1, 2, "not resolved"),
                         ("neither", 0.2, -2, 2.4, "not resolved (exploratory)"),
                         ("gone", "", "", "", "incomplete (no pair at seeds [3])")])  # fmt: skip
    second = table("v3", [("same", 6, 4, 8, "resolved"), ("flip", -3, -5, -1, "resolved"),
                          ("lost", 1, -1, 3, "not resolved"), ("new", 4, 2, 6, "resolved"),
                          ("neither", -0.5, -3, 2, "not resolved (exploratory)"),
                          ("gone", 1, 0, 2, "resolved")])  # fmt: skip
    out = tmp_path / "rep"
    replication_table.main(
        ["--original", str(first), "--rerun", str(second), "--labels", "v2", "v3", "--out", str(out)]
    )
    rows = {
        line.split(",")[0]: line.split(",") for line in (tmp_path / "rep.csv").read_text().splitlines()[1:]
    }
    outcome = {cid: row[-1] for cid, row in rows.items()}
    assert outcome == {"same": "replicated", "flip": "reversed", "lost": "not replicated",
                       "new": "resolved only in the rerun", "neither": "not resolved in either",
                       "gone": "incomplete"}  # fmt: skip
    inside = {cid: row[-2] for cid, row in rows.items()}
    assert inside == {"same": "yes", "flip": "no", "lost": "yes", "new": "no", "neither": "yes", "gone": ""}
    md = (tmp_path / "rep.md").read_text()
    assert (
        "| same | +5.00 [+3.00, +7.00] | resolved | +6.00 [+4.00, +8.00] | resolved | yes | replicated |"
        in md
    )
    assert "1 replicated, 1 reversed" in md

    third = table("other", [("same", 1, 0, 2, "resolved")])
    with pytest.raises(SystemExit) as exit_info:
        replication_table.main(["--original", str(first), "--rerun", str(third), "--out", str(out)])
    assert exit_info.value.code == 2
