"""The per-step metrics log: flushed every step (a killed process loses nothing), fsynced only at
checkpoints and at the end (an fsync per step cost 10-15% of a tiny-tier step)."""

import json
import os
from types import SimpleNamespace

from tgrl import utils
from tgrl.metrics import DATA_ORDER_FILE, METRICS_FILE, JsonlMetricsCallback
from tgrl.utils import append_jsonl, fsync_file


def _count_fsyncs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd):
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(utils.os, "fsync", counting)
    return calls


def test_append_jsonl_fsync_switch(tmp_path, monkeypatch):
    calls = _count_fsyncs(monkeypatch)
    path = tmp_path / "log.jsonl"
    append_jsonl(path, [{"a": 1}], fsync=False)
    assert calls == []
    assert json.loads(path.read_text()) == {"a": 1}  # flushed: readable by another process at once
    append_jsonl(path, [{"a": 2}])
    assert len(calls) == 1
    fsync_file(tmp_path / "missing.jsonl")  # no file yet: nothing to sync, no error
    assert len(calls) == 1


def test_metrics_callback_syncs_at_checkpoints_not_per_step(tmp_path, monkeypatch):
    calls = _count_fsyncs(monkeypatch)
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, epoch=0.0)
    (tmp_path / DATA_ORDER_FILE).write_text('{"step": 1, "ids": ["a"]}\n')
    callback = JsonlMetricsCallback()
    for step in range(1, 6):
        state.global_step = step
        callback.on_log(args, state, None, logs={"loss": 0.5, "reward": float("nan")})
    assert calls == []
    rows = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[0]["reward"] is None
    callback.on_save(args, state, None)
    assert len(calls) == 2  # metrics.jsonl and data_order.jsonl
    callback.on_train_end(args, state, None)
    assert len(calls) == 4


def test_git_commit_ignores_results_but_not_code(tmp_path, monkeypatch):
    """Provenance: a run that appends to a committed results file is not 'dirty'; edited code is."""
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "summary.jsonl").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(utils, "REPO_ROOT", tmp_path)
    clean = utils.git_commit()
    assert clean != "unknown" and not clean.endswith("+dirty")
    (tmp_path / "results" / "summary.jsonl").write_text("{}\n{}\n")
    assert utils.git_commit() == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert utils.git_commit() == clean + "+dirty"


# --------------------------------------------------------------------------------------------------
# resume: the steps a resumed run redoes are logged once, not twice


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_resume_drops_the_rows_of_redone_steps(tmp_path):
    """Killed after step 41, resumed from checkpoint 20, run to 60: 60 metrics rows, one per step."""
    args = SimpleNamespace(output_dir=str(tmp_path))
    metrics, order = tmp_path / METRICS_FILE, tmp_path / DATA_ORDER_FILE
    append_jsonl(metrics, [{"step": s, "loss": 1.0} for s in range(1, 42)], fsync=False)
    append_jsonl(order, [{"step": s, "ids": [str(s)]} for s in range(0, 41)], fsync=False)
    with open(metrics, "a") as f:
        f.write('{"step": 42, "lo')  # killed mid-write
    callback = JsonlMetricsCallback()
    state = SimpleNamespace(is_world_process_zero=True, global_step=20, epoch=1.0)
    callback.on_train_begin(args, state, None)
    assert _steps(metrics) == list(range(1, 21))
    assert _steps(order) == list(range(0, 20))  # the batch generated at step 20 is generated again
    for step in range(21, 61):
        state.global_step = step
        callback.on_log(args, state, None, logs={"loss": 0.5})
    assert _steps(metrics) == list(range(1, 61))


def test_other_ranks_and_clean_logs_are_left_alone(tmp_path, monkeypatch):
    args = SimpleNamespace(output_dir=str(tmp_path))
    metrics = tmp_path / METRICS_FILE
    append_jsonl(metrics, [{"step": s} for s in range(1, 6)], fsync=False)
    before = metrics.stat().st_mtime_ns
    JsonlMetricsCallback().on_train_begin(
        args, SimpleNamespace(is_world_process_zero=False, global_step=2), None
    )
    JsonlMetricsCallback().on_train_begin(
        args, SimpleNamespace(is_world_process_zero=True, global_step=5), None
    )
    assert _steps(metrics) == [1, 2, 3, 4, 5] and metrics.stat().st_mtime_ns == before  # nothing rewritten
    JsonlMetricsCallback().on_train_begin(
        args, SimpleNamespace(is_world_process_zero=True, global_step=0), None
    )
    assert metrics.read_text() == ""  # a fresh start into an old folder keeps none of the old run's rows


def test_killed_and_resumed_trainer_logs_each_step_once(tiny_checkpoint, synthetic_dir, tmp_path):
    """The real trainer: killed right after logging step 3, resumed from checkpoint-2, run to step 4."""
    import pytest
    from transformers import AutoModelForImageTextToText, TrainerCallback

    from tests.helpers import write_expert_set
    from tgrl.modeling import load_processor
    from tgrl.rewards import get_reward_funcs
    from tgrl.rl_data import build_rl_dataset
    from tgrl.runs import resolve_resume
    from tgrl.trainer import TGRLConfig, TGRLTrainer

    dataset = build_rl_dataset(write_expert_set(synthetic_dir, tmp_path / "train.jsonl", limit=8))
    out = tmp_path / "run"

    class Kill(Exception):
        pass

    class KillAfterLoggingStep3(TrainerCallback):
        def on_log(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise Kill()

    def trainer():
        args = TGRLConfig(
            output_dir=str(out), use_cpu=True, bf16=False, per_device_train_batch_size=16, num_generations=8,
            max_completion_length=32, max_steps=4, learning_rate=1e-4, logging_steps=1, report_to=[],
            save_strategy="steps", save_steps=2, disable_tqdm=True, seed=0,
        )  # fmt: skip
        model = AutoModelForImageTextToText.from_pretrained(str(tiny_checkpoint))
        return TGRLTrainer(
            model, get_reward_funcs(["accuracy"]), args=args, train_dataset=dataset,
            processing_class=load_processor(tiny_checkpoint),
        )  # fmt: skip

    killed = trainer()
    killed.add_callback(KillAfterLoggingStep3())
    with pytest.raises(Kill):
        killed.train()
    assert _steps(out / METRICS_FILE) == [1, 2, 3]
    trainer().train(resume_from_checkpoint=resolve_resume(str(out), "auto"))
    assert _steps(out / METRICS_FILE) == [1, 2, 3, 4]
    assert _steps(out / DATA_ORDER_FILE) == [0, 1, 2, 3]
