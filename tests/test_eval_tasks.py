"""Our lmms-eval tasks (eval/tasks/tgrl): prompts, scorers and aggregations on benchmark fixture rows.

The real benchmark data cannot be downloaded here, so the scorers run on hand-written rows that copy each
dataset's columns (tests/fixtures/benchmarks), with verdicts and aggregate values computed by hand. The
task YAMLs are loaded with lmms-eval's own loader, so every ``!function`` must resolve.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TASKS = REPO / "eval" / "tasks" / "tgrl"
FIXTURES = REPO / "tests" / "fixtures" / "benchmarks"
# tasks sharing a dataset schema share a fixture file
FIXTURE_FOR = {
    "mathverse_testmini_vision_only": "mathverse_testmini",
    "mathvision_testmini": "mathvision_test",
}


@pytest.fixture(scope="module")
def utils():
    from tgrl.evaluation import tasks

    return tasks


def fixture_rows(task: str) -> list[dict]:
    path = FIXTURES / f"{FIXTURE_FOR.get(task, task)}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def task_yamls() -> list[Path]:
    return sorted(TASKS.glob("tgrl_*.yaml"))


def load_config(path: Path) -> dict:
    from lmms_eval.utils import load_yaml_config

    return load_yaml_config(str(path), mode="full")


def per_doc_correct(out: dict) -> float:
    """The per-document accuracy a task's process_results reports (its main metric)."""
    if "acc" in out:
        return out["acc"]
    if "avg" in out:
        return out["avg"]
    return out["aacc"]["scores"][0]


@pytest.mark.parametrize("path", task_yamls(), ids=lambda p: p.stem)
def test_task_yaml_loads_and_scores_fixture_rows(path: Path) -> None:
    """Each task loads through lmms-eval, keeps all responses, never strips <think>, prompts with text
    and scores every fixture row as judged by hand; its metric_list names exactly what it returns."""
    config = load_config(path)
    task = config["task"].removeprefix("tgrl_")
    assert config["reasoning_tags"] == "none"
    assert config["output_type"] == "generate_until"
    assert config["generation_kwargs"]["until"] == []
    declared = {m["metric"] for m in config["metric_list"]}
    returned: set[str] = set()
    for row in fixture_rows(task):
        doc = row["doc"]
        text = config["doc_to_text"](doc)
        assert isinstance(text, str) and text.strip()
        assert config["doc_to_visual"](doc) == []  # image columns are null in fixtures
        out = config["process_results"](doc, [[row["response"]]])
        returned |= set(out)
        assert per_doc_correct(out) == row["correct"], (task, doc, row["response"])
        assert out["format"] == 1.0
    assert returned == declared


def test_wemath_strict_and_loose_by_hand(utils) -> None:
    """Composites: W1 complete mastery; W2 one sub wrong, multi right (rote memorisation strictly,
    mastery loosely); W3 all subs right, multi wrong (inadequate generalisation); W4 all wrong.
    strict = (CM 1 + 0.5 * IG 1) / 4 = 0.375; loose = (CM 2 + 0.5) / 4 = 0.625; acc = 8 / 13 rows."""
    outs = [
        utils.wemath_process_results(r["doc"], [[r["response"]]]) for r in fixture_rows("wemath_testmini")
    ]
    assert utils.wemath_aggregate_strict([o["strict"] for o in outs]) == pytest.approx(0.375)
    assert utils.wemath_aggregate_loose([o["loose"] for o in outs]) == pytest.approx(0.625)
    assert sum(o["acc"] for o in outs) / len(outs) == pytest.approx(8 / 13)
    # under --limit a composite may miss parts: it is left out, not counted wrong
    partial = [o["strict"] for o in outs if o["strict"]["group"][0] != "W4" or o["strict"]["part"] != "multi"]
    assert utils.wemath_aggregate_strict(partial) == pytest.approx(1.5 / 3)


