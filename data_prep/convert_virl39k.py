"""Convert ViRL39K (TIGER-Lab/ViRL39K, 38,870 verifiable QAs) into our problem schema.

    python data_prep/convert_virl39k.py --input /data/ViRL39K --out data/virl39k     # a local copy
    python data_prep/convert_virl39k.py --hub TIGER-Lab/ViRL39K --out data/virl39k   # needs hub access

Reads the release (``39Krelease.parquet`` + ``images.zip``, unpacked once) or re-uploads with embedded
images; answer types, choices and the ``meta`` kept (pass rates, to select by difficulty):
docs/design.md#41-problems.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tgrl.converters import (
    Conversion,
    Skip,
    add_source_arguments,
    clean_gold,
    extract_zips,
    find_data_files,
    read_all_rows,
    resolve_source,
    split_inline_choices,
    store_image,
    strip_image_tags,
    unbox,
)
from tgrl.utils import cli

DEFAULT_HUB_ID = "TIGER-Lab/ViRL39K"


def convert_row(row: dict, index: int, source_root: Path, out: Path, split: str, conv: Conversion) -> dict:
    qid = row.get("qid") if row.get("qid") not in (None, "") else row.get("id", index)
    rid = f"virl39k-{qid}"
    question = row.get("question") if row.get("question") is not None else row.get("problem")
    if not isinstance(question, str) or not question.strip():
        raise Skip("empty_question")
    answer = row.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise Skip("empty_answer")
    images = row.get("image") if row.get("image") is not None else row.get("images")
    if images is None or (isinstance(images, list) and not images):
        raise Skip("no_image")
    if not isinstance(images, list):
        images = [images]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(qid))
    paths = [
        store_image(im, source_root, out, f"images/{split}", f"{safe}-{k}") for k, im in enumerate(images)
    ]
    question, n_tags = strip_image_tags(question)
    if n_tags and n_tags != len(paths):
        conv.note(split, "image_tag_count_differs")
    gold = unbox(answer)
    if not gold:
        raise Skip("empty_answer")
    choices = None
    gold, answer_type = clean_gold(gold)
    letter = gold.strip("() .").upper()
    if len(letter) == 1 and letter.isalpha():
        parsed = split_inline_choices(question)
        if parsed is not None and ord(letter) - 65 < len(parsed[1]):
            question, choices = parsed
            gold, answer_type = letter, "choice"
        else:
            conv.note(split, "letter_answer_options_left_inline")
            answer_type = "text"
    meta = {
        k: row.get(src)
        for k, src in (
            ("category", "category"),
            ("origin", "source"),
            ("pass_rate_32b_trained", "PassRate_32BTrained"),
            ("pass_rate_7b_base", "PassRate_7BBase"),
            ("qid", "qid"),
        )
        if row.get(src) is not None
    }
    return {
        "id": rid,
        "images": paths,
        "question": question,
        "answer": gold,
        "answer_type": answer_type,
        "choices": choices,
        "source": "virl39k",
        "meta": meta,
    }


@cli
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_source_arguments(parser, DEFAULT_HUB_ID)
    parser.add_argument("--image-root", type=Path, default=None, help="folder image paths are relative to")
    parser.add_argument("--split", default="train", help="ViRL39K has one split: train")
    args = parser.parse_args(argv)

    root = resolve_source(args.input, args.hub, args.revision, args.cache_dir)
    folder = root if root.is_dir() else root.parent
    extract_zips(folder)
    files = find_data_files(root)
    source_root = args.image_root or folder
    conv = Conversion(
        args.out,
        "ViRL39K",
        {"hub_id": args.hub, "revision": args.revision, "input": str(root), "files": [str(f) for f in files]},
    )
    conv.run(
        args.split,
        read_all_rows(files),
        lambda row, i: convert_row(row, i, source_root, args.out, args.split, conv),
        args.limit,
    )
    manifest = conv.write({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    c = manifest["counts"][args.split]
    print(
        f"[virl39k] {c['converted']}/{c['rows_in']} rows -> {args.out}/{args.split}.jsonl; "
        f"skipped {c['skipped']}"
    )
    return manifest


if __name__ == "__main__":
    main()

# Expected on the full release: ~38,870 rows in, nearly all converted; see manifest counts.skipped.
