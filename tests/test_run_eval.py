"""eval/run_lmms_eval.py and scripts/eval_all.sh: one real lmms-eval run end to end, resume, bookkeeping.

The end-to-end test runs the real lmms-eval code (no mocks) on CPU: the tiny checkpoint on the synthetic
test split through the generic JSONL task, then reruns the same command and checks nothing is redone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "eval" / "run_lmms_eval.py"
EXPECTED_METRICS = {"acc", "acc_sum", "acc_diff", "acc_cmp", "fact_acc", "format"}


@pytest.fixture(scope="module")
def runner():
    from tgrl.evaluation import runner

    return runner


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TGRL_TORCH_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(RUNNER), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=full_env,
        timeout=300,
    )


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_end_to_end_then_rerun_skips(tiny_checkpoint, synthetic_dir, tmp_path) -> None:
    summary, out = tmp_path / "summary.jsonl", tmp_path / "raw"
    args = [
        "--model", str(tiny_checkpoint), "--jsonl", str(synthetic_dir / "test.jsonl"), "--out", str(out),
        "--summary", str(summary), "--run", "tiny_s0", "--method", "base", "--seed", "0", "--suite", "tiny",
        "--max-new-tokens", "16", "--device", "cpu",
    ]  # fmt: skip
    first = run(*args)
    assert first.returncode == 0, first.stderr[-3000:]

    rows = read_rows(summary)
    assert {r["metric"] for r in rows} == EXPECTED_METRICS
    for row in rows:
        assert row["run"] == "tiny_s0" and row["method"] == "base" and row["seed"] == 0
        assert row["task"] == "test" or row["task"].endswith("_test")
        assert row["checkpoint"] == str(tiny_checkpoint.resolve())
        assert 0.0 <= row["value"] <= 1.0 and row["decoding"] == "greedy" and row["suite"] == "tiny"
        assert row["versions"]["lmms_eval"] == "0.7.3" and row["git_commit"] and row["time"]
        settings = row["settings"]
        assert settings["max_new_tokens"] == 16 and settings["batch_size"] == 32  # flag over suite
        assert settings["generation"] == {
            "max_new_tokens": 16,
            "do_sample": False,
            "temperature": 0.0,
            "top_p": 1.0,
            "until": [],
        }
        assert settings["model"]["prompt_template_sha256"] and settings["extraction"].startswith(
            "tgrl.rewards"
        )
        assert settings["data"]["sha256"]
    n = {r["metric"]: r["n"] for r in rows}
    assert n["acc"] == n["fact_acc"] == n["format"] == 30
    assert n["acc_sum"] + n["acc_diff"] + n["acc_cmp"] == 30

    # the rows pass the table maker's own validation (the consumer of this file)
    from tgrl.evaluation.tables import load_summary

    assert len(load_summary([str(summary)])) == len(rows)

    results_dir = Path(rows[0]["results_dir"])
    results = json.loads((results_dir / "results.json").read_text())
    assert results["lmms_task"] == rows[0]["lmms_task"] and "acc,none" in results["results"]
    samples = read_rows(results_dir / "samples.jsonl")
    assert len(samples) == 30
    first_sample = samples[0]
    assert first_sample["doc"]["id"].startswith("syn-test-") and first_sample["input"]
    assert isinstance(first_sample["resps"][0], list) and "acc" in first_sample and "fact_acc" in first_sample

    again = run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished earlier" in again.stdout
    assert len(read_rows(summary)) == len(rows)


def test_several_tasks_share_one_model_load(tiny_checkpoint, synthetic_dir, tmp_path) -> None:
    """lmms-eval calls the model's clean() after every task; the second task must still find the model."""
    summary = tmp_path / "summary.jsonl"
    result = run(
        "--model", str(tiny_checkpoint), "--out", str(tmp_path / "raw"), "--summary", str(summary),
        "--jsonl", f"synthetic_test={synthetic_dir / 'test.jsonl'}",
        "--jsonl", f"synthetic_train={synthetic_dir / 'train.jsonl'}",
        "--suite", "tiny", "--limit", "4", "--max-new-tokens", "8", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = {row["task"] for row in read_rows(summary)}
    assert tasks == {"synthetic_test", "synthetic_train"}


def test_blind_rows_and_multimodal_gain(tiny_checkpoint, synthetic_dir, tmp_path) -> None:
    """--blind writes its own rows (decoding greedy_blind, a key of its own); once the sighted evaluation is
    there too, mg_<metric> = sighted - blind, written once."""
    summary = tmp_path / "summary.jsonl"
    args = [
        "--model", str(tiny_checkpoint), "--out", str(tmp_path / "raw"), "--summary", str(summary),
        "--jsonl", f"synthetic_test={synthetic_dir / 'test.jsonl'}", "--suite", "tiny", "--limit", "6",
        "--max-new-tokens", "8", "--device", "cpu",
    ]  # fmt: skip
    blind = run(*args, "--blind")
    assert blind.returncode == 0, blind.stderr[-3000:]
    rows = read_rows(summary)
    assert {r["decoding"] for r in rows} == {"greedy_blind"} and not any(
        r["metric"].startswith("mg_") for r in rows
    )
    assert all(r["settings"]["blind"] and r["settings"]["model"]["blind"] for r in rows)
    sighted = run(*args)
    assert sighted.returncode == 0, sighted.stderr[-3000:]
    rows = read_rows(summary)
    value = {(r["decoding"], r["metric"]): r["value"] for r in rows}
    gains = {r["metric"]: r for r in rows if r["metric"].startswith("mg_")}
    assert set(gains) == {f"mg_{m}" for d, m in value if d == "greedy" and (d + "_blind", m) in value}
    assert "mg_acc" in gains and gains["mg_acc"]["decoding"] == "greedy_blind"
    for metric, row in gains.items():
        base = metric.removeprefix("mg_")
        assert row["value"] == value[("greedy", base)] - value[("greedy_blind", base)]
    again = run(*args, "--blind")  # finished: nothing redone, no second gain row
    assert again.returncode == 0 and "finished earlier" in again.stdout
    assert len(read_rows(summary)) == len(rows)
    from tgrl.evaluation.tables import load_summary

    assert len(load_summary([str(summary)])) == len(rows)


def test_twin_split_through_the_runner(tiny_checkpoint, tmp_path) -> None:
    """A twin split evaluates through the generic task and gets the twin_* rows (n = source scenes)."""
    from tgrl.synthetic import build_dataset

    data = tmp_path / "data"
    build_dataset(data, 6, 5, seed=0, twins=True)
    summary = tmp_path / "summary.jsonl"
    result = run(
        "--model", str(tiny_checkpoint), "--out", str(tmp_path / "raw"), "--summary", str(summary),
        "--jsonl", f"synthetic_test_twins={data / 'test_twins.jsonl'}", "--suite", "tiny",
        "--max-new-tokens", "8", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["metric"]: r for r in read_rows(summary)}
    assert {"twin_tracking", "twin_move_invariance", "acc", "fact_acc"} <= set(rows)
    assert rows["twin_tracking"]["n"] == 5 and 0.0 <= rows["twin_tracking"]["value"] <= 1.0


def test_errors_exit_nonzero_with_a_message(tiny_checkpoint, tmp_path) -> None:
    missing = run(
        "--model", str(tmp_path / "nope"), "--jsonl", "x.jsonl", "--summary", str(tmp_path / "s.jsonl")
    )
    assert (
        missing.returncode == 2 and missing.stderr.startswith("error:") and "Traceback" not in missing.stderr
    )
    no_file = run("--model", str(tiny_checkpoint), "--jsonl", str(tmp_path / "absent.jsonl"))
    assert no_file.returncode == 2 and "file not found" in no_file.stderr
    bad_suite = run("--model", str(tiny_checkpoint), "--suite", "nosuch")
    assert bad_suite.returncode == 2 and "suite 'nosuch'" in bad_suite.stderr


def test_failure_inside_lmms_eval_exits_nonzero(tiny_checkpoint, tmp_path) -> None:
    """lmms-eval's CLI would exit 0 here; the runner ends with status 1 and a one-line reason, and
    records nothing."""
    offline = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    summary = tmp_path / "s.jsonl"
    failed = run(
        *("--model", str(tiny_checkpoint), "--tasks", "mmstar", "--limit", "1", "--device", "cpu"),
        *("--out", str(tmp_path / "raw"), "--summary", str(summary)),
        env=offline,
    )
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "mmstar" in last and "Lin-Chen/MMStar" in last
    assert not summary.exists()


def test_task_names_and_settings(runner) -> None:
    tasks = runner.resolve_tasks(["mathvista_testmini", "tgrl_dynamath", "mmstar_reasoning"], [])
    assert [(t["task"], t["lmms_task"], t["builtin"]) for t in tasks] == [
        ("mathvista_testmini", "tgrl_mathvista_testmini", False),
        ("dynamath", "tgrl_dynamath", False),
        ("mmstar_reasoning", "mmstar_reasoning", True),
    ]
    assert runner.jsonl_task_name("data/synthetic/test.jsonl")[0] == "synthetic_test"
    assert runner.jsonl_task_name("mine=data/x.jsonl")[0] == "mine"
    assert runner.decoding_label({**runner.DEFAULT_SETTINGS, "decoding": "avg@8"}) == "avg@8"
    assert (
        runner.decoding_label({**runner.DEFAULT_SETTINGS, "decoding": "avg@4", "temperature": 0.6})
        == "avg@4_t0.6_p1"
    )
    with pytest.raises(runner.UserError):
        runner.parse_decoding("beam@4")


def test_key_changes_with_settings_but_not_device(runner) -> None:
    task = {"task": "synthetic_test", "lmms_task": "tgrl_jsonl_synthetic_test", "data_sha256": "abc"}
    settings = dict(runner.DEFAULT_SETTINGS)
    key = runner.pair_key("/ckpt", task, settings, None)
    assert runner.pair_key("/ckpt", task, {**settings, "device": "cuda:3"}, None) == key
    assert runner.pair_key("/ckpt", task, {**settings, "max_new_tokens": 8}, None) != key
    assert runner.pair_key("/ckpt", task, settings, 10) != key
    assert runner.pair_key("/ckpt", {**task, "data_sha256": "def"}, settings, None) != key
    assert runner.pair_key("/other", task, settings, None) != key


def test_summary_rows_n_and_fraction_checks(runner) -> None:
    samples = [
        {"acc": 1.0, "worst": {"group": "1", "scores": [1.0]}},
        {"acc": 0.0, "worst": {"group": "1", "scores": [0.0]}},
        {"acc": 1.0, "worst": {"group": "2", "scores": [1.0]}},
    ]
    base = {"task": "t"}
    rows = runner.summary_rows(
        {"acc,none": 2 / 3, "acc_stderr,none": "N/A", "worst,none": 0.5}, samples, base, False
    )
    assert {(r["metric"], r["n"]) for r in rows} == {("acc", 3), ("worst", 2)}
    with pytest.raises(RuntimeError, match="not a fraction"):
        runner.summary_rows({"acc,none": 66.7}, samples, base, False)
    percent = runner.summary_rows({"acc,none": 66.7}, samples, base, True)  # a built-in reporting percent
    assert percent[0]["value"] == pytest.approx(0.667) and percent[0]["scale"] == "percent_to_fraction"


def test_finished_keys_tolerates_a_torn_last_line(runner, tmp_path) -> None:
    summary = tmp_path / "s.jsonl"
    summary.write_text(json.dumps({"key": "k1"}) + "\n" + '{"key": "k2"')
    assert runner.finished_keys(summary) == {"k1"}


def test_list_checkpoints_discovery_and_manifest(runner, tmp_path) -> None:
    def model_dir(path: Path) -> Path:
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        (path / "model.safetensors").write_bytes(b"")
        return path

    root = tmp_path / "checkpoints"
    model_dir(root / "grpo_s1")
    model_dir(root / "grpo_s1" / "checkpoint-500")  # a trainer intermediate: skipped
    (root / "grpo_s1" / "tgrl_run.json").write_text(json.dumps({"method": "grpo", "seed": 1}))
    model_dir(root / "tgrl_s2" / "final")
    (root / "notes").mkdir()
    found = runner.list_checkpoints(None, str(root), [])
    assert [
        (Path(e["checkpoint"]).relative_to(root).as_posix(), e["run"], e["method"], e["seed"]) for e in found
    ] == [
        ("grpo_s1", "grpo_s1", "grpo", 1),
        ("tgrl_s2/final", "tgrl_s2_final", "tgrl_s2_final", None),
    ]
    manifest = tmp_path / "runs.jsonl"
    manifest.write_text(
        json.dumps({"checkpoint": "checkpoints/grpo_s1", "run": "g1", "method": "grpo", "seed": 1}) + "\n"
    )
    (entry,) = runner.list_checkpoints(str(manifest), "unused", [])
    assert entry == {
        "checkpoint": str(tmp_path / "checkpoints/grpo_s1"),
        "run": "g1",
        "method": "grpo",
        "seed": 1,
    }
    (hub,) = runner.list_checkpoints(None, "unused", ["Qwen/Qwen2.5-VL-7B-Instruct"])
    assert hub["run"] == hub["method"] == "Qwen_Qwen2.5-VL-7B-Instruct"


def eval_all(env: dict) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "eval_all.sh")],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


