"""Problem records (docs/design.md#41-problems): loading with validation that names file, line, field
and fix.

A user's own VQA data converted to this schema loads like the synthetic scenes do: nothing here is
specific to data this repo generated.
"""

from __future__ import annotations

import os
import re
import string
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tgrl.utils import UserError, read_jsonl

ANSWER_TYPES = ("choice", "number", "text", "expression")
# A gold answer of type "number": integer, decimal, scientific or a/b fraction, optional sign/percent.
_NUMBER_RE = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?(/\d+)?%?")
REQUIRED_FIELDS = ("id", "images", "question", "answer", "answer_type")
OPTIONAL_FIELDS = ("choices", "source", "meta")


class DataError(UserError):
    """A bad record: the message names the file, the line, the field and the fix."""

    def __init__(
        self, path: str | os.PathLike, line: int | None, field_name: str | None, problem: str, fix: str
    ):
        where = f"{path}:{line}" if line is not None else str(path)
        what = f" field '{field_name}':" if field_name else ""
        super().__init__(f"{where}:{what} {problem}. Fix: {fix}")
        self.path, self.line, self.field, self.problem, self.fix = str(path), line, field_name, problem, fix


@dataclass
class Problem:
    """One validated problem; ``image_paths`` are absolute (resolved against the JSONL's folder)."""

    id: str
    images: list[str]
    question: str
    answer: str
    answer_type: str
    choices: list[str] | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    image_paths: list[str] = field(default_factory=list, repr=False)

    def to_record(self) -> dict[str, Any]:
        """The JSONL form (without the resolved absolute paths)."""
        rec = asdict(self)
        rec.pop("image_paths")
        return rec

    def load_images(self) -> list:
        return [load_image(p) for p in self.image_paths]


def load_image(path: str | os.PathLike):
    """Open an image as RGB, fully decoded (a truncated file fails here, not inside a training step)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise UserError(
            f"{path}: image cannot be decoded ({err}). Fix: re-create or remove the file"
        ) from None


def _check_image(path: Path, jsonl: Path, line: int) -> None:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(
            jsonl,
            line,
            "images",
            f"image '{path}' does not exist",
            "paths are relative to the JSONL file's folder; check the path or copy the image there",
        )
    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(
            jsonl,
            line,
            "images",
            f"image '{path}' cannot be decoded ({type(err).__name__}: {err})",
            "re-create or replace the image file",
        ) from None


def validate_record(
    row: dict[str, Any], path: str | os.PathLike, line: int, check_images: bool = True
) -> Problem:
    """Check one problem record against the schema and return it as a :class:`Problem`."""
    path = Path(path)
    unknown = set(row) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS)
    if unknown:
        raise DataError(
            path,
            line,
            sorted(unknown)[0],
            f"unknown field(s) {sorted(unknown)}",
            f"use only {list(REQUIRED_FIELDS + OPTIONAL_FIELDS)}; put extra information under 'meta'",
        )
    for name in REQUIRED_FIELDS:
        if name not in row:
            raise DataError(
                path,
                line,
                name,
                "missing required field",
                f"add '{name}' to every row (schema: docs/design.md#41-problems)",
            )
    if not isinstance(row["id"], str) or not row["id"].strip():
        raise DataError(
            path,
            line,
            "id",
            f"must be a non-empty string, got {row['id']!r}",
            "give every row a unique string id",
        )
    for name in ("question", "answer"):
        if not isinstance(row[name], str) or not row[name].strip():
            raise DataError(
                path,
                line,
                name,
                f"must be a non-empty string, got {row[name]!r}",
                f"store '{name}' as text (numbers as strings, e.g. \"3\")",
            )
    images = row["images"]
    if not isinstance(images, list) or not images or not all(isinstance(p, str) and p for p in images):
        raise DataError(
            path,
            line,
            "images",
            f"must be a non-empty list of path strings, got {images!r}",
            'list the image file(s), e.g. ["images/0001.png"]',
        )
    answer_type = row["answer_type"]
    if answer_type not in ANSWER_TYPES:
        raise DataError(
            path,
            line,
            "answer_type",
            f"unknown answer type {answer_type!r}",
            f"use one of {list(ANSWER_TYPES)}",
        )
    choices = row.get("choices")
    if choices is not None and (
        not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices)
    ):
        raise DataError(
            path,
            line,
            "choices",
            f"must be null or a list of non-empty strings, got {choices!r}",
            "list the option texts in letter order, without the letters",
        )
    if answer_type == "choice":
        if not choices or len(choices) < 2:
            raise DataError(
                path,
                line,
                "choices",
                "answer_type 'choice' needs at least two choices",
                "add the options or change answer_type",
            )
        if len(choices) > 26:
            raise DataError(
                path, line, "choices", f"{len(choices)} choices (at most 26 letters)", "reduce the options"
            )
        letters = string.ascii_uppercase[: len(choices)]
        ans = row["answer"].strip()
        if not (ans.upper() in letters and len(ans) == 1) and ans not in choices:
            raise DataError(
                path,
                line,
                "answer",
                f"answer {ans!r} is neither a letter in {letters} nor one of the choices",
                'use the option letter (e.g. "B") or the exact option text',
            )
    elif answer_type == "number" and not _NUMBER_RE.fullmatch(row["answer"].strip().replace(",", "")):
        raise DataError(
            path,
            line,
            "answer",
            f"answer_type 'number' but {row['answer']!r} is not a number",
            'write the number (e.g. "3", "-2.5", "3/4") or use answer_type \'expression\'/\'text\'',
        )
    meta = row.get("meta", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise DataError(
            path,
            line,
            "meta",
            f"must be an object, got {type(meta).__name__}",
            "use a JSON object or omit it",
        )
    source = row.get("source", "") or ""
    if not isinstance(source, str):
        raise DataError(
            path, line, "source", f"must be a string, got {source!r}", "name the dataset the row comes from"
        )
    image_paths = [str((path.parent / p).resolve()) for p in images]
    if check_images:
        for p in image_paths:
            _check_image(Path(p), path, line)
    return Problem(
        id=row["id"],
        images=list(images),
        question=row["question"],
        answer=row["answer"],
        answer_type=answer_type,
        choices=choices,
        source=source,
        meta=meta,
        image_paths=image_paths,
    )


def load_problems(
    path: str | os.PathLike, check_images: bool = True, limit: int | None = None
) -> list[Problem]:
    """Load and validate a problem JSONL file; the first bad row raises :class:`DataError`.

    Ids must be unique: duplicate ids would silently merge teacher trajectories and eval results.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"{path}: problem file not found. Fix: check the path (make data builds the synthetic set)"
        )
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for line, row in read_jsonl(path):
        prob = validate_record(row, path, line, check_images=check_images)
        if prob.id in seen:
            raise DataError(
                path,
                line,
                "id",
                f"duplicate id {prob.id!r} (first on line {seen[prob.id]})",
                "make ids unique",
            )
        seen[prob.id] = line
        problems.append(prob)
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise DataError(
            path, None, None, "no rows", "the file is empty; regenerate or point to the right file"
        )
    return problems


def describe(problems: list[Problem]) -> dict[str, Any]:
    """Counts for manifests and the validate CLI: rows, per answer type, per source, per meta.qtype."""
    return {
        "n": len(problems),
        "answer_type": dict(Counter(p.answer_type for p in problems)),
        "source": dict(Counter(p.source for p in problems)),
        "qtype": dict(Counter(str(p.meta.get("qtype")) for p in problems if "qtype" in p.meta)),
    }
