"""eval/summarize_training.py: the visual-dependency diagnostic as summary rows (tail means), once."""

import json
from pathlib import Path

import pytest

from eval import summarize_training


def write_metrics(path: Path, steps: int, expert: float) -> None:
    rows = [
        {"step": s, "vis_dep/expert": expert if s > 7 else 9.0, "vis_dep/on_policy": 0.5 if s % 2 else None}
        for s in range(1, steps + 1)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def summary_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tail_means_written_once_and_again_after_more_training(tmp_path, capsys):
    run = tmp_path / "tgrl_s0"
    run.mkdir()
    write_metrics(run / "metrics.jsonl", 10, expert=0.2)
    summary = tmp_path / "summary.jsonl"
    args = ["--run-dir", str(run), "--run", "tgrl_s0", "--method", "tgrl", "--seed", "0"]
    summarize_training.main([*args, "--summary", str(summary)])
    rows = summary_rows(summary)
    by_metric = {r["metric"]: r for r in rows}
    # last 30% of 10 steps = steps 8-10; on-policy logged only on odd steps (9): NaN/None skipped
    assert (
        by_metric["vis_dep_expert"]["value"] == pytest.approx(0.2) and by_metric["vis_dep_expert"]["n"] == 3
    )
    assert by_metric["vis_dep_on_policy"]["n"] == 1
    assert {r["decoding"] for r in rows} == {"training"} and len({r["key"] for r in rows}) == 1
    summarize_training.main([*args, "--summary", str(summary)])  # rerun: nothing new
    assert len(summary_rows(summary)) == 2 and "nothing to do" in capsys.readouterr().out
    write_metrics(run / "metrics.jsonl", 20, expert=0.4)  # the run trained on
    summarize_training.main([*args, "--summary", str(summary)])
    assert [r["value"] for r in summary_rows(summary) if r["metric"] == "vis_dep_expert"] == [
        pytest.approx(0.2),
        pytest.approx(0.4),
    ]


def test_run_without_logged_steps_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(SystemExit) as err:
        summarize_training.main(["--run-dir", str(run), "--run", "r", "--method", "m"])
    assert err.value.code == 2 and "no logged steps" in capsys.readouterr().err


def dip_curve(step: int) -> float:
    """p starts at 0.58, falls to 0.33 by step 100, stays there to step 130, recovers to 0.48 at step 200."""
    if step <= 100:
        return 0.58 - 0.25 * step / 100
    if step <= 130:
        return 0.33
    return 0.33 + 0.15 * (step - 130) / 70


def test_curve_points_follow_a_dip_that_start_and_end_windows_hide(tmp_path, capsys):
    """A curve that starts high, dips and recovers part of the way (the shape of TGRL's expert fact-token p):
    the summary reports step 1, the lowest 20-step mean and its step, and the last 20-step mean, and its
    sentence says the run ended below its start; the same for the on-policy fact accuracy beside it."""
    run = tmp_path / "tgrl_s0"
    run.mkdir()
    rows = [
        {
            "step": s,
            "expert/p_fact": dip_curve(s),
            "fact_accuracy": 0.4 if s < 60 else (0.12 if s < 140 else 0.33),
        }
        for s in range(1, 201)
    ]
    rows[50]["expert/p_fact"] = float("nan")  # a step without experts: skipped, not a zero
    rows[0]["expert/p_fact"] = 0.30  # step 1 is one batch: noisy; the sentence compares 20-step means
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = tmp_path / "summary.jsonl"
    summarize_training.main(
        ["--run-dir", str(run), "--run", "r", "--method", "tgrl", "--summary", str(summary)]
    )
    got = {r["metric"]: r["value"] for r in summary_rows(summary)}
    assert got["expert_p_fact_step0"] == pytest.approx(0.30)
    first = (0.30 + sum(dip_curve(s) for s in range(2, 21))) / 20
    assert got["expert_p_fact_first"] == pytest.approx(first)
    assert got["expert_p_fact_min"] == pytest.approx(0.33)
    assert got["expert_p_fact_min_step"] == 119  # the first 20-step window inside the floor (steps 100-119)
    assert got["expert_p_fact_last"] == pytest.approx(sum(dip_curve(s) for s in range(181, 201)) / 20)
    assert got["fact_acc_train_step0"] == pytest.approx(0.4) and got["fact_acc_train_min"] == pytest.approx(
        0.12
    )
    assert got["fact_acc_train_last"] == pytest.approx(0.33)
    out = capsys.readouterr().out
    assert f"expert fact-token p: first 20 steps {first:.3f} (step 1 alone, before any update: 0.300)" in out
    assert "lowest 0.330 (20-step mean ending at step 119)" in out
    last = got["expert_p_fact_last"]
    assert (
        f"ended below its start ({last - first:+.3f}) after a dip of {0.33 - first:+.3f}" in out
    )  # not above 0.30
    assert "on-policy fact accuracy: first 20 steps 0.400" in out
    assert not any("start" in m for m in got if m.startswith("expert_p"))  # no start-window rows
