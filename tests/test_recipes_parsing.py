"""Recipe parsing: YAML + command-line overrides into dataclasses; unknown keys are errors naming them."""

from __future__ import annotations

import json
import os

import pytest
from trl import ModelConfig

from tgrl.recipes import overrides_to_dict, parse_recipe
from tgrl.runs import resolve_resume, save_run_record
from tgrl.tgrl_config import RLScriptArguments, TGRLConfig
from tgrl.utils import UserError

TYPES = (RLScriptArguments, TGRLConfig, ModelConfig)


def recipe(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


BASE = "output_dir: {out}\nuse_cpu: true\nbf16: false\nper_device_train_batch_size: 8\nnum_generations: 8\n"


def test_values_are_typed_and_overrides_win(tmp_path):
    path = recipe(
        tmp_path,
        BASE.format(out=tmp_path / "o")
        + "learning_rate: 1e-4\nreward_funcs: [accuracy]\nmodel_name_or_path: m\nreport_to: none\n",
    )
    (script, train, model), merged = parse_recipe(
        TYPES, ["--config", path, "seed=7", "--inject_mode", "never", "--on_policy_clip=false"]
    )
    assert train.learning_rate == 1e-4 and isinstance(train.learning_rate, float)  # YAML 1.1 reads a string
    assert train.seed == 7 and train.inject_mode == "never" and train.on_policy_clip is False
    assert script.reward_funcs == ["accuracy"] and model.model_name_or_path == "m"
    assert train.report_to == [] or train.report_to == ["none"] or train.report_to == "none"
    assert merged["seed"] == "7"


def test_list_and_null_overrides(tmp_path):
    path = recipe(tmp_path, BASE.format(out=tmp_path / "o"))
    (script, train, _), _ = parse_recipe(
        TYPES,
        ["--config", path, "reward_funcs=accuracy,format", "max_train_samples=null", "epsilon_high=0.28"],
    )
    assert script.reward_funcs == ["accuracy", "format"] and script.max_train_samples is None
    assert train.epsilon_high == 0.28


def test_unknown_key_in_recipe_names_key_and_file(tmp_path):
    path = recipe(tmp_path, BASE.format(out=tmp_path / "o") + "learning_rat: 1e-4\n")
    with pytest.raises(UserError) as err:
        parse_recipe(TYPES, ["--config", path])
    message = str(err.value)
    assert "learning_rat" in message and path in message and "learning_rate" in message


def test_unknown_key_on_command_line(tmp_path):
    path = recipe(tmp_path, BASE.format(out=tmp_path / "o"))
    with pytest.raises(UserError, match=r"command line: unknown key 'inject_mod'.*inject_mode"):
        parse_recipe(TYPES, ["--config", path, "inject_mod=never"])


def test_wrong_type_and_bad_choice(tmp_path):
    path = recipe(tmp_path, BASE.format(out=tmp_path / "o") + "seed: many\n")
    with pytest.raises(UserError, match="'seed' = 'many' has the wrong type"):
        parse_recipe(TYPES, ["--config", path])
    path = recipe(tmp_path, BASE.format(out=tmp_path / "o") + "expert_ratio: magic\n")
    with pytest.raises(UserError, match="expert_ratio must be one of"):
        parse_recipe(TYPES, ["--config", path])


def test_missing_recipe_and_env(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="recipe not found"):
        parse_recipe(TYPES, ["--config", str(tmp_path / "nope.yaml")])
    monkeypatch.delenv("TGRL_TEST_ENV", raising=False)
    path = recipe(tmp_path, BASE.format(out=tmp_path / "o") + "env:\n  TGRL_TEST_ENV: hello\n")
    parse_recipe(TYPES, ["--config", path])
    assert os.environ["TGRL_TEST_ENV"] == "hello"


def test_override_forms():
    assert overrides_to_dict(["a=1", "--b", "2", "--c=3", "--flag", "--d", "x", "y"]) == {
        "a": "1",
        "b": "2",
        "c": "3",
        "flag": "true",
        "d": ["x", "y"],
    }
    with pytest.raises(UserError, match="key=value"):
        overrides_to_dict(["stray"])


def test_rl_script_reports_unknown_key_without_traceback(tmp_path, capsys):
    from train import rl

    path = recipe(tmp_path, BASE.format(out=tmp_path / "o") + "bogus_key: 1\n")
    with pytest.raises(SystemExit) as exit_info:
        rl.main(["--config", path])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bogus_key" in err and "Traceback" not in err


def test_resolve_resume_and_run_record(tmp_path):
    out = tmp_path / "run"
    assert resolve_resume(str(out), "auto") is None  # fresh start
    for step in (3, 10):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert resolve_resume(str(out), "auto").endswith("checkpoint-10")
    assert resolve_resume(str(out), None) is None
    with pytest.raises(UserError, match="not a checkpoint folder"):
        resolve_resume(str(out), str(tmp_path / "missing"))
    script = RLScriptArguments(method="grpo")
    record = json.loads(save_run_record(out, "r.yaml", {"seed": 1}, script).read_text())
    assert record["recipe"] == "r.yaml" and record["resolved"]["RLScriptArguments"]["method"] == "grpo"
    assert "git_commit" in record and "packages" in record


def test_yaml_errors_name_the_file_for_recipes_and_script_configs(tmp_path):
    """Recipes (train/) and script configs (data_prep/) share one reader: same messages."""
    import argparse

    from tgrl.teachers.base import parse_args_with_config

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("a: [1, 2\n")
    a_list = tmp_path / "list.yaml"
    a_list.write_text("- 1\n- 2\n")
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=1)
    for path, message in ((bad_yaml, "not valid YAML"), (a_list, "must be a YAML mapping")):
        with pytest.raises(UserError, match=f"{path.name}: .*{message}"):
            parse_recipe(TYPES, ["--config", str(path)])
        with pytest.raises(UserError, match=f"{path.name}: .*{message}"):
            parse_args_with_config(parser, ["--config", str(path)])
    with pytest.raises(UserError, match="nope.yaml: config file not found"):
        parse_args_with_config(parser, ["--config", str(tmp_path / "nope.yaml")])


def test_yaml_numbers_take_the_field_type_and_env_must_be_a_mapping(tmp_path):
    """YAML numbers are converted like their command-line spelling: a float field read as ``20`` is 20.0,
    an int field read as ``1.5`` is an error naming the file."""
    path = recipe(tmp_path, BASE.format(out=tmp_path / "o") + "warmup_steps: 20\nmax_steps: 3\n")
    (_, train, _), merged = parse_recipe(TYPES, ["--config", path])
    assert train.warmup_steps == 20.0 and isinstance(train.warmup_steps, float)
    assert train.max_steps == 3 and merged["warmup_steps"] == 20
    path = recipe(tmp_path, BASE.format(out=tmp_path / "o") + "seed: 1.5\n")
    with pytest.raises(UserError, match=f"{path}: 'seed' = 1.5 has the wrong type"):
        parse_recipe(TYPES, ["--config", path])
    path = recipe(tmp_path, BASE.format(out=tmp_path / "o") + "env: [A, B]\n")
    with pytest.raises(UserError, match="'env' must be a mapping"):
        parse_recipe(TYPES, ["--config", path])
