"""Sealed splits (tgrl/sealing.py, tgrl.synthetic.build_sealed_splits) and the protocol's run-level resume
(scripts/run_protocol.py): no sealed scoring before the freeze, each checkpoint once, every event logged;
finished runs skipped from the summary alone."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml

from tgrl.sealing import (
    MANIFEST,
    SCORING_LOG,
    ScoringLog,
    check_inputs,
    describe_scoring,
    freeze,
    input_hashes,
    keep_inputs,
    require_frozen,
    restore_inputs,
    scoring_record,
    selection_sha256,
)
from tgrl.synthetic import build_dataset, build_sealed_splits, record_key
from tgrl.utils import UserError, read_jsonl

from .test_protocol import SPEC

run_protocol = importlib.import_module("scripts.run_protocol")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A small seed-0 dataset and sealed splits from seed 7 beside it."""
    root = tmp_path_factory.mktemp("sealed")
    build_dataset(root / "synthetic", n_train=40, n_test=20, seed=0, n_val=20, n_shifted=20)
    build_sealed_splits(root / "sealed", root / "synthetic", seed=7, n_test=30, n_shifted=30)
    return root


def keys(path):
    return {record_key(row) for _, row in read_jsonl(path)}


def test_sealed_splits_are_new_and_disjoint_from_every_earlier_split(datasets):
    sealed, source = datasets / "sealed", datasets / "synthetic"
    earlier = set().union(*(keys(source / f"{s}.jsonl") for s in ("train", "val", "test", "shifted")))
    assert len(keys(sealed / "test.jsonl")) == 30 and len(keys(sealed / "shifted.jsonl")) == 30
    assert not keys(sealed / "test.jsonl") & earlier and not keys(sealed / "shifted.jsonl") & earlier
    assert not keys(sealed / "test.jsonl") & keys(sealed / "shifted.jsonl")
    for split in ("test", "shifted"):  # each with its counterfactual twins, new scenes too
        twins = [row for _, row in read_jsonl(sealed / f"{split}_twins.jsonl")]
        sources = [t for t in twins if t["meta"]["twin"]["kind"] == "source"]
        assert {record_key(t) for t in sources} == keys(sealed / f"{split}.jsonl")
        edited = {record_key(t) for t in twins if t["meta"]["twin"]["kind"] != "source"}
        assert edited and not edited & earlier and all((sealed / t["images"][0]).is_file() for t in twins)
    before = (sealed / "test.jsonl").read_bytes()
    build_sealed_splits(sealed, source, seed=7, n_test=30, n_shifted=30)  # same arguments: a no-op
    assert (sealed / "test.jsonl").read_bytes() == before
    with pytest.raises(UserError, match="never regenerated in place"):
        build_sealed_splits(sealed, source, seed=8, n_test=30, n_shifted=30)
    with pytest.raises(UserError, match="seed 0 is the seed of"):
        build_sealed_splits(datasets / "other", source, seed=0, n_test=5, n_shifted=5)


def test_twins_of_the_first_sources_only(datasets, tmp_path):
    """twin_sources: the twin split holds the first N scenes of the sealed split (in order) and their
    twins, and the argument is part of the manifest (other N: another folder)."""
    source, sealed = datasets / "synthetic", tmp_path / "sealed"
    build_sealed_splits(sealed, source, seed=7, n_test=30, n_shifted=30, n_twin_sources=10)
    for split in ("test", "shifted"):
        first = [row["id"] for _, row in read_jsonl(sealed / f"{split}.jsonl")][:10]
        twins = [row for _, row in read_jsonl(sealed / f"{split}_twins.jsonl")]
        assert [t["meta"]["twin"]["source"] for t in twins if t["meta"]["twin"]["kind"] == "source"] == first
        assert {t["meta"]["twin"]["source"] for t in twins} == set(first) and len(twins) > 10
    assert (sealed / "test.jsonl").read_bytes() == (datasets / "sealed" / "test.jsonl").read_bytes()
    with pytest.raises(UserError, match="never regenerated in place"):
        build_sealed_splits(sealed, source, seed=7, n_test=30, n_shifted=30, n_twin_sources=20)


def write_selection(path, lr):
    path.write_text(json.dumps({"selected": {"grpo": 1}, "entries": {"grpo": {"learning_rate": lr}}}))