def test_eval_all_dry_run_plans_cpu_data_parallel_and_vllm_workers(tiny_checkpoint, tmp_path) -> None:
    cpu = eval_all(
        {
            "CHECKPOINTS": str(tiny_checkpoint),
            "SUITE": "tiny",
            "NUM_GPUS": "0",
            "SUMMARY": str(tmp_path / "s.jsonl"),
        }
    )
    assert cpu.returncode == 0, cpu.stderr
    commands = [line for line in cpu.stdout.splitlines() if line.startswith("+ ")]
    assert len(commands) == 2
    assert (
        "run_lmms_eval.py --model" in commands[0]
        and "--suite tiny" in commands[0]
        and "--device cpu" in commands[0]
    )
    assert "make_tables.py --summary" in commands[1] and str(tmp_path / "s.jsonl") in commands[1]
    assert not (tmp_path / "s.jsonl").exists()  # nothing ran

    hf = eval_all({"CHECKPOINTS": str(tiny_checkpoint), "SUITE": "paper", "BACKEND": "hf", "NUM_GPUS": "4"})
    assert hf.returncode == 0, hf.stderr
    assert "accelerate.commands.launch --multi_gpu --num_processes 4" in hf.stdout

    two = f"{tiny_checkpoint} Qwen/Qwen2.5-VL-7B-Instruct"
    vllm = eval_all({"CHECKPOINTS": two, "SUITE": "paper", "NUM_GPUS": "4", "TP": "2"})
    assert vllm.returncode == 0, vllm.stderr
    assert (
        "[worker 0] CUDA_VISIBLE_DEVICES=0,1" in vllm.stdout
        and "[worker 1] CUDA_VISIBLE_DEVICES=2,3" in vllm.stdout
    )
    assert vllm.stdout.count("--tensor-parallel-size 2") == 2

    none = eval_all({"CHECKPOINTS_DIR": str(tmp_path / "empty"), "NUM_GPUS": "0"})
    assert none.returncode == 2 and "no checkpoints" in none.stderr


