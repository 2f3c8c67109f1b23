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
