"""eval/probe_expert_tokens.py: the expert fact-token probe, at T = 1 (the tables) and at a rollout
temperature (rows of their own, so the tables never mix the two)."""

from __future__ import annotations

import importlib
import json

import pytest


def _rows(summary):
    return [json.loads(line) for line in summary.read_text().splitlines()]


def test_probe_rows_at_a_temperature_are_their_own(tiny_checkpoint, synthetic_dir, tmp_path, capsys):
    probe = importlib.import_module("eval.probe_expert_tokens")
    summary = tmp_path / "summary.jsonl"
    common = ["--model", str(tiny_checkpoint), "--jsonl", str(synthetic_dir / "test.jsonl"), "--limit", "6"]
    common += ["--summary", str(summary), "--run", "r", "--method", "base"]
    probe.main(common)
    probe.main([*common, "--temperature", "0.3"])
    probe.main([*common, "--temperature", "0.3"])  # idempotent: the same key adds nothing
    rows = _rows(summary)
    by_decoding = {}
    for row in rows:
        by_decoding.setdefault(row["decoding"], {})[row["metric"]] = row
    assert set(by_decoding) == {"teacher_forced", "teacher_forced_t0.3"}
    assert len(rows) == 2 * len(by_decoding["teacher_forced"])
    plain, hot = (
        by_decoding["teacher_forced"]["expert_fact_p"],
        by_decoding["teacher_forced_t0.3"]["expert_fact_p"],
    )
    assert (
        plain["key"] != hot["key"] and plain["value"] != hot["value"]
    )  # random init: p near 1 / vocab either way
    assert "nothing to do" in capsys.readouterr().out


def test_probe_refuses_a_non_positive_temperature(tiny_checkpoint, synthetic_dir, tmp_path, capsys):
    probe = importlib.import_module("eval.probe_expert_tokens")
    args = ["--model", str(tiny_checkpoint), "--jsonl", str(synthetic_dir / "test.jsonl")]
    args += ["--summary", str(tmp_path / "s.jsonl"), "--run", "r", "--method", "base", "--temperature", "0"]
    with pytest.raises(SystemExit):
        probe.main(args)
    assert "--temperature 0.0: must be > 0" in capsys.readouterr().err