def test_an_over_long_item_is_recorded_and_the_task_goes_on(tiny_checkpoint, synthetic_dir, tmp_path) -> None:
    """--max-model-len: the one item whose prompt does not fit is an item-level error (samples.jsonl field
    ``error``, results.json, the count in every summary row), scored wrong; the other items are scored."""
    rows = read_rows(synthetic_dir / "test.jsonl")[:4]
    for row in rows:
        row["images"] = [str(synthetic_dir / image) for image in row["images"]]
    rows[2]["question"] = "Look at every object in the scene once more. " * 60 + rows[2]["question"]
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = tmp_path / "summary.jsonl"
    result = run(
        "--model", str(tiny_checkpoint), "--jsonl", f"items={data}", "--out", str(tmp_path / "raw"),
        "--summary", str(summary), "--run", "limit", "--suite", "tiny", "--max-new-tokens", "8",
        "--device", "cpu", "--max-model-len", "256",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING 1 item(s) not generated, scored as wrong (doc 2: prompt too long:" in result.stdout
    summary_rows = read_rows(summary)
    assert summary_rows and all(r["item_errors"] == 1 for r in summary_rows)
    assert {r["metric"]: r["n"] for r in summary_rows}["acc"] == 4
    results_dir = Path(summary_rows[0]["results_dir"])
    samples = {s["doc_id"]: s for s in read_rows(results_dir / "samples.jsonl")}
    assert samples[2]["error"].startswith("prompt too long: ") and samples[2]["acc"] == 0
    assert all("error" not in samples[d] for d in (0, 1, 3))
    results = json.loads((results_dir / "results.json").read_text())
    assert list(results["item_errors"]) == ["2"]


def test_a_retrained_checkpoint_at_the_same_path_is_evaluated_again(runner, tmp_path) -> None:
    """The skip key includes the weights' sha256: rows of the old weights do not mark the retrained
    checkpoint finished, and unchanged weights still skip (the hash is cached beside the weights)."""
    from tgrl.utils import WEIGHTS_HASH_CACHE, weights_sha256

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"old weights")
    data = tmp_path / "val.jsonl"
    data.write_text('{"id": "a"}\n')
    summary = tmp_path / "summary.jsonl"
    settings = runner.resolve_settings({}, None)

    def pending() -> list[str]:
        plan = runner.plan_evaluation(str(ckpt), [], [f"v={data}"], settings, summary=summary)
        return [t["key"] for t in plan.pending]

    (key,) = pending()
    runner.append_locked(summary, [{"key": key, "metric": "acc", "value": 0.5}])
    assert pending() == [] and (ckpt / WEIGHTS_HASH_CACHE).is_file()
    old_hash = weights_sha256(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"new weights, other size")
    assert weights_sha256(ckpt) != old_hash
    (new_key,) = pending()
    assert new_key != key
    assert runner.pair_key("hub/id", {"task": "t", "lmms_task": "t"}, settings, None) == runner.pair_key(
        "hub/id", {"task": "t", "lmms_task": "t"}, settings, None, None
    )  # no weights (a hub id): the key of earlier runs


def test_every_summary_row_records_the_cpu_model(runner, tmp_path) -> None:
    from tgrl.utils import machine_info

    summary = tmp_path / "summary.jsonl"
    runner.append_locked(summary, [{"metric": "acc", "value": 1.0}])
    (row,) = read_rows(summary)
    assert row["machine"] == machine_info() and row["machine"]["cpu"] and row["machine"]["platform"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "model name" in cpuinfo.read_text():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        assert row["machine"]["cpu"] == names[0]
