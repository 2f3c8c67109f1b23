"""Dataset converters on fixture rows that copy each dataset's column layout (the real data cannot be
downloaded here): every row is converted or counted by reason, and the output loads as problems."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import convert_geometry3k, convert_virl39k
from tgrl.converters import clean_gold, split_inline_choices, strip_image_tags, unbox
from tgrl.data import load_problems
from tgrl.utils import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "converters"


VIRL_SCHEMA = pa.schema(
    [
        ("question", pa.string()),
        ("answer", pa.string()),
        ("image", pa.list_(pa.string())),
        ("qid", pa.string()),
        ("category", pa.string()),
        ("source", pa.string()),
        ("PassRate_32BTrained", pa.float64()),
        ("PassRate_7BBase", pa.float64()),
    ]
)
# The HF datasets Image feature as stored in parquet: a struct of raw bytes and the original path.
GEO_SCHEMA = pa.schema(
    [
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("problem", pa.string()),
        ("answer", pa.string()),
        ("id", pa.int64()),
        ("choices", pa.list_(pa.string())),
        ("ground_truth", pa.string()),
    ]
)


@pytest.fixture()
def virl_copy(tmp_path) -> Path:
    """A local ViRL39K copy as released: 39Krelease.parquet beside images/."""
    root = tmp_path / "ViRL39K"
    shutil.copytree(FIXTURES / "virl39k" / "images", root / "images")
    rows = json.loads((FIXTURES / "virl39k" / "rows.json").read_text())
    pq.write_table(pa.Table.from_pylist(rows, schema=VIRL_SCHEMA), root / "39Krelease.parquet")
    return root


@pytest.fixture()
def geo_copy(tmp_path) -> Path:
    """A local hiyouga/geometry3k copy: data/{train,test}-00000-of-00001.parquet with embedded images."""
    root = tmp_path / "geometry3k"
    (root / "data").mkdir(parents=True)
    spec = json.loads((FIXTURES / "geometry3k" / "rows.json").read_text())
    for split in ("train", "test"):
        rows = []
        for row in spec[split]:
            images = []
            for name in row["images"]:
                data = (
                    b"not an image"
                    if name == "__undecodable__"
                    else (FIXTURES / "geometry3k" / name).read_bytes()
                )
                images.append({"bytes": data, "path": None})
            rows.append({**row, "images": images})
        pq.write_table(
            pa.Table.from_pylist(rows, schema=GEO_SCHEMA), root / "data" / f"{split}-00000-of-00001.parquet"
        )
    return root


def test_virl39k_converts_or_counts_every_row(virl_copy, tmp_path):
    out = tmp_path / "out"
    manifest = convert_virl39k.main(["--input", str(virl_copy), "--out", str(out)])
    c = manifest["counts"]["train"]
    assert c["rows_in"] == 11 and c["converted"] == 6
    assert c["skipped"] == {
        "answer_unbalanced_boxed": 1,
        "duplicate_id": 1,
        "empty_question": 1,
        "image_missing": 1,
        "no_image": 1,
    }
    assert c["notes"] == {"letter_answer_options_left_inline": 1}
    problems = {p.id: p for p in load_problems(out / "train.jsonl")}  # validates schema + images
    chart = problems["virl39k-chart-0001"]
    assert (chart.answer, chart.answer_type, chart.question) == (
        "42",
        "number",
        "What is the highest value in the bar chart?",
    )
    assert chart.meta["pass_rate_32b_trained"] == 0.75 and chart.meta["category"].endswith("Math")
    geo = problems["virl39k-geo-0002"]
    assert (geo.answer, geo.answer_type) == ("C", "choice")
    assert geo.choices == ["30°", "45°", "60°", "90°"]
    assert geo.question == "In the figure, what is the measure of angle ABC?"
    assert geo.images[0].endswith(".jpg")  # original bytes kept, format preserved
    assert problems["virl39k-geo-0003"].answer_type == "expression"
    assert problems["virl39k-chart-0004"].answer_type == "text"
    assert len(problems["virl39k-multi-0005"].images) == 2
    assert (problems["virl39k-chart-0011"].answer, problems["virl39k-chart-0011"].answer_type) == (
        "12.5%",
        "number",
    )
    # image bytes are copied unchanged
    src = (virl_copy / "images" / "Processed-geo-0.jpg").read_bytes()
    assert (out / geo.images[0]).read_bytes() == src


def test_virl39k_limit_and_zip(virl_copy, tmp_path):
    import zipfile

    with zipfile.ZipFile(virl_copy / "images.zip", "w") as zf:
        for p in (virl_copy / "images").iterdir():
            zf.write(p, f"images/{p.name}")
    shutil.rmtree(virl_copy / "images")  # the release ships only the zip
    out = tmp_path / "out"
    manifest = convert_virl39k.main(
        ["--input", str(virl_copy / "39Krelease.parquet"), "--out", str(out), "--limit", "2"]
    )
    assert manifest["counts"]["train"]["converted"] == 2
    assert (virl_copy / "images" / "Processed-chart-0.png").exists()


def test_virl39k_hub_path_downloads_then_converts(virl_copy, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(virl_copy)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    manifest = convert_virl39k.main(["--hub", "--revision", "abc123", "--out", str(tmp_path / "o")])
    assert calls[0]["repo_id"] == "TIGER-Lab/ViRL39K" and calls[0]["revision"] == "abc123"
    assert calls[0]["repo_type"] == "dataset"
    assert (
        manifest["source"]["hub_id"] == "TIGER-Lab/ViRL39K" and manifest["counts"]["train"]["converted"] == 6
    )


def test_geometry3k_free_form(geo_copy, tmp_path):
    out = tmp_path / "out"
    manifest = convert_geometry3k.main(["--input", str(geo_copy), "--out", str(out)])
    train, test = manifest["counts"]["train"], manifest["counts"]["test"]
    assert (train["rows_in"], train["converted"]) == (5, 3)
    assert train["skipped"] == {"empty_answer": 1, "image_undecodable": 1}
    assert (test["rows_in"], test["converted"], test["skipped"]) == (2, 2, {})
    assert "validation" not in manifest["counts"]  # this copy has no validation split
    rows = {p.id: p for p in load_problems(out / "train.jsonl")}
    first = rows["geometry3k-train-0"]
    assert (first.question, first.answer, first.answer_type, first.choices) == (
        "Find x.",
        "14\\sqrt{3}",
        "expression",
        None,
    )
    assert first.meta["ground_truth"] == "D" and len(first.meta["choices"]) == 4
    assert rows["geometry3k-train-1"].answer_type == "number"
    test_rows = {p.id: p for p in load_problems(out / "test.jsonl")}
    assert test_rows["geometry3k-test-1"].answer == "\\frac{7}{2}"


def test_geometry3k_choice_format(geo_copy, tmp_path):
    out = tmp_path / "out"
    manifest = convert_geometry3k.main(
        ["--input", str(geo_copy), "--out", str(out), "--answer-format", "choice", "--splits", "train"]
    )
    c = manifest["counts"]["train"]
    assert c["converted"] == 3
    assert c["skipped"] == {"ground_truth_not_an_option_letter": 1, "image_undecodable": 1}
    first = load_problems(out / "train.jsonl")[0]
    assert (first.answer, first.answer_type, first.choices[3]) == ("D", "choice", "14\\sqrt{3}")
    assert first.meta["free_form_answer"] == "14\\sqrt{3}"


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        convert_geometry3k.main(["--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "answer,expected",
    [("\\boxed{A}", "A"), ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"), ("7", "7"), (" \\boxed{ 3 } ", "3")],
)
def test_unbox(answer, expected):
    assert unbox(answer) == expected


def test_question_helpers():
    assert strip_image_tags("<image>\n<image>Compare.") == ("Compare.", 2)
    assert split_inline_choices("Q?\nA. 1\nB. 2") == ("Q?", ["1", "2"])
    assert split_inline_choices("Q?\n(A) x\n(B) y\n(C) z") == ("Q?", ["x", "y", "z"])
    assert split_inline_choices("Q?\nA. 1\nC. 2") is None  # not a consecutive run
    assert split_inline_choices("Just a question.") is None
    assert clean_gold("$5$") == ("5", "number")
