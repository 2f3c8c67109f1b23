"""One knob per ablation: every ablation of train/tiny_protocol.yaml trains with exactly one key changed from
TGRL's selected run (the recipe loader of train/rl.py, tgrl/recipes.py), and a changed training set differs
from TGRL's in exactly one filter switch."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest
from trl import ModelConfig

from tgrl.protocol import ablation_runs, final_runs, load_protocol
from tgrl.recipes import parse_recipe
from tgrl.tgrl_config import RLScriptArguments
from tgrl.trainer import TGRLConfig
from tgrl.utils import REPO_ROOT

run_protocol = importlib.import_module("scripts.run_protocol")
PROTOCOL = load_protocol(REPO_ROOT / "train" / "tiny_protocol.yaml")
IDENTITY = {"output_dir", "logging_dir", "run_name", "method"}  # a run's name and folder, not a knob


def trained_config(runner, run) -> dict:
    """Every field train/rl.py would train ``run`` with (recipe, then the protocol's keys)."""
    argv = [str(a) for a in runner.rl_argv(run, Path("/w") / run.name, Path("/w/base"), 400)]
    instances, _ = parse_recipe((RLScriptArguments, TGRLConfig, ModelConfig), argv)
    fields = {}
    for instance in instances:
        fields.update({f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)})
    return {k: v for k, v in fields.items() if k not in IDENTITY}


def switches(flags: list[str]) -> set[tuple[str, ...]]:
    """Filter flags as switches: a flag with the values that follow it."""
    out: list[list[str]] = []
    for flag in flags:
        if flag.startswith("--"):
            out.append([flag])
        else:
            out[-1].append(flag)
    return {tuple(s) for s in out}


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return run_protocol.Runner(
        PROTOCOL, tmp_path_factory.mktemp("w"), Path("/d"), tmp_path_factory.mktemp("o")
    )


@pytest.mark.parametrize("entry", range(len(PROTOCOL.grid("tgrl"))))
@pytest.mark.parametrize("ablation", sorted(PROTOCOL.ablations))
def test_each_ablation_changes_exactly_one_key(runner, entry, ablation):
    """Whichever TGRL entry the tuning selects: the ablation's trained configuration differs from TGRL's
    at the same seed in one key, and a changed training set in one filter switch."""
    selected = {m: 0 for m in PROTOCOL.methods} | {"tgrl": entry}
    seed = PROTOCOL.seeds[3]
    (tgrl,) = [r for r in final_runs(PROTOCOL, selected) if r.method == "tgrl" and r.seed == seed]
    (run,) = [r for r in ablation_runs(PROTOCOL, selected) if r.method == ablation and r.seed == seed]
    reference, changed = trained_config(runner, tgrl), trained_config(runner, run)
    differing = sorted(k for k in reference if reference[k] != changed[k])
    assert len(differing) == 1, f"{ablation} changes {differing}"
    if differing == ["train_file"]:
        flags = switches(PROTOCOL.train_sets[run.train_set]) ^ switches(PROTOCOL.train_sets[tgrl.train_set])
        assert len(flags) == 1, f"{ablation}'s training set differs from TGRL's in {flags}"


def test_the_ablations_cover_the_registered_knobs():
    assert set(PROTOCOL.ablations) == {
        "tgrl_no_reweight", "tgrl_no_f1", "tgrl_no_f3", "tgrl_f4", "tgrl_joint_norm", "tgrl_inject_on_fail",
    }  # fmt: skip
    assert "luffy_vl" in PROTOCOL.methods  # LUFFY-VL with LUFFY's settings stays a baseline row
    assert sorted({r.seed for r in ablation_runs(PROTOCOL, {"tgrl": 1})}) == PROTOCOL.seeds


def test_every_rl_method_is_tuned_at_its_rollout_temperature_on_an_equal_grid(runner):
    """Even tuning: grids of one size, each entry at 2 seeds, and every RL method's runs sample at the
    same rollout temperature as TGRL (the recipes' value, not overridden by a grid)."""
    assert len({len(PROTOCOL.grid(m)) for m in PROTOCOL.methods}) == 1 and len(PROTOCOL.tuning_seeds) == 2
    temperatures = set()
    for method, spec in PROTOCOL.methods.items():
        if spec["kind"] == "sft":
            continue
        assert all("temperature" not in entry for entry in spec["grid"])
        run = final_runs(PROTOCOL, {m: 0 for m in PROTOCOL.methods})
        (first,) = [r for r in run if r.method == method and r.seed == 0]
        temperatures.add(trained_config(runner, first)["temperature"])
    assert temperatures == {0.3}
