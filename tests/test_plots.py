"""eval/plot_training.py: PNG curves from metrics JSONL, per run and overlaid, tolerant of key-name drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tgrl.evaluation.plots as pt
from eval import plot_training

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    # a GRPO-like run with TRL-style names, and a TGRL-like run with other names and the expert diagnostics
    grpo = [
        {
            "step": s,
            "reward": 0.3 + 0.01 * s,
            "rewards/accuracy_reward/mean": 0.3 + 0.01 * s,
            "completions/mean_length": 20 + s,
            "entropy": 1.0 - 0.02 * s,
            "fact_acc": 0.14 - 0.003 * s,
        }
        for s in range(1, 31)
    ]
    tgrl = [
        {
            "step": s,
            "train/reward": 0.4 + 0.01 * s,
            "accuracy/on_policy": 0.35 + 0.01 * s,
            "accuracy/expert": 1.0,
            "completion_length": 24.0,
            "expert/p_mean": 0.85,  # not plotted: template tokens at p ~ 1 dominate it
            "expert/p_fact": 0.2 + 0.02 * s,
            "expert/p_low": 0.1 + 0.01 * s,
            "grad/expert_share": 0.3,
            "vis_dep/expert": 0.4,
            "vis_dep/on_policy": 0.2 + 0.005 * s,
            "fact_accuracy": 0.17 + 0.001 * s,
            "note": "strings are ignored",
        }
        for s in range(1, 31)
    ]
    tgrl.insert(10, {"step": 5, "train/reward": 99.0})  # a resumed run logs step 5 again: later line wins
    tgrl.append({"final": True, "train_runtime": 12.0})  # no step: not a curve point
    return [
        write_metrics(tmp_path / "tiny_grpo_s1" / "metrics.jsonl", grpo),
        write_metrics(tmp_path / "tiny_tgrl_s1" / "metrics.jsonl", tgrl),
    ]


def axes_ink(fig) -> list[int]:
    """Non-background pixels inside each visible axes of a figure, legends hidden: what the curves drew
    (the frame, ticks and labels are outside the measured area)."""
    import numpy as np

    legends = [legend for ax in fig.axes if (legend := ax.get_legend()) is not None]
    for legend in legends:
        legend.set_visible(False)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    ink = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        box = ax.get_window_extent()
        top, bottom = pixels.shape[0] - int(box.y1) + 3, pixels.shape[0] - int(box.y0) - 3  # y runs up
        inside = pixels[top:bottom, int(box.x0) + 3 : int(box.x1) - 3]
        ink.append(int((np.abs(inside - 255).sum(axis=-1) > 30).sum()))
    for legend in legends:
        legend.set_visible(True)
    return ink


def test_pngs_per_run_and_overlays(tmp_path: Path, two_runs: list[Path], monkeypatch) -> None:
    ink: dict[str, list[int]] = {}
    save = pt.save_atomic

    def measured_save(fig, path: Path) -> None:
        ink[path.name] = axes_ink(fig)
        save(fig, path)

    monkeypatch.setattr(pt, "save_atomic", measured_save)
    out = tmp_path / "plots"
    assert plot_training.main(["--metrics", *map(str, two_runs), "--out", str(out), "--smooth", "5"]) == 0
    expected = [
        "tiny_grpo_s1.png",
        "tiny_tgrl_s1.png",
        "overlay.png",
        "overlay_reward.png",
        "overlay_visual_dependency_s_t.png",
        "overlay_fact_accuracy.png",
        "overlay_expert_content_token_p.png",
        "overlay_expert_gradient_norm_ratio.png",
    ]
    for name in expected:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
    assert not list(out.glob(".*"))  # no temp files left behind
    # every panel of every figure has its curves drawn (a blank panel would still be a valid PNG)
    assert set(ink) == {path.name for path in out.glob("*.png")}
    assert (len(ink["tiny_grpo_s1.png"]), len(ink["tiny_tgrl_s1.png"]), len(ink["overlay.png"])) == (5, 7, 8)
    for name, per_axes in ink.items():
        assert min(per_axes) > 100, (name, per_axes)


def test_candidate_keys_and_resume_semantics(two_runs: list[Path]) -> None:
    steps = pt.load_metrics(two_runs[1])
    assert steps[5]["reward"] == 99.0  # "train/" prefix stripped, later line for a repeated step wins
    assert "note" not in steps[1]
    xs, ys = pt.series(steps, pt.PANELS["visual dependency s_t"]["on-policy tokens"])
    assert xs[:2] == [1, 2] and ys[0] == pytest.approx(0.205)
    assert pt.series(pt.load_metrics(two_runs[0]), pt.PANELS["expert content-token p"]["fact tokens"]) is None


def test_smoothing() -> None:
    assert pt.smooth([1.0, 2.0, 3.0, 4.0], 1) == [1.0, 2.0, 3.0, 4.0]
    assert pt.smooth([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]


def test_malformed_metrics_exit_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "run" / "metrics.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "reward": \n')
    assert plot_training.main(["--metrics", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "line 2" in err


def test_overlays_group_seeds_into_methods() -> None:
    assert [pt.method_of(r) for r in ("tgrl_s0", "tgrl_no_filter_s12", "grpo_seed3", "base")] == [
        "tgrl",
        "tgrl_no_filter",
        "grpo",
        "base",
    ]
    # seed 2 missed step 3 (e.g. a resumed run): the band covers the steps all seeds logged
    xs, mean, lo, hi = pt.seed_band([([1, 2, 3], [0.0, 1.0, 2.0]), ([1, 2], [2.0, 3.0])])
    assert xs == [1, 2] and mean == [1.0, 2.0] and lo == [0.0, 1.0] and hi == [2.0, 3.0]


def test_kept_gzipped_curves_read_like_the_checkpoints(tmp_path):
    """The protocol keeps each run's curves as OUT/curves/<run>.metrics.jsonl.gz (plots from a fresh
    clone, without checkpoints): the same steps and values as the plain file."""
    import gzip

    from tgrl.evaluation.plots import load_metrics

    text = '{"step": 1, "train/reward": 0.25}\n{"step": 2, "train/reward": 0.5, "note": "x"}\n'
    plain, packed = tmp_path / "metrics.jsonl", tmp_path / "run.metrics.jsonl.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    expected = {1: {"step": 1.0, "reward": 0.25}, 2: {"step": 2.0, "reward": 0.5}}
    assert load_metrics(packed) == load_metrics(plain) == expected


def test_grounding_plot_gathers_runs_and_correlations(tmp_path: Path) -> None:
    """eval/plot_grounding.py: per run the latest ground-truth and s_t rows, Pearson r over the runs that
    have both (checked against the standard library), a PNG drawn from the JSON, and the same from
    --from-json."""
    import statistics

    from eval import plot_grounding

    rows, truth, fact_s = [], [0.2, 0.5, 0.4, 0.7], [0.10, 0.30, 0.20, 0.35]
    for i, (t, s) in enumerate(zip(truth, fact_s, strict=True)):
        run = {"run": f"r{i}", "method": "tgrl" if i % 2 else "grpo", "n": 10}
        rows.append(
            {
                **run,
                "task": "synthetic_test_twins",
                "metric": "twin_tracking",
                "decoding": "greedy",
                "value": t,
            }
        )
        rows.append(
            {**run, "task": "synthetic_test", "metric": "fact_acc", "decoding": "greedy", "value": 0.3}
        )
        fs = {"task": "synthetic_test", "metric": "expert_fact_s", "decoding": "teacher_forced_t0.3"}
        rows.append({**run, **fs, "value": 9.0})  # superseded by the later row
        rows.append({**run, **fs, "value": s})
        rows.append({**run, **fs, "decoding": "teacher_forced", "value": 5.0})  # T = 1: not this measure
    summary = tmp_path / "summary.jsonl"
    summary.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data_file, png = tmp_path / "g.json", tmp_path / "g.png"
    plot_grounding.main(["--summary", str(summary), "--json", str(data_file), "--out", str(png)])
    data = json.loads(data_file.read_text())
    assert [r["fact_token_s"] for r in data["runs"]] == fact_s and data["runs"][0]["run"] == "r0"
    corr = data["correlations"]["fact_token_s ~ twin_tracking"]
    assert corr["runs"] == 4 and corr["r"] == pytest.approx(statistics.correlation(fact_s, truth))
    assert data["correlations"]["fact_token_s ~ fact_acc"]["r"] is None  # constant ground truth
    assert data["correlations"]["own_reasoning_s ~ fact_acc"]["runs"] == 0
    assert png.stat().st_size > 0
    two = tmp_path / "two.json"  # labels keep two summaries' runs of the same name apart
    plot_grounding.main(
        ["--summary", f"a={summary}", "--summary", f"b={summary}", "--json", str(two), "--out", str(png)]
    )
    assert [r["run"] for r in json.loads(two.read_text())["runs"]] == [
        f"{x}/r{i}" for x in "ab" for i in range(4)
    ]
    again = tmp_path / "again.png"
    plot_grounding.main(["--from-json", str(data_file), "--out", str(again)])
    assert again.stat().st_size > 0


def test_grounding_plot_reads_aliased_tasks_and_prefers_whole_split_rows(tmp_path: Path) -> None:
    """--task-alias reads synthetic_test's measures from sealed_test rows; a row over a prefix of the split
    (``limit``) never replaces a whole-split value, but stands in until one comes."""
    from eval import plot_grounding

    fact = {"task": "sealed_test", "metric": "fact_acc", "decoding": "greedy", "n": 10}
    rows = [
        {"run": "a", **fact, "limit": None, "value": 0.40},
        {"run": "a", **fact, "limit": 500, "value": 0.99},  # later, over a prefix: ignored
        {"run": "b", **fact, "limit": 500, "value": 0.30},  # prefix first ...
        {"run": "b", **fact, "limit": None, "value": 0.35},  # ... replaced by the whole split
        {"run": "c", **fact, "limit": 500, "value": 0.20},  # only a prefix: it stands in
        {"run": "a", "task": "synthetic_test", "metric": "fact_acc", "decoding": "greedy", "value": 0.9},
    ]
    summary = tmp_path / "summary.jsonl"
    summary.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "g.json"
    argv = ["--summary", str(summary), "--json", str(out), "--out", str(tmp_path / "g.png")]
    with pytest.raises(SystemExit):  # the plot needs an s_t measure; the data JSON is written first
        plot_grounding.main([*argv, "--task-alias", "synthetic_test=sealed_test"])
    values = {r["run"]: r["fact_acc"] for r in json.loads(out.read_text())["runs"]}
    assert values == {"a": 0.40, "b": 0.35, "c": 0.20}  # the unaliased synthetic_test row is not read
    with pytest.raises(SystemExit):
        plot_grounding.main([*argv, "--task-alias", "synthetic_test"])
