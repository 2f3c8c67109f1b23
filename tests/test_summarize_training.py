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
