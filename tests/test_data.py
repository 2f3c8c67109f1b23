"""Problem schema validation: every bad row names the file, the line, the field and the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tgrl.data import DataError, describe, load_problems
from tgrl.utils import REPO_ROOT, UserError


def good_row(**overrides) -> dict:
    row = {
        "id": "q1",
        "images": ["img.png"],
        "question": "How many?",
        "answer": "3",
        "answer_type": "number",
        "choices": None,
        "source": "unit",
        "meta": {},
    }
    row.update(overrides)
    return row


def write_rows(folder: Path, rows: list, raw_lines: list[str] | None = None) -> Path:
    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "img.png")
    path = folder / "problems.jsonl"
    lines = [json.dumps(r) for r in rows] + (raw_lines or [])
    path.write_text("\n".join(lines) + "\n")
    return path


# (description, rows written before the bad one, the bad line, expected field, words in the problem)
BAD_CASES = [
    ("missing answer", {k: v for k, v in good_row(id="b").items() if k != "answer"}, "answer", "missing"),
    ("empty question", good_row(id="b", question="  "), "question", "non-empty"),
    ("answer not a string", good_row(id="b", answer=3), "answer", "non-empty string"),
    ("images not a list", good_row(id="b", images="img.png"), "images", "list"),
    ("image missing on disk", good_row(id="b", images=["nope.png"]), "images", "does not exist"),
    ("unknown answer type", good_row(id="b", answer_type="integer"), "answer_type", "unknown answer type"),
    ("choice without choices", good_row(id="b", answer="A", answer_type="choice"), "choices", "at least two"),
    (
        "choice answer not an option",
        good_row(id="b", answer="E", answer_type="choice", choices=["x", "y"]),
        "answer",
        "neither a letter",
    ),
    ("number answer not numeric", good_row(id="b", answer="three"), "answer", "not a number"),
    ("choices not strings", good_row(id="b", choices=[1, 2]), "choices", "list of non-empty strings"),
    ("unknown field", {**good_row(id="b"), "label": "3"}, "label", "unknown field"),
    ("duplicate id", good_row(id="a"), "id", "duplicate id"),
    ("meta not an object", good_row(id="b", meta=[1]), "meta", "must be an object"),
    ("id not a string", good_row(id=7), "id", "non-empty string"),
]


@pytest.mark.parametrize("name,bad,field,words", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_row_names_file_line_field_and_fix(tmp_path, name, bad, field, words):
    path = write_rows(tmp_path, [good_row(id="a"), bad])
    with pytest.raises(DataError) as info:
        load_problems(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:2:"), msg
    assert f"field '{field}'" in msg and words in msg and "Fix:" in msg, msg
    assert info.value.line == 2 and info.value.field == field


def test_malformed_json_line_names_line(tmp_path):
    path = write_rows(tmp_path, [good_row(id="a")], raw_lines=['{"id": "b", "images": [}'])
    with pytest.raises(UserError, match=rf"{path}:2: not valid JSON"):
        load_problems(path)


def test_corrupt_image_is_reported(tmp_path):
    path = write_rows(tmp_path, [good_row(id="a", images=["bad.png"])])
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match="cannot be decoded") as info:
        load_problems(path)
    assert info.value.line == 1 and info.value.field == "images"


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_problems(path)


def test_user_vqa_data_in_schema_loads(tmp_path):
    """Data the repo did not generate (a converted VQA set: choices, text, expressions, several images)."""
    Image.new("RGB", (30, 20), (0, 0, 0)).save(tmp_path / "a.jpg")
    Image.new("RGB", (20, 20), (9, 9, 9)).save(tmp_path / "b.png")
    rows = [
        {
            "id": "mc",
            "images": ["a.jpg"],
            "question": "Which shape?",
            "answer": "B",
            "answer_type": "choice",
            "choices": ["circle", "square", "triangle"],
            "source": "my_vqa",
        },
        {
            "id": "mc-text",
            "images": ["a.jpg", "b.png"],
            "question": "Same?",
            "answer": "square",
            "answer_type": "choice",
            "choices": ["circle", "square"],
            "source": "my_vqa",
        },
        {
            "id": "expr",
            "images": ["b.png"],
            "question": "Area?",
            "answer": "\\frac{\\pi}{2}",
            "answer_type": "expression",
        },
        {
            "id": "num",
            "images": ["b.png"],
            "question": "Length?",
            "answer": "1,250.5",
            "answer_type": "number",
        },
        {
            "id": "txt",
            "images": ["b.png"],
            "question": "Colour?",
            "answer": "Yes",
            "answer_type": "text",
            "meta": None,
        },
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    problems = load_problems(path)
    assert [p.id for p in problems] == ["mc", "mc-text", "expr", "num", "txt"]
    assert problems[1].image_paths == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    assert problems[0].load_images()[0].size == (30, 20)
    assert describe(problems)["answer_type"] == {"choice": 2, "expression": 1, "number": 1, "text": 1}


def test_validate_cli_exits_2_without_traceback(tmp_path):
    path = write_rows(tmp_path, [good_row(id="a"), good_row(id="b", answer_type="int")])
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "data_prep" / "validate_data.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"{path}:2: field 'answer_type'" in proc.stderr
    assert "Traceback" not in proc.stderr
    good = write_rows(tmp_path, [good_row(id="a")])
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "data_prep" / "validate_data.py"), str(good)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "OK" in proc.stdout