def test_dynamath_average_and_worst_case_by_hand(utils) -> None:
    """Seed 1: three variants, all right; seed 2: right, wrong, right. avg = 5/6, worst = 1/2."""
    outs = [utils.dynamath_process_results(r["doc"], [[r["response"]]]) for r in fixture_rows("dynamath")]
    assert sum(o["avg"] for o in outs) / len(outs) == pytest.approx(5 / 6)
    assert utils.aggregate_all_correct([o["worst"] for o in outs]) == pytest.approx(0.5)


def test_hallusionbench_aacc_qacc_facc_by_hand(utils) -> None:
    """Rows: VD q0 (fig0 right, fig1 wrong), VD q1 (both right), VS q0 (no figure: declines -> right;
    fig1 right). aAcc 5/6; qAcc: q0 wrong, q1 right, VS q0 right = 2/3; fAcc: VD fig0 right, VD fig1
    wrong, VS fig1 right (VS fig0 has no figure) = 2/3; mean = (5/6 + 2/3 + 2/3) / 3."""
    outs = [
        utils.hallusion_process_results(r["doc"], [[r["response"]]])
        for r in fixture_rows("hallusionbench_image")
    ]
    assert utils.hallusion_aggregate_aacc([o["aacc"] for o in outs]) == pytest.approx(5 / 6)
    assert utils.hallusion_aggregate_qacc([o["qacc"] for o in outs]) == pytest.approx(2 / 3)
    assert utils.hallusion_aggregate_facc([o["facc"] for o in outs]) == pytest.approx(2 / 3)
    assert utils.hallusion_aggregate_mean([o["mean"] for o in outs]) == pytest.approx((5 / 6 + 4 / 3) / 3)


def test_avg_at_k_scores_every_response(utils) -> None:
    """avg@k: all k responses of a document are scored (lmms-eval would keep only the first), and
    grouped metrics are computed per response index and averaged."""
    rows = fixture_rows("dynamath")
    wrong = "<think>x</think><answer>wrong</answer>"
    outs = [utils.dynamath_process_results(r["doc"], [[r["response"], wrong]]) for r in rows]
    assert sum(o["avg"] for o in outs) / len(outs) == pytest.approx((5 / 6) / 2)
    assert utils.aggregate_all_correct([o["worst"] for o in outs]) == pytest.approx((0.5 + 0.0) / 2)
    assert list(utils.KeepAllResponses().apply([["a", "b"]], None)) == [["a", "b"]]


def test_prompt_text_uses_the_training_template(utils) -> None:
    """Options go in the template's own layout, so eval prompts read like training prompts."""
    from tgrl.prompts import build_user_text

    assert utils.question_with_choices("Which?", ["x", "y"]) == build_user_text("Which?", ["x", "y"])
    doc = fixture_rows("wemath_testmini")[0]["doc"]
    assert utils.wemath_doc_to_text(doc).endswith("(D) 24\n(E) No correct answer")
    assert utils.wemath_choices("A. 3; B. 4") == ["3", "4"]
    assert utils.wemath_choices("free text") is None
    vista = fixture_rows("mathvista_testmini")[2]["doc"]
    assert "2 decimal places" in utils.mathvista_doc_to_text(vista)


def test_multi_image_and_text_only_docs(utils) -> None:
    """MMMU passes the images its question names, in number order; MathVerse text-only has none."""
    from PIL import Image

    doc = dict(fixture_rows("mmmu_val")[1]["doc"])
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    doc.update(image_1=red, image_2=blue, image_3=Image.new("RGB", (8, 8)))
    assert [im.getpixel((0, 0)) for im in utils.mmmu_doc_to_visual(doc)] == [(255, 0, 0), (0, 0, 255)]
    assert utils.mathverse_doc_to_visual({"image": ""}) == []