def test_no_sealed_scoring_before_the_freeze_nor_after_a_change(datasets, tmp_path):
    out, selected, protocol = tmp_path / "out", tmp_path / "selected.json", tmp_path / "protocol.yaml"
    out.mkdir()
    protocol.write_text("seeds: [0]\n")
    write_selection(selected, 3e-5)
    with pytest.raises(UserError, match="not frozen"):
        require_frozen(out, selected, protocol, datasets / "sealed")
    prereg = tmp_path / "prereg.yaml"
    prereg.write_text("status: draft\n")
    with pytest.raises(UserError, match="not 'final'"):
        freeze(out, selected, protocol, datasets / "sealed", prereg)
    assert not (out / MANIFEST).exists()
    prereg.write_text("status: final\n")
    manifest = freeze(out, selected, protocol, datasets / "sealed", prereg)
    assert manifest["selection_sha256"] == selection_sha256(selected)
    assert set(manifest["sealed"]) == {
        "sealed_test",
        "sealed_shifted",
        "sealed_test_twins",
        "sealed_shifted_twins",
    }
    assert (
        require_frozen(out, selected, protocol, datasets / "sealed")["selection_sha256"]
        == manifest["selection_sha256"]
    )
    write_selection(selected, 1e-4)  # a new choice after the freeze
    with pytest.raises(UserError, match="differs from the one frozen"):
        require_frozen(out, selected, protocol, datasets / "sealed")
    with pytest.raises(UserError, match="frozen with another selection"):
        freeze(out, selected, protocol, datasets / "sealed", prereg)
    write_selection(selected, 3e-5)
    protocol.write_text("seeds: [0, 1]\n")
    with pytest.raises(UserError, match="changed since the freeze"):
        require_frozen(out, selected, protocol, datasets / "sealed")
    protocol.write_text("seeds: [0]\n")
    with pytest.raises(UserError, match="missing or changed since the freeze"):  # another data folder
        require_frozen(out, selected, protocol, tmp_path)


def test_each_checkpoint_is_scored_once_and_every_event_is_logged(tmp_path):
    log = ScoringLog(tmp_path, "sel")
    log.start("grpo_c1_s0", "w1", "sealed_test", "d", None)
    log.start("grpo_c1_s0", "w1", "sealed_test", "d", None)  # killed before it finished: may resume
    log.scored("grpo_c1_s0", "w1", "sealed_test", "d")
    log.start("grpo_c1_s0", "w1", "sealed_shifted", "d", None)  # another split: its own scoring
    for run, weights in (("grpo_c1_s0", "w2"), ("renamed", "w1")):  # same run retrained, same weights renamed
        with pytest.raises(UserError, match="scored once"):
            log.start(run, weights, "sealed_test", "d", None)
    log.start("grpo_c1_s0", "w1", "sealed_test", "d", "the sampler was broken (issue 42)")
    events = [
        (e["event"], e["run"], e["task"], e.get("reason", "")) for _, e in read_jsonl(tmp_path / SCORING_LOG)
    ]
    assert [e[0] for e in events] == [
        "started", "started", "scored", "started", "refused", "refused", "override", "started",
    ]  # fmt: skip
    assert events[6][3] == "the sampler was broken (issue 42)"
    assert all(e["selection_sha256"] == "sel" and e["time"] for e in log.events())


def test_the_scoring_record_counts_what_the_log_shows(tmp_path):
    log = ScoringLog(tmp_path, "sel")
    for run in ("grpo_c0_s0", "tgrl_c1_s0"):
        for task in ("sealed_test", "sealed_shifted"):
            log.start(run, f"w-{run}", task, "d", None)
            log.scored(run, f"w-{run}", task, "d")
    log.start("tgrl_c1_s1", "w-a", "sealed_test", "d", None)  # the session ended here: rerun, new weights
    log.start("tgrl_c1_s1", "w-b", "sealed_test", "d", None)
    log.scored("tgrl_c1_s1", "w-b", "sealed_test", "d")
    log.start("sft_c2_s0", "w-s", "sealed_test", "d", None)  # still running
    rec = scoring_record(log.events())
    assert (rec["runs"], rec["tasks"], rec["scorings"]) == (3, ["sealed_shifted", "sealed_test"], 5)
    assert rec["scored_more_than_once"] == [] and (rec["refused"], rec["overrides"]) == (0, 0)
    assert (rec["rescored_after"], rec["unfinished"]) == (["tgrl_c1_s1"], ["sft_c2_s0"])
    assert rec["same_weights"] == []  # retrained to other weights (w-a, then w-b)
    text = describe_scoring(tmp_path / SCORING_LOG)
    assert "3 checkpoints on 2 sealed splits" in text and "each scored once per split" in text
    assert "scored by its stage's rerun: tgrl_c1_s1" in text and "Started, not scored: sft_c2_s0" in text
    log.start("luffy_vl_c0_s0", "w-l", "sealed_test", "d", None)  # interrupted, retrained bit-identical
    log.start("luffy_vl_c0_s0", "w-l", "sealed_test", "d", None)
    log.scored("luffy_vl_c0_s0", "w-l", "sealed_test", "d")
    assert scoring_record(log.events())["same_weights"] == ["luffy_vl_c0_s0"]
    assert "luffy_vl_c0_s0 (same weights hash), tgrl_c1_s1." in describe_scoring(tmp_path / SCORING_LOG)
    log.start("grpo_c0_s0", "w-grpo_c0_s0", "sealed_test", "d", "a reason")  # forced: logged and counted
    log.scored("grpo_c0_s0", "w-grpo_c0_s0", "sealed_test", "d")
    rec = scoring_record(log.events())
    assert rec["scored_more_than_once"] == ["grpo_c0_s0 on sealed_test"] and rec["overrides"] == 1
    assert "scored more than once: grpo_c0_s0 on sealed_test" in describe_scoring(tmp_path / SCORING_LOG)


