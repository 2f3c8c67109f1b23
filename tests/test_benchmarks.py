"""Smoke test of the benchmarks: each runs end to end at minimal size and prints parseable JSON lines
with the expected keys. Structure only, never speed (benchmarks are not timed tests).

Both benchmarks run at once (two cores, ~20 s together), on the session's tiny checkpoint and
synthetic set and an in-test oracle expert file, so nothing is prepared by the scripts themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_step import ratio_records
from tests.helpers import write_expert_set
from tgrl.benchmarking import interleaved

REPO = Path(__file__).resolve().parent.parent

STEP_KEYS = {
    "bench",
    "method",
    "median_step_s",
    "median_generate_s",
    "median_score_s",
    "median_token_pass_s",
    "median_exp_other_s",
    "median_update_s",
    "median_step_cpu_s",
    "mean_step_s",
    "round_median_step_s",
    "steps_timed",
    "len_on_policy",
    "len_expert",
    "padded_width",
    "peak_rss_mb",
}
RATIO_KEYS = {"bench", "name", "ratio", "cpu_ratio", "mean_ratio", "round_ratios", "target_max", "ok"}
EVAL_KEYS = {"bench", "items", "eval_seconds", "samples_per_s", "process_samples_per_s", "peak_rss_mb"}
TEACHER_KEYS = {
    "bench",
    "problems",
    "samples",
    "k",
    "problems_per_s",
    "process_problems_per_s",
    "peak_rss_mb",
}


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def expert_train(synthetic_dir, tmp_path_factory) -> Path:
    """Train rows with an oracle expert trajectory each (the shape filter_trajectories.py writes)."""
    return write_expert_set(synthetic_dir, tmp_path_factory.mktemp("bench_experts") / "train.jsonl", limit=8)


@pytest.mark.slow  # two benchmark processes, each loading TRL and a model: make slow_test, run by CI
def test_benchmarks_print_parseable_json(tmp_path, tiny_checkpoint, synthetic_dir, expert_train):
    step_out, tp_out = tmp_path / "step.json", tmp_path / "throughput.json"
    common = ["--base", str(tiny_checkpoint), "--work", str(tmp_path / "work")]
    step_cmd = [
        sys.executable,
        "benchmarks/bench_step.py",
        *common,
        "--train",
        str(expert_train),
        "--methods",
        "grpo_trl",
        "tgrl",
        "--rounds",
        "1",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--batch",
        "8",
        "--max-len",
        "32",
        "--out",
        str(step_out),
    ]
    tp_cmd = [
        sys.executable,
        "benchmarks/bench_throughput.py",
        *common,
        "--data",
        str(synthetic_dir),
        "--eval-n",
        "2",
        "--oracle-n",
        "4",
        "--hf-n",
        "1",
        "--k",
        "2",
        "--repeats",
        "1",
        "--out",
        str(tp_out),
    ]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in (step_cmd, tp_cmd)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"{proc.args[1]} failed:\n{stdout}\n{stderr[-3000:]}"

    step_lines = json_lines(outputs[0][0])
    methods = {r["method"]: r for r in step_lines if r["bench"] == "step"}
    assert set(methods) == {"grpo_trl", "tgrl"}
    for record in methods.values():
        assert set(record) >= STEP_KEYS, STEP_KEYS - set(record)
        assert record["steps_timed"] == 1 and record["peak_rss_mb"] > 0
    assert methods["grpo_trl"]["median_token_pass_s"] == 0.0  # stock TRL has no token pass
    assert methods["tgrl"]["len_expert"] is not None  # expert rows were injected
    assert "seconds per optimizer step" in outputs[0][0]  # the human table follows the JSON lines
    document = json.loads(step_out.read_text())
    assert document["measurements"] == step_lines
    assert {run["round"] for runs in document["runs"].values() for run in runs} == {0}

    tp_lines = json_lines(outputs[1][0])
    by_name = {r["bench"]: r for r in tp_lines}
    assert set(by_name) == {"eval", "teacher_oracle", "teacher_hf"}
    assert set(by_name["eval"]) >= EVAL_KEYS and by_name["eval"]["items"] == 2
    for name in ("teacher_oracle", "teacher_hf"):
        assert set(by_name[name]) >= TEACHER_KEYS
        assert by_name[name]["problems"] == (4 if name == "teacher_oracle" else 1)
        assert by_name[name]["samples"] == by_name[name]["problems"] * 2
    assert json.loads(tp_out.read_text())["measurements"] == tp_lines


def test_interleaving_rotates_the_method_order():
    order = interleaved(["a", "b", "c"], 3)
    assert [m for r, m in order if r == 0] == ["a", "b", "c"]
    assert [m for r, m in order if r == 1] == ["b", "c", "a"]
    assert [m for r, m in order if r == 2] == ["c", "a", "b"]


def test_ratio_records_against_targets():
    def summary(step: float, cpu: float) -> dict:
        return {
            "median_step_s": step,
            "median_step_cpu_s": cpu,
            "mean_step_s": step,
            "round_median_step_s": [step, step],
        }

    summaries = {"grpo_trl": summary(1.0, 1.0), "grpo": summary(1.04, 0.9), "tgrl": summary(1.3, 1.1)}
    ratios = {r["name"]: r for r in ratio_records(summaries)}
    assert set(ratios) == {"grpo/grpo_trl", "tgrl/grpo"}  # luffy absent: its ratio is skipped
    assert set(ratios["grpo/grpo_trl"]) >= RATIO_KEYS
    assert ratios["grpo/grpo_trl"]["ok"] and ratios["grpo/grpo_trl"]["cpu_ratio"] == 0.9
    assert not ratios["tgrl/grpo"]["ok"] and ratios["tgrl/grpo"]["ratio"] == pytest.approx(1.25)


def test_prefix_sharing_gives_the_same_log_probs_and_gradient(
    tiny_checkpoint, synthetic_dir, tmp_path, capsys
):
    """benchmarks/bench_prefix_sharing.py: each prompt forwarded once per group with its cache repeated gives
    TRL's per-row log-probabilities and gradient (the script exits 1 otherwise), and prints its numbers."""
    from benchmarks import bench_prefix_sharing

    args = ["--base", str(tiny_checkpoint), "--data", str(synthetic_dir), "--work", str(tmp_path)]
    args += ["--prompts", "2", "--group", "3", "--completion", "5", "--repeats", "1"]
    assert bench_prefix_sharing.main(args) == 0
    (record,) = json_lines(capsys.readouterr().out)
    assert record["rows"] == 6 and record["completion_positions"] == 5 and record["prompt_positions"] > 5
    assert record["max_abs_logp_diff"] < 1e-4 and record["grad_rel_diff"] < 1e-4
    assert record["every_row_cpu_s"] > 0 and record["shared_prefix_cpu_s"] > 0