def test_judge_is_asked_only_when_enabled(utils, monkeypatch) -> None:
    """The LLM judge is opt-in (TGRL_JUDGE_MODEL) and sees only responses the rules score 0."""
    row = fixture_rows("mathvision_test")[2]  # rule says wrong
    calls = []
    monkeypatch.setattr(utils, "judge_says_correct", lambda q, g, r: calls.append(g) or True)
    monkeypatch.delenv("TGRL_JUDGE_MODEL", raising=False)
    assert utils.mathvision_process_results(row["doc"], [[row["response"]]])["acc"] == 0.0
    monkeypatch.setenv("TGRL_JUDGE_MODEL", "gpt-4o-mini-2024-07-18")
    assert utils.mathvision_process_results(row["doc"], [[row["response"]]])["acc"] == 1.0
    right = fixture_rows("mathvision_test")[0]
    utils.mathvision_process_results(right["doc"], [[right["response"]]])
    assert calls == ["7"]


def test_generic_jsonl_task_reports_types_and_fact_accuracy(utils, synthetic_dir, tmp_path) -> None:
    """The generic task validates the file, writes an all-string copy, and scores acc, acc_<qtype>
    and fact_acc from the full response (a right answer with wrong stated facts keeps acc 1 and
    gets fact_acc 0)."""
    from tgrl.teachers.oracle import oracle_trace

    info = utils.write_jsonl_task(synthetic_dir / "test.jsonl", tmp_path, "synthetic_test")
    assert info["task"] == "tgrl_jsonl_synthetic_test" and info["n"] == 30
    config = load_config(Path(info["yaml"]))
    assert config["task"] == info["task"]
    assert config["dataset_kwargs"]["data_files"]["test"] == info["data"]
    docs = [json.loads(line) for line in Path(info["data"]).read_text().splitlines()]
    assert all(isinstance(v, str) for doc in docs for v in doc.values())
    doc = docs[0]
    meta = json.loads(doc["meta_json"])
    good = oracle_trace(meta)
    out = config["process_results"](doc, [[good]])
    assert out["acc"] == 1.0 and out["fact_acc"] == 1.0 and out[f"acc_{doc['qtype']}"] == 1.0
    wrong_facts = good.replace(f"red {meta['counts']['red']}", f"red {meta['counts']['red'] + 1}", 1)
    out = config["process_results"](doc, [[wrong_facts]])
    assert out["acc"] == 1.0 and out["fact_acc"] == 0.0
    images = config["doc_to_visual"](doc)
    assert len(images) == 1 and images[0].size == (56, 56)
    assert config["doc_to_text"](doc) == doc["question"]


def test_generic_jsonl_task_rejects_bad_rows(utils, tmp_path) -> None:
    from tgrl.utils import UserError

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(
            {"id": "1", "images": ["missing.png"], "question": "q", "answer": "1", "answer_type": "number"}
        )
        + "\n"
    )
    with pytest.raises(UserError, match="bad.jsonl:1"):
        utils.write_jsonl_task(bad, tmp_path / "out", "bad")


def test_letter_sets_for_multi_select(utils) -> None:
    assert utils.letter_set("A, C") == frozenset("AC")
    assert utils.letter_set("(A) and (C)") == frozenset("AC")
    assert utils.letter_set("AC") == frozenset("AC")
    assert utils.letter_set(None) == frozenset()
    assert utils.logicvista_score("<answer>C, A</answer>", "A, C") == 1.0
    assert utils.logicvista_score("<answer>A, B, C</answer>", "A, C") == 0.0


def test_every_suite_task_is_found_by_lmms_eval() -> None:
    """A task named in eval/suites.yaml but missing (or broken) in eval/tasks would only fail on the
    cluster, after the model is loaded; lmms-eval's own TaskManager must index every one of them."""
    import yaml
    from lmms_eval.tasks import TaskManager

    suites = yaml.safe_load((REPO / "eval" / "suites.yaml").read_text())
    named = {f"tgrl_{t}" for suite in suites.values() for t in (suite.get("tasks") or [])}
    assert {"tgrl_mmmu_pro_standard", "tgrl_mmmu_pro_vision"} <= named
    manager = TaskManager("WARNING", include_path=[str(TASKS.parent)], include_defaults=False)
    assert sorted(named - set(manager.all_tasks)) == []
