"""build_teacher_trajectories.py and merge_shards.py with the oracle backend: records, idempotence,
resume after a torn write, settings guard, config files, shards and their merge checks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from data_prep import build_teacher_trajectories as btt
from data_prep import merge_shards
from tgrl.data import load_problems
from tgrl.rewards import score_completion
from tgrl.utils import REPO_ROOT, UserError

RECORD_KEYS = {
    "id",
    "teacher",
    "sample_idx",
    "text",
    "reward",
    "kept",
    "reject_reason",
    "n_tokens",
    "mean_logprob",
    "finish_reason",
    "gen",
}


def build(data: Path, out: Path, *extra: str) -> int:
    argv = ["--data", str(data), "--out", str(out), "--backend", "oracle", "--k", "4", "--no-progress"]
    try:
        return btt.main([*argv, "--wrong-fact-rate", "0.25", *extra])
    except SystemExit as exit_:
        return int(exit_.code)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(synthetic_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "oracle"
    assert build(synthetic_dir / "train.jsonl", out) == 0
    return out


def test_records_and_manifest(full_run, synthetic_dir):
    problems = {p.id: p for p in load_problems(synthetic_dir / "train.jsonl", check_images=False)}
    rows = rows_of(full_run / "trajectories.jsonl")
    assert len(rows) == 4 * len(problems)
    assert Counter((r["id"], r["sample_idx"]) for r in rows) == Counter(
        {(pid, i): 1 for pid in problems for i in range(4)}
    )
    for r in rows:
        assert set(r) == RECORD_KEYS
        p = problems[r["id"]]
        assert r["reward"] == score_completion(r["text"], p.answer, p.choices, p.answer_type)
        assert r["kept"] is None and r["reject_reason"] is None and r["mean_logprob"] is None
        assert r["teacher"] == "oracle" and set(r["gen"]) == {"temperature", "top_p", "max_tokens", "seed"}
    m = json.loads((full_run / "manifest.json").read_text())
    assert m["complete"] is True and m["running"] is False
    assert m["counts"]["expected"] == m["counts"]["done"] == 240 and m["counts"]["missing"] == 0
    assert m["counts"]["n_correct"] == sum(r["reward"] for r in rows)
    assert m["teacher"] == "oracle" and m["settings"]["k"] == 4
    assert m["fingerprint"]["teacher_options"] == {"wrong_fact_rate": 0.25}
    assert m["input"]["sha256"] and m["throughput_samples_per_s"] > 0


def test_rerun_is_a_no_op(full_run, synthetic_dir, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(full_run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert build(synthetic_dir / "train.jsonl", out) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_after_torn_write_gives_identical_output(full_run, synthetic_dir, tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    full = (full_run / "trajectories.jsonl").read_text().splitlines(keepends=True)
    manifest = json.loads((full_run / "manifest.json").read_text())
    manifest.update(complete=False, running=True)
    (out / "manifest.json").write_text(json.dumps(manifest))
    # 100 whole lines, then half a line: the process died inside a write
    (out / "trajectories.jsonl").write_text("".join(full[:100]) + full[100][:37])
    assert build(synthetic_dir / "train.jsonl", out) == 0
    resumed = rows_of(out / "trajectories.jsonl")
    assert len(resumed) == len(full)
    assert sorted(json.dumps(r, sort_keys=True) for r in resumed) == sorted(
        json.dumps(json.loads(line), sort_keys=True) for line in full
    )
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["generated_this_run"] == len(full) - 100 and m["complete"] is True


def test_other_settings_are_refused_unless_forced(full_run, synthetic_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(full_run, out)
    assert build(synthetic_dir / "train.jsonl", out, "--seed", "1") == 2
    assert "differs in ['seed']" in capsys.readouterr().err
    assert build(synthetic_dir / "train.jsonl", out, "--seed", "1", "--force") == 0
    assert json.loads((out / "manifest.json").read_text())["fingerprint"]["seed"] == 1


def test_config_file_flags_override_and_unknown_keys(synthetic_dir, tmp_path, capsys):
    cfg = tmp_path / "teacher.yaml"
    cfg.write_text(
        f"data: {synthetic_dir / 'train.jsonl'}\nout: {tmp_path / 'o'}\nbackend: oracle\nk: 2\n"
        "wrong-fact-rate: 0.5\nlimit: 5\nno_progress: true\n"
    )
    assert btt.main(["--config", str(cfg), "--k", "3"]) == 0
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["settings"]["k"] == 3 and m["counts"]["done"] == 15
    assert m["fingerprint"]["teacher_options"] == {"wrong_fact_rate": 0.5}
    cfg.write_text("backend: oracle\nwrong_fact_rat: 0.5\n")
    with pytest.raises(SystemExit):
        btt.main(["--config", str(cfg)])
    assert "unknown config key 'wrong_fact_rat'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        btt.main(["--backend", "oracle", "--out", str(tmp_path / "x")])
    assert "--data" in capsys.readouterr().err


def test_option_of_another_backend_is_an_error(synthetic_dir, tmp_path, capsys):
    assert build(synthetic_dir / "train.jsonl", tmp_path / "o", "--base-url", "http://x/v1") == 2
    assert "do not apply to teacher backend 'oracle'" in capsys.readouterr().err


def test_shards_merge_to_the_unsharded_output(full_run, synthetic_dir, tmp_path):
    out = tmp_path / "sharded"
    for i in range(3):
        assert build(synthetic_dir / "train.jsonl", out, "--num-shards", "3", "--shard-index", str(i)) == 0
    sizes = [len(rows_of(out / f"trajectories.shard-{i:05d}-of-00003.jsonl")) for i in range(3)]
    assert sum(sizes) == 240 and all(s > 0 for s in sizes)
    manifest = merge_shards.merge(out)
    assert manifest["counts"]["done"] == 240 and manifest["complete"]
    merged = sorted(json.dumps(r, sort_keys=True) for r in rows_of(out / "trajectories.jsonl"))
    assert merged == sorted(json.dumps(r, sort_keys=True) for r in rows_of(full_run / "trajectories.jsonl"))


def test_merge_names_missing_and_duplicated_pairs(synthetic_dir, tmp_path):
    out = tmp_path / "sharded"
    for i in range(2):
        assert build(synthetic_dir / "train.jsonl", out, "--num-shards", "2", "--shard-index", str(i)) == 0
    shard0 = out / "trajectories.shard-00000-of-00002.jsonl"
    lines = shard0.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])

    shard0.write_text("".join(lines + [lines[0]]))  # a duplicated pair
    with pytest.raises(UserError, match=rf"more than once: \('{first['id']}', {first['sample_idx']}\)"):
        merge_shards.merge(out)
    shard0.write_text("".join(lines[1:]))  # a missing pair
    with pytest.raises(UserError, match=rf"missing: \('{first['id']}', {first['sample_idx']}\)"):
        merge_shards.merge(out)
    (out / "manifest.shard-00001-of-00002.json").unlink()
    with pytest.raises(UserError, match=r"shard\(s\) \[1\] of 2 have no manifest"):
        merge_shards.merge(out)


def test_incomplete_shard_is_refused(synthetic_dir, tmp_path):
    out = tmp_path / "sharded"
    for i in range(2):
        assert build(synthetic_dir / "train.jsonl", out, "--num-shards", "2", "--shard-index", str(i)) == 0
    path = out / "manifest.shard-00001-of-00002.json"
    m = json.loads(path.read_text())
    m.update(complete=False, running=True)
    m["counts"]["missing"] = 5
    path.write_text(json.dumps(m))
    with pytest.raises(UserError, match="shard 1 is incomplete"):
        merge_shards.merge(out)


def test_hf_backend_end_to_end(tiny_checkpoint, synthetic_dir, tmp_path):
    out = tmp_path / "hf"
    argv = ["--data", str(synthetic_dir / "train.jsonl"), "--out", str(out), "--backend", "hf", "--model"]
    argv += [str(tiny_checkpoint), "--k", "2", "--limit", "3", "--max-tokens", "8", "--no-progress"]
    assert btt.main(argv) == 0
    rows = rows_of(out / "trajectories.jsonl")
    assert len(rows) == 6 and all(r["teacher"] == str(tiny_checkpoint) for r in rows)
    assert all(r["reward"] in (0.0, 1.0) and r["gen"]["max_tokens"] == 8 for r in rows)


@pytest.mark.parametrize(
    "env", [{}, {"TEACHER_URL": "http://node:8000/v1", "NUM_SHARDS": "4", "SHARD_INDEX": "2"}]
)
def test_gpu_launcher_dry_run_prints_valid_commands(env):
    import os
    import shlex
    import subprocess

    from data_prep import filter_trajectories

    script = REPO_ROOT / "scripts" / "build_teacher_7b.sh"
    done = subprocess.run(
        ["bash", str(script)],
        env={**os.environ, "DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line) for line in done.stdout.splitlines() if not line.startswith("#")]
    teacher = next(c for c in commands if c[1].endswith("build_teacher_trajectories.py"))
    args = btt.build_parser().parse_args(teacher[2:])  # the printed command is one the builder accepts
    if env:
        assert (args.backend, args.base_url, args.num_shards, args.shard_index) == (
            "openai",
            env["TEACHER_URL"],
            4,
            2,
        )
        assert not any(c[1].endswith("filter_trajectories.py") for c in commands)  # shards filter later
    else:
        assert (args.backend, args.model, args.tensor_parallel_size, args.k) == (
            "vllm",
            "Qwen/Qwen2.5-VL-72B-Instruct",
            8,
            4,
        )
        filt = next(c for c in commands if c[1].endswith("filter_trajectories.py"))
        fargs = filter_trajectories.build_parser().parse_args(filt[2:])
        assert (
            fargs.policy == "Qwen/Qwen2.5-VL-7B-Instruct"
            and fargs.trajectories == args.out / "trajectories.jsonl"
        )