def fake_sh(calls):
    """Records each command and creates the output_dir a training command names (no real training)."""

    def sh(log, *cmd):
        calls.append([str(c) for c in cmd])
        for arg in map(str, cmd):
            if arg.startswith("output_dir="):
                out = Path(arg.split("=", 1)[1])
                out.mkdir(parents=True, exist_ok=True)
                (out / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')

    return sh


def protocol_file(tmp_path, **extra):
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **extra}))
    return run_protocol.load_protocol(path)


def test_a_fresh_clone_skips_finished_runs_without_their_checkpoints(tmp_path, monkeypatch):
    """A finished run's rows (its protocol_done row) are enough: a rerun with an empty work folder (a fresh
    clone: no checkpoint) trains and scores nothing; a run that did not finish is redone."""
    protocol = protocol_file(tmp_path)
    run = run_protocol.tuning_runs(protocol)[0]
    calls: list[list[str]] = []
    first = run_protocol.Runner(protocol, tmp_path / "work1", tmp_path / "data", tmp_path / "out")
    monkeypatch.setattr(first, "sh", fake_sh(calls))
    assert "trained" in first.tune(run)
    assert any(c[1] == "train/rl.py" for c in calls) and (tmp_path / "out" / "curves").is_dir()
    assert (tmp_path / "out" / "curves" / f"{run.name}.metrics.jsonl.gz").is_file()
    calls.clear()
    clone = run_protocol.Runner(protocol, tmp_path / "work2", tmp_path / "data", tmp_path / "out")
    monkeypatch.setattr(clone, "sh", fake_sh(calls))
    assert clone.tune(run).startswith("skipped") and calls == []
    other = run_protocol.tuning_runs(protocol)[1]
    assert "trained" in clone.tune(other) and calls  # not finished before: trained and scored
    changed = run_protocol.RunSpec(**{**run.__dict__, "overrides": {"learning_rate": 1.0}})
    assert not clone.stage_done(changed, "tune")  # another spec under the same name is not the same run


def test_sealed_final_scoring_goes_through_the_freeze_and_the_log(datasets, tmp_path, monkeypatch):
    protocol = protocol_file(tmp_path, sealed={"seed": 7, "n_test": 30, "n_shifted": 30})
    data = tmp_path / "data"
    data.mkdir()
    (data / "sealed").symlink_to(datasets / "sealed")
    out = tmp_path / "out"
    out.mkdir()
    calls: list[list[str]] = []
    runner = run_protocol.Runner(protocol, tmp_path / "work", data, out)
    monkeypatch.setattr(runner, "sh", fake_sh(calls))
    assert list(runner.test_files) == ["sealed_test", "sealed_shifted"]
    run = run_protocol.final_runs(protocol, {"grpo": 0, "sft": 0, "sft_rl": 0, "tgrl": 0})[0]
    with pytest.raises(UserError, match="not frozen"):
        runner.final(run)
    assert not [c for c in calls if c[1].startswith("eval/")]
    write_selection(out / "selected.json", 1e-5)
    freeze(out, out / "selected.json", protocol.path, data / "sealed", None)
    assert "scored on sealed_test, sealed_shifted" in runner.final(run)
    scored = [e for _, e in read_jsonl(out / SCORING_LOG) if e["event"] == "scored"]
    assert {(e["run"], e["task"]) for e in scored} == {
        (run.name, "sealed_test"),
        (run.name, "sealed_shifted"),
    }
    assert runner.final(run).startswith("skipped")  # finished: skipped, nothing scored or logged again
    assert len([e for _, e in read_jsonl(out / SCORING_LOG)]) == 4
    demo = run_protocol.Runner(protocol, tmp_path / "work", data, out, quick=True)
    assert list(demo.test_files) == ["synthetic_test", "synthetic_shifted"]  # the demo never touches them


