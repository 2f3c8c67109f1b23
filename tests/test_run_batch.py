"""eval/run_batch.py: several evaluation commands in one process give the rows their own command lines
give, and the first failure ends the batch with its status."""

from __future__ import annotations

import importlib.util
import json

from tgrl.utils import REPO_ROOT

spec = importlib.util.spec_from_file_location("run_batch", REPO_ROOT / "eval" / "run_batch.py")
run_batch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_batch)


def probe(tiny_checkpoint, synthetic_dir, summary, run):
    return ["eval/probe_expert_tokens.py", "--model", str(tiny_checkpoint), "--jsonl",
            str(synthetic_dir / "test.jsonl"), "--summary", str(summary), "--run", run, "--method", "m",
            "--limit", "2"]  # fmt: skip


def test_a_batch_runs_each_command_like_its_command_line(tiny_checkpoint, synthetic_dir, tmp_path):
    summary = tmp_path / "summary.jsonl"
    first, second = (
        probe(tiny_checkpoint, synthetic_dir, summary, "a"),
        probe(tiny_checkpoint, synthetic_dir, summary, "b"),
    )
    assert run_batch.run([first, second]) == 0
    rows = [json.loads(line) for line in summary.read_text().splitlines()]
    assert {r["run"] for r in rows} == {"a", "b"} and len(rows) == 8
    by_run = {(r["run"], r["metric"]): r["value"] for r in rows}
    assert all(by_run[("a", m)] == by_run[("b", m)] for _, m in by_run)  # same checkpoint, same values
    assert run_batch.run([first]) == 0 and len(summary.read_text().splitlines()) == 8  # resumes: nothing new
    bad = [*probe(tiny_checkpoint, synthetic_dir, summary, "c"), "--temperature", "0"]
    third = probe(tiny_checkpoint, synthetic_dir, summary, "d")
    assert run_batch.run([bad, third]) == 2  # the probe's own error status; the batch stops there
    assert not any(json.loads(line)["run"] == "d" for line in summary.read_text().splitlines())
    assert run_batch.run([["scripts/run_protocol.py", "--help"]]) == 2  # only the evaluation scripts
