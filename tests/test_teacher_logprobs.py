"""data_prep/score_teacher_logprobs.py and ``expert_ratio: teacher_is`` end to end on the tiny model:
the stored values are the teacher's per-token log-probs in the trainer's token layout, a killed run
resumes, settings changes are refused, and the trainer trains on (and checks) the file."""

import json
import math
from pathlib import Path

import pytest
import torch

from data_prep import score_teacher_logprobs as stl
from tests.helpers import write_expert_set
from tgrl.data import load_problems
from tgrl.modeling import load_model_and_processor, response_token_ids
from tgrl.probe import response_logprobs
from tgrl.utils import read_jsonl
from train import rl

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def expert_set(synthetic_dir, tmp_path):
    """A training set next to its images: 10 problems, every third without an expert."""
    return write_expert_set(
        synthetic_dir, tmp_path / "train.jsonl", limit=10, seed=3, without_expert=lambda i: i % 3 == 2
    )


def scored_rows(path: Path) -> dict[str, dict]:
    return {row["id"]: row for _, row in read_jsonl(path)}


def test_values_are_the_teachers_token_logprobs(expert_set, tiny_checkpoint):
    manifest = stl.main(
        ["--data", str(expert_set), "--teacher", str(tiny_checkpoint), "--policy", str(tiny_checkpoint),
         "--batch-size", "3", "--no-progress"]
    )  # fmt: skip
    out = expert_set.parent / "train.teacher_is.jsonl"
    rows = scored_rows(out)
    assert manifest["scored"] == manifest["scored_this_run"] == 7 and len(rows) == 10
    model, processor = load_model_and_processor(str(tiny_checkpoint), dtype="float32", device="cpu")
    problems = {p.id: p for p in load_problems(out)}
    for pid, row in rows.items():
        expert = row["meta"]["expert"]
        if expert is None:
            continue
        problem = problems[pid]
        ids = response_token_ids(processor.tokenizer, expert["text"])
        assert len(expert["teacher_logprobs"]) == len(ids)  # one per policy token, end-of-turn included
        assert all(v <= 0 for v in expert["teacher_logprobs"])
        # Alone in its batch (no padding): the same numbers up to the stored rounding.
        logp, _ = response_logprobs(
            model, processor, [problem.question], [problem.load_images()], [problem.choices], [ids]
        )
        assert torch.allclose(torch.tensor(expert["teacher_logprobs"]), logp[0], atol=2e-4)
    # The loader hands them to the trainer.
    from tgrl.rl_data import expert_teacher_logprobs

    with_expert = [p for p in problems.values() if p.meta.get("expert")]
    assert all(expert_teacher_logprobs(p) for p in with_expert)


def test_resume_rerun_and_settings_guard(expert_set, tiny_checkpoint, capsys):
    args = [
        "--data",
        str(expert_set),
        "--teacher",
        str(tiny_checkpoint),
        "--batch-size",
        "2",
        "--no-progress",
    ]
    stl.main(args)
    out = expert_set.parent / "train.teacher_is.jsonl"
    log = out.with_name(out.name + ".partial.jsonl")
    full = out.read_text()
    # A run killed after two problems (and mid-way through writing the third line).
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:3]) + lines[3][:20])
    out.unlink()
    manifest = stl.main(args)
    assert manifest["scored_this_run"] == 5 and out.read_text() == full
    assert stl.main(args)["scored_this_run"] == 0  # finished: nothing to do
    with pytest.raises(SystemExit) as err:
        stl.main([*args, "--temperature", "0.7"])
    assert err.value.code == 2 and "other inputs or settings" in capsys.readouterr().err
    hotter = stl.main([*args, "--temperature", "2.0", "--force"])
    assert hotter["scored_this_run"] == 7
    assert hotter["mean_teacher_logprob"] != manifest["mean_teacher_logprob"]


def test_teacher_with_another_tokenizer_is_refused(expert_set, tiny_checkpoint, tmp_path, capsys):
    import shutil

    from transformers import AutoTokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<a_token_the_policy_lacks>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(SystemExit):
        stl.main(["--data", str(expert_set), "--teacher", str(other), "--policy", str(tiny_checkpoint)])
    assert "tokenize differently" in capsys.readouterr().err
    assert not (expert_set.parent / "train.teacher_is.jsonl").exists()


def test_teacher_is_recipe_trains_and_checks_its_input(expert_set, tiny_checkpoint, tmp_path):
    stl.main(["--data", str(expert_set), "--teacher", str(tiny_checkpoint), "--no-progress"])
    common = [
        "--config", str(REPO / "train/recipes/tiny/tgrl_ratio_teacher_is.yaml"),
        f"model_name_or_path={tiny_checkpoint}", "max_steps=2", "per_device_train_batch_size=16",
        "max_completion_length=64", "save_strategy=no", "expert_overlong=truncate",
    ]  # fmt: skip
    out = tmp_path / "run"
    rl.main([*common, f"train_file={expert_set.parent / 'train.teacher_is.jsonl'}", f"output_dir={out}"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["inject/rate"] > 0 for r in rows)
    # The unscored training set: the trainer names the missing field and the script that fills it.
    with pytest.raises(ValueError, match="score_teacher_logprobs.py"):
        rl.main([*common, f"train_file={expert_set}", f"output_dir={tmp_path / 'bad'}"])