def test_one_progress_line_per_finished_run(capsys):
    run_protocol.pool(2, [(f"run{i}", lambda i: f"did {i}", i) for i in range(3)], t0=0.0)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[protocol")]
    assert len(lines) == 3 and all("/3] run" in line and "did" in line for line in lines)
    with pytest.raises(UserError, match="run1: boom"):
        run_protocol.pool(1, [("run0", lambda _: "ok", 0), ("run1", _raise, 1)])


def _raise(_: object) -> str:
    raise RuntimeError("boom")


def fake_inputs(root: Path, weights: bytes = b"weights-0") -> tuple[Path, dict[str, Path]]:
    base = root / "work" / "base"
    base.mkdir(parents=True)
    (base / "model.safetensors").write_bytes(weights)
    (base / "config.json").write_text("{}")
    sets = {}
    for name in ("experts", "experts_no_f1"):
        sets[name] = root / "data" / name
        sets[name].mkdir(parents=True)
        (sets[name] / "train.jsonl").write_text(json.dumps({"id": name}) + "\n")
        (sets[name] / "manifest.json").write_text(json.dumps({"run_key": name}))
    return base, sets


def test_frozen_inputs_are_kept_restored_and_checked(tmp_path):
    """The freeze keeps the base and the training sets (OUT/inputs) with their hashes; a fresh clone gets
    them back byte for byte (base done marker included); a rebuilt base that differs is refused by name,
    and a set that no pending run needs (absent) is not checked."""
    out = tmp_path / "out"
    base, sets = fake_inputs(tmp_path / "a")
    hashes = input_hashes(base, sets)
    assert set(hashes) == {"base", "train_set:experts", "train_set:experts_no_f1"} and all(hashes.values())
    keep_inputs(out, base, sets)

    fresh = tmp_path / "fresh"
    restored = restore_inputs(out, fresh / "work" / "base", fresh / "data")
    assert len(restored) == 3 and (fresh / "work" / "base" / ".tgrl_done").is_file()
    for name, folder in sets.items():
        for file in ("train.jsonl", "manifest.json"):
            assert (fresh / "data" / name / file).read_bytes() == (folder / file).read_bytes()
    again = input_hashes(fresh / "work" / "base", {n: fresh / "data" / n for n in sets})
    assert again == hashes and restore_inputs(out, fresh / "work" / "base", fresh / "data") == []

    manifest = {"inputs": hashes}
    check_inputs(manifest, again, out / MANIFEST)
    rebuilt, _ = fake_inputs(tmp_path / "b", weights=b"weights-1")
    partial = input_hashes(rebuilt, {"experts": sets["experts"]})
    with pytest.raises(UserError, match=r"^base: not the ones the selection was frozen with"):
        check_inputs(manifest, partial, out / MANIFEST)
    check_inputs(manifest, {"train_set:experts": hashes["train_set:experts"]}, out / MANIFEST)
    assert restore_inputs(tmp_path / "no_out", fresh / "x", fresh / "y") == []


def test_seal_freezes_the_inputs_and_refuses_a_resume_from_other_ones(datasets, tmp_path):
    """scripts/run_protocol.py seal(): the manifest holds the base's and the sets' hashes and OUT/inputs
    their copies; sealing again with a base rebuilt differently stops before any training."""
    import argparse

    from tgrl.utils import weights_sha256

    root = tmp_path / "a"
    base, sets = fake_inputs(root)
    (root / "data" / "synthetic").symlink_to(datasets / "synthetic")
    protocol = protocol_file(tmp_path, sealed={"seed": 7, "n_test": 30, "n_shifted": 30})
    out = tmp_path / "out"
    out.mkdir()
    write_selection(out / "selected.json", 1e-5)
    args = argparse.Namespace(out=out, work=root / "work", data=root / "data")
    runner = run_protocol.Runner(protocol, args.work, args.data, out)
    run_protocol.seal(protocol, runner, args, 0.0)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["inputs"] == {
        "base": weights_sha256(base),
        "train_set:experts": manifest["inputs"]["train_set:experts"],
    }
    assert (out / "inputs" / "base" / "model.safetensors").read_bytes() == b"weights-0"
    assert (out / "inputs" / "experts" / "train.jsonl.gz").is_file()
    run_protocol.seal(protocol, runner, args, 0.0)  # resumed with the same inputs: fine
    (base / "model.safetensors").write_bytes(b"weights-1")  # rebuilt elsewhere
    with pytest.raises(UserError, match="base: not the ones"):
        run_protocol.seal(protocol, runner, args, 0.0)
