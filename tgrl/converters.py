"""Shared machinery of the dataset converters (``data_prep/convert_<name>.py``): public RLVR sets -> our
problem schema (docs/design.md#41-problems).

Why shared: every converter must read the same storage forms (a local parquet/JSON copy, or the
dataset id through the hub), store images the same way, and count every row it cannot convert by
reason in the manifest; no row is dropped silently.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import time
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tgrl.data import DataError, validate_record
from tgrl.utils import UserError, sha256_file, write_json, write_jsonl

IMAGE_TAG_RE = re.compile(r"<image\s*\d*>", re.IGNORECASE)
# "A. text", "(A) text", "A: text", "A) text" at a line start (inline options of a question).
_OPTION_LINE_RE = re.compile(r"^\s*\(?([A-Z])[\.\):：]\s*(.+?)\s*$")
_CHOICES_HEADER_RE = re.compile(r"^\s*(choices|options)\s*[:：]?\s*$", re.IGNORECASE)
_NUMBER_RE = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?(/\d+)?%?")
_LATEX_HINT_RE = re.compile(r"\\[A-Za-z]+|[\^_{}]|\bsqrt\b|\bpi\b|π|√")


class Skip(Exception):
    """A row that cannot be converted; the message is the reason counted in the manifest."""


# --------------------------------------------------------------------------------------------------
# reading sources
# --------------------------------------------------------------------------------------------------


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a parquet, JSON (a list of objects) or JSONL file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        for batch in table.iter_batches(batch_size=256):
            yield from batch.to_pylist()
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of rows")
        yield from data
    else:
        raise UserError(f"{path}: unsupported file type {suffix!r} (use .parquet, .json or .jsonl)")


def find_data_files(root: Path, split: str | None = None) -> list[Path]:
    """The data files of a local dataset copy: ``root`` itself, or the parquet/JSON files below it
    (restricted to names containing ``split`` when given and such names exist)."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserError(f"{root}: no such file or folder. Fix: point --input at the downloaded dataset")
    files = sorted(
        p for ext in ("parquet", "jsonl", "json") for p in root.rglob(f"*.{ext}") if ".cache" not in p.parts
    )
    files = [p for p in files if not p.name.startswith(("dataset_info", "state", "manifest"))]
    if split:
        named = [p for p in files if re.search(rf"(^|[-_/.]){re.escape(split)}([-_.]|$)", p.name)]
        files = named or files
    if not files:
        raise UserError(f"{root}: no .parquet/.json/.jsonl files found")
    return files


def snapshot_from_hub(repo_id: str, revision: str | None, cache_dir: Path | None) -> Path:
    """Download a dataset repo with ``huggingface_hub`` (needs network access to a hub)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - installed with transformers
        raise UserError(
            "huggingface_hub is not installed; download the dataset yourself and pass --input"
        ) from None
    try:
        return Path(
            snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir)
        )
    except Exception as err:  # network, auth, offline mode
        raise UserError(
            f"could not download {repo_id} from the hub ({type(err).__name__}: {err}). "
            "Fix: on a machine with hub access run this again, or download the files and pass --input"
        ) from None


def resolve_source(
    local: Path | None, hub_id: str | None, revision: str | None, cache_dir: Path | None
) -> Path:
    """The dataset's local root: ``local`` when given (must exist), else a hub snapshot."""
    if local is not None:
        if not local.exists():
            raise UserError(f"{local}: no such file or folder. Fix: point --input at the downloaded dataset")
        return local
    return snapshot_from_hub(hub_id, revision, cache_dir)


