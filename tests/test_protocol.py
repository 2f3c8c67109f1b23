"""The fair protocol (tgrl/protocol.py): grids, selection on validation only, budgets, the tuning table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tgrl.protocol import (
    ablation_runs,
    final_runs,
    load_protocol,
    reading,
    seed_major,
    select,
    split_means,
    training_budget,
    tuning_runs,
    tuning_table,
)
from tgrl.utils import UserError

REPO = Path(__file__).resolve().parent.parent
SPEC = {
    "recipes": "train/recipes/tiny",
    "budget_steps": 400,
    "rollouts_per_step": 32,
    "sft_batch": 8,
    "seeds": [0, 1, 2],
    "methods": {
        "grpo": {"kind": "rl", "recipe": "grpo", "grid": [{"learning_rate": 1e-5}, {"learning_rate": 1e-4}]},
        "sft": {"kind": "sft", "recipe": "sft", "grid": [{"max_steps": 100}, {"max_steps": 400}]},
        "sft_rl": {"kind": "sft_rl", "recipe": "sft_rl", "grid": [{"sft_steps": 100}, {"sft_steps": 300}]},
        "tgrl": {"kind": "rl", "recipe": "tgrl", "grid": [{"expert_coef": 1.0}, {"expert_coef": 4.0}]},
    },
    "ablations": {
        "tgrl_joint_norm": {"recipe": "tgrl", "overrides": {"expert_loss_norm": "joint"}},
        "tgrl_no_filter": {"recipe": "tgrl_no_filter", "train_set": "experts_nofilter"},
    },
    "train_sets": {"experts": [], "experts_nofilter": ["--no-f1", "--no-f3"]},
}


def write(tmp_path, spec=None):
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(spec or SPEC))
    return load_protocol(path)


def val_row(run, value, metric="acc", task="synthetic_val", decoding="greedy"):
    return {
        "run": run, "method": run.split("_c")[0], "task": task, "metric": metric, "value": value,
        "decoding": decoding,
    }  # fmt: skip


def test_the_repo_protocol_is_fair():
    """The committed protocol: every method the same grid size, every recipe exists, SFT-then-RL inside
    the budget."""
    protocol = load_protocol(REPO / "train" / "tiny_protocol.yaml")
    sizes = {len(protocol.grid(m)) for m in protocol.methods}
    assert len(sizes) == 1
    for method, spec in protocol.methods.items():
        assert (REPO / protocol.recipes / f"{spec['recipe']}.yaml").is_file(), method
    for spec in protocol.ablations.values():
        assert (REPO / protocol.recipes / f"{spec['recipe']}.yaml").is_file()
    for run in tuning_runs(protocol):
        assert training_budget(protocol, run)["optimizer_steps"] <= protocol.budget_steps


def test_tuning_runs_and_names(tmp_path):
    protocol = write(tmp_path)
    runs = tuning_runs(protocol)
    assert [r.name for r in runs] == [f"{m}_c{i}_s0" for m in SPEC["methods"] for i in range(2)]
    assert runs[0].overrides == {"learning_rate": 1e-5} and runs[0].label == "learning_rate=1e-05"


def test_selection_uses_validation_only_and_ties_go_to_the_earlier_entry(tmp_path):
    protocol = write(tmp_path)
    rows = [val_row(r.name, 0.5) for r in tuning_runs(protocol)]
    rows += [val_row("grpo_c1_s0", 0.6), val_row("tgrl_c1_s0", 0.5)]  # grpo c1 better; tgrl tie
    rows += [val_row("sft_c0_s0", 0.99, task="synthetic_test")]  # a test row must not count
    rows += [val_row("sft_c1_s0", 0.4, metric="fact_acc")]  # nor another metric
    assert select(protocol, rows) == {"grpo": 1, "sft": 0, "sft_rl": 0, "tgrl": 0}
    with pytest.raises(UserError, match=r"no synthetic_val acc \(greedy\) row for run sft_rl_c1_s0"):
        select(protocol, [r for r in rows if r["run"] != "sft_rl_c1_s0"])


def test_an_avg8_validation_row_never_replaces_the_greedy_one(tmp_path):
    """Selection and the tuning table read greedy rows only: an avg@8 row written after the greedy one
    (the last row of a run wins) must not change the selection or the table."""
    protocol = write(tmp_path)
    rows = [val_row(r.name, 0.5) for r in tuning_runs(protocol)]
    rows += [val_row("grpo_c1_s0", 0.6)]
    before = select(protocol, rows), tuning_table(protocol, rows, select(protocol, rows))
    rows += [val_row("grpo_c0_s0", 0.9, decoding="avg@8"), val_row("grpo_c1_s0", 0.1, decoding="avg@8")]
    assert select(protocol, rows)["grpo"] == 1
    assert (select(protocol, rows), tuning_table(protocol, rows, select(protocol, rows))) == before


def test_selection_averages_tuning_seeds_and_validation_splits(tmp_path):
    """Two tuning seeds and two validation splits: an entry is scored by the mean of its four greedy
    scores, and every one of them must be there."""
    tasks = {"synthetic_val": "synthetic/val.jsonl", "synthetic_val2": "synthetic/test.jsonl"}
    spec = {**SPEC, "tuning_seeds": [0, 1], "selection_tasks": tasks}
    protocol = write(tmp_path, spec)
    runs = tuning_runs(protocol)
    assert len(runs) == 4 * 2 * 2 and {r.seed for r in runs} == {0, 1}
    rows = [val_row(r.name, 0.5, task=t) for r in runs for t in protocol.selection_tasks]
    # grpo c1: one seed much better on one split (mean 0.55) beats c0's 0.52 everywhere
    rows += [val_row(f"grpo_c0_s{s}", 0.52, task=t) for s in (0, 1) for t in protocol.selection_tasks]
    rows += [val_row("grpo_c1_s1", 0.7, task="synthetic_val2")]
    assert select(protocol, rows)["grpo"] == 1
    with pytest.raises(UserError, match="synthetic_val2 .* run tgrl_c0_s1"):
        select(protocol, [r for r in rows if (r["run"], r["task"]) != ("tgrl_c0_s1", "synthetic_val2")])
    with pytest.raises(UserError, match="tuning_seeds"):
        write(tmp_path, {**SPEC, "tuning_seeds": [5]})


def test_final_and_ablation_runs_reuse_the_selected_entry(tmp_path):
    protocol = write(tmp_path)
    selected = {"grpo": 1, "sft": 0, "sft_rl": 1, "tgrl": 1}
    finals = final_runs(protocol, selected)
    names = [r.name for r in finals]
    assert "grpo_c1_s0" in names and "grpo_c1_s2" in names and "grpo_c0_s1" not in names
    assert len(finals) == 4 * 3
    every = ablation_runs(protocol, selected)
    assert sorted(r.seed for r in every if r.method == "tgrl_joint_norm") == [0, 1, 2]  # paired seeds
    ablations = {r.method: r for r in every}
    assert ablations["tgrl_joint_norm"].overrides == {"expert_coef": 4.0, "expert_loss_norm": "joint"}
    assert ablations["tgrl_no_filter"].train_set == "experts_nofilter"
    assert ablations["tgrl_no_filter"].overrides == {"expert_coef": 4.0}


def test_budgets_count_sft_and_rl_steps_the_same_way(tmp_path):
    protocol = write(tmp_path)
    by_name = {r.name: r for r in tuning_runs(protocol)}
    assert training_budget(protocol, by_name["grpo_c0_s0"]) == {
        "optimizer_steps": 400, "sft_steps": 0, "rl_steps": 400, "sequences": 400 * 32,
    }  # fmt: skip
    assert training_budget(protocol, by_name["sft_rl_c1_s0"]) == {
        "optimizer_steps": 400, "sft_steps": 300, "rl_steps": 100, "sequences": 300 * 8 + 100 * 32,
    }  # fmt: skip
    assert training_budget(protocol, by_name["sft_c0_s0"])["sequences"] == 100 * 8


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s["methods"]["grpo"]["grid"].pop(), "same, non-zero size"),
        (lambda s: s["methods"]["sft_rl"]["grid"][0].update(sft_steps=400), "sft_steps must be in"),
        (lambda s: s["methods"]["sft"]["grid"][0].update(max_steps=500), "exceeds budget_steps"),
        (lambda s: s["methods"]["grpo"].update(kind="ppo"), "kind must be one of"),
        (lambda s: s.pop("seeds"), "missing key 'seeds'"),
    ],
)
def test_unfair_or_broken_protocols_are_errors_naming_the_file(tmp_path, change, message):
    spec = yaml.safe_load(yaml.safe_dump(SPEC))
    change(spec)
    with pytest.raises(UserError, match=message) as err:
        write(tmp_path, spec)
    assert "protocol.yaml" in str(err.value)


def test_tuning_table_marks_the_selection_and_prints_every_entry(tmp_path):
    protocol = write(tmp_path)
    rows = [val_row(r.name, 0.5 + 0.01 * i) for i, r in enumerate(tuning_runs(protocol))]
    rows.append(val_row("base", 0.6))
    selected = select(protocol, rows)
    md, csv = tuning_table(protocol, rows, selected)
    lines = md.splitlines()
    assert len(lines) == 2 + 8 + 1  # header, rule, 8 grid entries, the base
    assert "| grpo | learning_rate=0.0001 | 0 | 51.0 |" in md and lines[3].endswith("| yes |")
    assert csv.splitlines()[0].startswith("method,grid entry,seeds,selection score")


def test_test_means_and_reading_come_from_the_rows():
    rows = [
        {"run": "base", "method": "base", "task": "synthetic_test", "metric": "acc", "value": 0.60},
        {"run": "base", "method": "base", "task": "synthetic_test", "metric": "acc_diff", "value": 0.40},
        {"run": "tgrl_c2_s0", "method": "tgrl", "task": "synthetic_test", "metric": "acc", "value": 0.70},
        {"run": "tgrl_c2_s1", "method": "tgrl", "task": "synthetic_test", "metric": "acc", "value": 0.74},
        {"run": "tgrl_c2_s0", "method": "tgrl", "task": "synthetic_test", "metric": "acc_diff", "value": 0.6},
        {"run": "grpo_c0_s0", "method": "grpo", "task": "synthetic_test", "metric": "acc", "value": 0.59},
        {"run": "grpo_c0_s0", "method": "grpo", "task": "synthetic_test", "metric": "acc_diff", "value": 0.4},
        {"run": "grpo_c0_s0", "method": "grpo", "task": "synthetic_test", "metric": "acc", "value": 0.9,
         "decoding": "avg@8"},
    ]  # fmt: skip
    means = split_means(rows)
    assert means["tgrl"]["acc"] == pytest.approx(0.72) and means["grpo"]["acc"] == pytest.approx(0.59)
    text = reading(rows)
    assert "tgrl: accuracy 60.0 -> 72.0 (+12.0)" in text and "grpo: accuracy 60.0 -> 59.0 (-1.0)" in text
    assert "Did not rise (under 2 points): grpo diff" in text
    assert len(text.splitlines()) == 2


def record_commands(calls: list[list[str]]):
    """A stand-in for Runner.sh that records each command, a batch (eval/run_batch.py) as its commands."""

    def sh(log, *cmd):
        cmd = [str(c) for c in cmd]
        if cmd[1] == "eval/run_batch.py":
            calls.extend([cmd[0], *c] for c in json.loads(cmd[2]))
        else:
            calls.append(cmd)

    return sh


def test_grounding_is_an_evaluation_of_its_own(tmp_path, monkeypatch):
    """The final evaluation adds --visual-dependency as a separate call on the test split only, after the
    unchanged greedy call: added to a finished protocol, a rerun runs just that call per checkpoint."""
    import importlib

    module = importlib.import_module("scripts.run_protocol")
    runner = module.Runner(write(tmp_path), tmp_path / "work", tmp_path / "data", tmp_path / "out")
    calls: list[list[str]] = []
    monkeypatch.setattr(runner, "sh", record_commands(calls))
    runner.evaluate("grpo_c0_s0", "grpo", 0, tmp_path / "ckpt", runner.test_files, final=True)
    evals = [c for c in calls if c[1].endswith("run_lmms_eval.py")]
    greedy, grounding = evals[0], [c for c in evals if "--visual-dependency" in c]
    assert "--visual-dependency" not in greedy and "--decoding" not in greedy
    assert sum(a.startswith("synthetic_") for a in greedy) == 2  # test and shifted, as before
    assert len(grounding) == 1 and [a for a in grounding[0] if a.startswith("synthetic_")] == [
        f"synthetic_test={tmp_path / 'data' / 'synthetic' / 'test.jsonl'}"
    ]
    calls.clear()
    runner.evaluate("grpo_c0_s0", "grpo", 0, tmp_path / "ckpt", runner.selection_files, final=False)
    assert not any("--visual-dependency" in c for c in calls)


def test_demo_mode_skips_avg8_and_the_bases_validation(tmp_path, monkeypatch):
    """make demo's budget: the quick runner scores test and shifted greedily (plus grounding and the expert
    probe) but not avg@8, and the base is not scored on the validation split the demo never uses."""
    import importlib

    module = importlib.import_module("scripts.run_protocol")
    calls: list[list[str]] = []
    for quick in (False, True):
        out = tmp_path / f"out_{quick}"
        runner = module.Runner(write(tmp_path), tmp_path / "w", tmp_path / "d", out, quick=quick)
        monkeypatch.setattr(runner, "sh", record_commands(calls))
        calls.clear()
        if not quick:
            runner.base_tune()
        runner.base()
        decodings = [c[c.index("--decoding") + 1] for c in calls if "--decoding" in c]
        splits = {a.split("=")[0] for c in calls for a in c if a.startswith("synthetic_")}
        probes = [c for c in calls if c[1].endswith("probe_expert_tokens.py")]
        assert decodings == ([] if quick else ["avg@8"]) and len(probes) == 2
        assert ("synthetic_val" in splits) is not quick and {"synthetic_test", "synthetic_shifted"} <= splits


def test_final_eval_limits_reach_the_secondary_measures_only(tmp_path, monkeypatch):
    """final_eval: grounding (--visual-dependency, both probes), avg@8 and the blind control read the first N
    test items, the blind control beside a sighted greedy evaluation of the same items (the multimodal
    gain's partner); the primary greedy accuracy and the twin splits read every item. Bad values name the
    key and the fix."""
    import importlib

    module = importlib.import_module("scripts.run_protocol")
    limits = {"grounding_items": 1000, "avg_items": 250, "blind_items": 500}
    protocol = write(tmp_path, {**SPEC, "final_eval": limits})
    calls: list[list[str]] = []
    runner = module.Runner(protocol, tmp_path / "w", tmp_path / "d", tmp_path / "out")
    monkeypatch.setattr(runner, "sh", record_commands(calls))
    runner.base()

    def limit(c):
        return c[c.index("--limit") + 1] if "--limit" in c else None

    by_kind = {}
    for c in calls:
        kind = (
            ("probe_s" if "--fact-dependency" in c else "probe")
            if c[1].endswith("probe_expert_tokens.py")
            else (
                "visdep"
                if "--visual-dependency" in c
                else "avg"
                if "--decoding" in c
                else "blind"
                if "--blind" in c
                else "twins"
                if any(a.endswith("_twins.jsonl") for a in c)
                else "greedy"
            )
        )
        by_kind.setdefault(kind, set()).add(limit(c))
    assert by_kind == {
        "greedy": {None, "500"},  # the full split, and the sighted partner of the limited blind control
        "twins": {None},
        "blind": {"500"},
        "visdep": {"1000"},
        "avg": {"250"},
        "probe": {"1000"},
        "probe_s": {"1000"},
    }
    assert write(tmp_path, SPEC).final_eval == {
        "grounding_items": None,
        "avg_items": None,
        "blind_items": None,
    }
    for bad in ({"grounding_items": 0}, {"avg_item": 250}):
        with pytest.raises(UserError, match="final_eval"):
            write(tmp_path, {**SPEC, "final_eval": bad})


def test_run_counts_and_the_wall_time_arithmetic(tmp_path):
    """plan_counts and estimate_minutes on recorded rows with round numbers: the sum over every training
    and scoring, divided by the jobs."""
    from tgrl.protocol import PROCESS_SECONDS, estimate_minutes, plan_counts

    protocol = write(tmp_path, {**SPEC, "tuning_seeds": [0, 1]})
    counts = plan_counts(protocol)
    # 4 methods x 2 entries x 2 tuning seeds; 4 x (3 - 2) new final trainings; 2 ablations x 3 seeds
    assert counts == {
        "tuning_trainings": 16, "final_new_trainings": 4, "ablation_trainings": 6, "trainings": 26,
        "final_scorings": 4 * 3 + 2 * 3 + 1, "tuning_scorings": 17,
    }  # fmt: skip
    rows = [{"metric": "train_minutes", "method": m, "value": 2.0, "run": m} for m in SPEC["methods"]]
    evals = [("synthetic_val", "greedy", False, 6.0), ("synthetic_test", "greedy", False, 12.0),
             ("synthetic_shifted", "greedy", False, 18.0), ("synthetic_test", "avg@8", False, 60.0),
             ("synthetic_test", "greedy", True, 24.0)]  # fmt: skip
    for i, (task, decoding, vis, seconds) in enumerate(evals):
        rows.append({"run": "r", "key": str(i), "task": task, "decoding": decoding, "metric": "acc",
                     "eval_seconds": seconds, "settings": {"visual_dependency": vis}})  # fmt: skip
    rows.append(
        {"run": "r", "key": "4", "metric": "vis_dep_reasoning", "grounding_seconds": 6.0, "task": "t"}
    )
    got = estimate_minutes(protocol, rows, jobs=2)
    start = PROCESS_SECONDS / 60
    train = {m: 2.0 + start * (2 if m == "sft_rl" else 1) for m in SPEC["methods"]}
    assert got["train_minutes"]["tgrl_joint_norm"] == pytest.approx(2.0 + start)  # TGRL's, no rows of its own
    tune_eval = (6.0 + PROCESS_SECONDS) / 60
    final_eval = (12 + 18 + 24 + 60 + 6 + 2 * PROCESS_SECONDS) / 60
    tuning = sum(train.values()) * 2 * 2 + 17 * tune_eval
    final = sum(train.values()) * 1 + 2 * (2.0 + start) * 3 + 19 * final_eval
    assert got["cpu_minutes"] == pytest.approx({"tuning": tuning, "final": final})
    assert got["wall_minutes"] == pytest.approx((tuning + final) / 2)


def test_progress_from_the_protocols_own_finished_stages(tmp_path):
    """progress_minutes: stages done and their minutes, and what is left at the mean minutes of each kind
    (tuning per method; final scoring at a tuning seed; final training per method, else its tuning stage
    plus a scoring, an ablation TGRL's), all divided by the jobs. None while a method has no tuning stage."""
    from tgrl.protocol import progress_minutes

    protocol = write(
        tmp_path, {**SPEC, "tuning_seeds": [0, 1]}
    )  # seeds 0-2, 4 methods x 2 entries, 2 ablations

    def done(stage, method, seed, minutes, run="r"):
        return {"metric": "protocol_done", "stage": stage, "method": method, "seed": seed, "value": minutes,
                "run": run}  # fmt: skip

    tune = {"grpo": 4.0, "sft": 1.0, "sft_rl": 2.0, "tgrl": 6.0}
    rows = [done("tune", m, s, v, f"{m}_c{c}_s{s}") for m, v in tune.items() for s in (0, 1) for c in (0, 1)]
    assert progress_minutes(protocol, rows[:-4]) is None  # tgrl's tuning not finished
    rows += [
        done("final", "grpo", 0, 1.0, "grpo_c0_s0"),
        done("final", "tgrl", 2, 8.0, "tgrl_c1_s2"),
        done("final", "base", 0, 9.0, "base"),
    ]
    got = progress_minutes(protocol, rows, jobs=2)
    per = got["per_stage_minutes"]
    assert per["tune"] == tune and per["final_scoring_only"] == 1.0
    assert per["final_training"]["tgrl"] == 8.0 and per["final_training"]["grpo"] == 4.0 + 1.0
    assert per["final_training"]["tgrl_joint_norm"] == 8.0  # an ablation without rows: TGRL's
    # left: 4 methods x 2 tuning seeds scoring, minus grpo seed 0 (7 x 1.0); seed 2 training of grpo, sft,
    # sft_rl (5 + 2 + 3); 2 ablations x 3 seeds (6 x 8)
    assert got["minutes_left"] == pytest.approx((7 * 1.0 + 5.0 + 2.0 + 3.0 + 6 * 8.0) / 2)
    assert got["minutes_done"] == pytest.approx((sum(tune.values()) * 4 + 1.0 + 8.0) / 2)
    assert got["stages_done"] == 16 + 2 and got["stages_total"] == 16 + (4 + 2) * 3


def test_the_demo_refuses_a_selection_whose_entries_moved(tmp_path):
    """selected.json names grid positions; when the grid changed under it, the demo would train another
    configuration than the one selected: it stops and says so."""
    import argparse
    import importlib

    module = importlib.import_module("scripts.run_protocol")
    protocol = write(tmp_path)
    chosen = {"selected": {"grpo": 1, "tgrl": 0}, "entries": {"grpo": {"learning_rate": 3e-5}, "tgrl": {}}}
    (tmp_path / "selected.json").write_text(json.dumps(chosen))
    runner = module.Runner(protocol, tmp_path / "w", tmp_path / "d", tmp_path / "o", quick=True)
    args = argparse.Namespace(
        selected=tmp_path / "selected.json", methods=["grpo"], jobs=1, out=tmp_path, work=tmp_path
    )
    with pytest.raises(module.UserError, match=r"\['grpo'\] are no longer at those grid positions"):
        module.demo(protocol, runner, args, 0.0)


def test_final_evaluation_adds_twins_blind_and_fact_s_at_the_rollout_temperature(tmp_path, monkeypatch):
    """A final run is also scored on the test split's twin split and blind, and probed for s_t at the fact
    tokens at its own rollout temperature (the recipe's, an override's when its grid sets one); the base
    gets GRPO's. Tuning runs get none of it."""
    import importlib

    module = importlib.import_module("scripts.run_protocol")
    runner = module.Runner(write(tmp_path), tmp_path / "work", tmp_path / "data", tmp_path / "out")
    calls: list[list[str]] = []  # every command, the batched ones (eval/run_batch.py) unpacked

    def sh(log, *cmd):
        cmd = [str(c) for c in cmd]
        batch = json.loads(cmd[2]) if cmd[1].endswith("run_batch.py") else [cmd[1:]]
        calls.extend([cmd[0], *c] for c in batch)

    monkeypatch.setattr(runner, "sh", sh)
    monkeypatch.setattr(runner, "train", lambda run: tmp_path / "ckpt")
    monkeypatch.setattr(runner, "record_budget", lambda run, checkpoint: None)
    grpo_t = yaml.safe_load((REPO / "train/recipes/tiny/grpo.yaml").read_text())["temperature"]
    for run, temperature in (
        (module.RunSpec("tgrl", "rl", "tgrl", 0, 0, {}), grpo_t),
        (module.RunSpec("tgrl", "rl", "tgrl", 1, 0, {"temperature": 0.7}), 0.7),
    ):
        calls.clear()
        runner.final(run)
        evals = [c for c in calls if c[1].endswith("run_lmms_eval.py")]
        twins = [c for c in evals if any(a.startswith("synthetic_test_twins=") for a in c)]
        blind = [c for c in evals if "--blind" in c]
        assert len(twins) == 1 and twins[0][twins[0].index("--jsonl") + 1].endswith("test_twins.jsonl")
        assert sum(any(a.startswith("synthetic_shifted_twins=") for a in c) for c in evals) == 1
        assert (
            len(blind) == 1 and f"synthetic_test={tmp_path / 'data' / 'synthetic' / 'test.jsonl'}" in blind[0]
        )
        probes = [c for c in calls if c[1].endswith("probe_expert_tokens.py")]
        fact_s = [c for c in probes if "--fact-dependency" in c]
        assert len(probes) == 2 and len(fact_s) == 1
        assert float(fact_s[0][fact_s[0].index("--temperature") + 1]) == temperature
    calls.clear()
    runner.base()
    fact_s = [c for c in calls if "--fact-dependency" in c]
    assert float(fact_s[0][fact_s[0].index("--temperature") + 1]) == grpo_t
    calls.clear()
    runner.evaluate("grpo_c0_s0", "grpo", 0, tmp_path / "ckpt", runner.selection_files, final=False)
    assert not any("--blind" in c or "--fact-dependency" in c for c in calls)


def test_final_runs_go_seed_by_seed():
    """A protocol stopped part-way leaves whole paired seeds: every method and ablation at seed s before any
    run at the next seed, in the protocol's seed order."""
    protocol = load_protocol(REPO / "train" / "tiny_protocol.yaml")
    selected = {m: 0 for m in protocol.methods}
    runs = seed_major(protocol, final_runs(protocol, selected) + ablation_runs(protocol, selected))
    seeds = [r.seed for r in runs]
    assert seeds == sorted(seeds, key=protocol.seeds.index)
    per_seed = len(protocol.methods) + len(protocol.ablations)
    assert seeds[:per_seed] == [protocol.seeds[0]] * per_seed
    assert {r.method for r in runs[:per_seed]} == set(protocol.methods) | set(protocol.ablations)


def test_protocol_v3_differs_from_v2_in_the_sealed_seed_and_the_preregistration_only():
    v2, v3 = (
        yaml.safe_load((REPO / "train" / f"{n}.yaml").read_text())
        for n in ("tiny_protocol", "tiny_protocol_v3")
    )
    assert v3["sealed"].pop("seed") != v2["sealed"].pop("seed")
    assert v3.pop("preregistration") == "results/tiny_v3/preregistration.yaml"
    v2.pop("preregistration")
    assert v3 == v2
    load_protocol(REPO / "train" / "tiny_protocol_v3.yaml")