def add_source_arguments(parser: argparse.ArgumentParser, default_hub_id: str) -> None:
    """The flags every converter shares: where the dataset comes from, where the output goes."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=Path, help="local copy: a parquet/JSON file or the dataset folder")
    src.add_argument(
        "--hub", nargs="?", const=default_hub_id, help=f"dataset id on the hub (default {default_hub_id})"
    )
    parser.add_argument("--revision", default=None, help="hub revision (commit) to pin")
    parser.add_argument("--cache-dir", type=Path, default=None, help="hub download cache")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="stop after N converted rows per split")


def read_all_rows(files: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """The rows of several data files, in order."""
    for f in files:
        yield from read_rows(f)


def extract_zips(root: Path) -> None:
    """Unpack ``*.zip`` archives in ``root`` next to themselves once (ViRL39K ships images.zip)."""
    for archive in sorted(root.glob("*.zip")):
        marker = root / f".{archive.name}.extracted"
        if marker.exists():
            continue
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(root)
        marker.write_text("ok\n")


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------


def _image_bytes(value: Any, source_root: Path) -> tuple[bytes | None, Path | None, Any]:
    """(raw bytes, path of a file, PIL image): whichever form an image column holds."""
    if value is None:
        raise Skip("image_missing")
    if isinstance(value, dict):  # HF datasets Image feature: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return bytes(value["bytes"]), None, None
        if value.get("path"):
            value = value["path"]
        else:
            raise Skip("image_missing")
    if isinstance(value, bytes | bytearray):
        return bytes(value), None, None
    if isinstance(value, str):
        path = Path(value)
        if not path.is_absolute():
            path = source_root / path
        if not path.is_file():
            raise Skip("image_missing")
        return None, path, None
    if hasattr(value, "save") and hasattr(value, "size"):  # a PIL image (datasets decoded it)
        return None, None, value
    raise Skip("image_unreadable")


def store_image(value: Any, source_root: Path, out_dir: Path, rel_dir: str, stem: str) -> str:
    """Write one image under ``out_dir/rel_dir`` and return its path relative to ``out_dir``.

    Bytes and files are kept byte for byte (the model sees the original pixels); decoded PIL images
    are saved as PNG. Undecodable images raise :class:`Skip`.
    """
    from PIL import Image, UnidentifiedImageError

    data, path, pil = _image_bytes(value, source_root)
    try:
        if pil is not None:
            fmt, payload = "PNG", None
        else:
            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                im.load()
                fmt = (im.format or "PNG").upper()
            payload = data
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise Skip("image_undecodable") from None
    ext = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}.get(fmt, ".png")
    rel = f"{rel_dir}/{stem}{ext}"
    dest = out_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if pil is not None:
        pil.convert("RGB").save(dest, format="PNG")
    elif payload is not None:
        dest.write_bytes(payload)
    else:
        shutil.copyfile(path, dest)
    return rel


# --------------------------------------------------------------------------------------------------
# questions and answers
# --------------------------------------------------------------------------------------------------


def strip_image_tags(question: str) -> tuple[str, int]:
    """Remove ``<image>`` placeholders (our template puts the images before the text)."""
    n = len(IMAGE_TAG_RE.findall(question))
    return IMAGE_TAG_RE.sub("", question).strip(), n


def unbox(answer: str) -> str:
    """The content of ``\\boxed{...}`` when the answer is one boxed expression (nested braces kept)."""
    text = answer.strip()
    start = text.find("\\boxed{")
    if start == -1:
        return text
    depth, i = 0, start + len("\\boxed{") - 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    raise Skip("answer_unbalanced_boxed")


def split_inline_choices(question: str) -> tuple[str, list[str]] | None:
    """Split trailing lettered options ("A. 3", "(B) 4", ...) off a question: (stem, option texts).

    Only a consecutive run A, B, C... of at least two lines at the end counts; otherwise ``None``.
    """
    lines = question.rstrip().split("\n")
    options: list[str] = []
    end = len(lines)
    i = end - 1
    while i >= 0:
        m = _OPTION_LINE_RE.match(lines[i])
        if not m:
            break
        options.insert(0, (m.group(1), m.group(2)))
        i -= 1
    if len(options) < 2 or [letter for letter, _ in options] != [chr(65 + k) for k in range(len(options))]:
        return None
    stem_lines = lines[: i + 1]
    if stem_lines and _CHOICES_HEADER_RE.match(stem_lines[-1]):
        stem_lines = stem_lines[:-1]
    stem = "\n".join(stem_lines).strip()
    if not stem:
        return None
    return stem, [text for _, text in options]


def clean_gold(answer: str) -> tuple[str, str]:
    """(gold, answer_type): ``number`` for plain numbers (``12.5\\%`` -> ``12.5%``, ``$3$`` -> ``3``),
    ``expression`` for LaTeX/math, else ``text``."""
    a = answer.strip()
    if len(a) > 2 and a.startswith("$") and a.endswith("$"):
        a = a.strip("$").strip()
    number = a.replace("\\%", "%").replace(" ", "")
    if _NUMBER_RE.fullmatch(number.replace(",", "")):
        return number, "number"
    if _LATEX_HINT_RE.search(a):
        return a, "expression"
    return a, "text"


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


class Conversion:
    """Collects converted records and skip reasons; validates with the loader's own check; writes
    ``OUT/<split>.jsonl`` and ``OUT/manifest.json``."""

    def __init__(self, out: Path, name: str, source: dict[str, Any]):
        self.out, self.name, self.source = out, name, source
        self.records: dict[str, list[dict]] = {}
        self.skipped: dict[str, Counter] = {}
        self.notes: dict[str, Counter] = {}
        self.seen_ids: set[str] = set()
        self.t0 = time.time()

    def note(self, split: str, what: str) -> None:
        """Count a conversion detail that is not a drop (e.g. letter answers whose options stay inline)."""
        self.notes.setdefault(split, Counter())[what] += 1

    def skip(self, split: str, reason: str) -> None:
        self.skipped.setdefault(split, Counter())[reason] += 1

    def add(self, split: str, record: dict[str, Any]) -> None:
        from tgrl.rewards import check_gold

        if record["id"] in self.seen_ids:
            self.skip(split, "duplicate_id")
            return
        try:
            validate_record(record, self.out / f"{split}.jsonl", len(self.records.get(split, [])) + 1)
        except DataError as err:
            self.skip(split, f"invalid_{err.field or 'row'}")
            return
        reason = check_gold(record["answer"], record.get("choices"), record["answer_type"])
        if reason is not None:
            self.skip(split, "gold_unscorable")
            return
        self.seen_ids.add(record["id"])
        self.records.setdefault(split, []).append(record)

    def run(self, split: str, rows: Iterable[dict[str, Any]], convert, limit: int | None = None) -> None:
        """Convert ``rows`` with ``convert(row, index) -> record``; :class:`Skip` counts the reason."""
        self.records.setdefault(split, [])
        self.skipped.setdefault(split, Counter())
        for index, row in enumerate(rows):
            if limit is not None and len(self.records[split]) >= limit:
                break
            try:
                record = convert(row, index)
            except Skip as reason:
                self.skip(split, str(reason))
                continue
            self.add(split, record)

    def write(self, args: dict[str, Any]) -> dict[str, Any]:
        files = {}
        counts = {}
        for split, rows in self.records.items():
            if not rows:
                raise UserError(
                    f"{self.name} {split}: no row could be converted "
                    f"(skipped: {dict(self.skipped.get(split, {}))}). "
                    "Fix: check --input points at the dataset files"
                )
            path = self.out / f"{split}.jsonl"
            write_jsonl(path, rows)
            files[path.name] = sha256_file(path)
            skipped = dict(sorted(self.skipped.get(split, Counter()).items()))
            counts[split] = {
                "rows_in": len(rows) + sum(skipped.values()),
                "converted": len(rows),
                "skipped": skipped,
                "notes": dict(sorted(self.notes.get(split, Counter()).items())),
                "answer_type": dict(Counter(r["answer_type"] for r in rows)),
            }
        manifest = {
            "dataset": self.name,
            "source": self.source,
            "args": args,
            "counts": counts,
            "sha256": files,
            "wall_time_s": round(time.time() - self.t0, 3),
        }
        write_json(self.out / "manifest.json", manifest)
        return manifest
