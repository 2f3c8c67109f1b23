"""Convert Geometry3K (hiyouga/geometry3k: 2,101 train / 300 validation / 601 test) into our problem schema.

    python data_prep/convert_geometry3k.py --input /data/geometry3k --out data/geometry3k   # a local copy
    python data_prep/convert_geometry3k.py --hub --out data/geometry3k                      # needs hub access

Free-form answers by default (as EasyR1 and NoisyRollout train), ``--answer-format choice`` for options
and letter; rows that cannot be converted are counted in ``OUT/manifest.json`` (docs/design.md#41-problems).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tgrl.converters import (
    Conversion,
    Skip,
    add_source_arguments,
    clean_gold,
    find_data_files,
    read_all_rows,
    resolve_source,
    store_image,
    strip_image_tags,
    unbox,
)
from tgrl.utils import cli

DEFAULT_HUB_ID = "hiyouga/geometry3k"
SPLITS = ("train", "validation", "test")


def convert_row(row: dict, index: int, source_root: Path, out: Path, split: str, answer_format: str) -> dict:
    rid = row.get("id")
    rid = f"geometry3k-{split}-{rid if rid not in (None, '') else index}"
    problem = row.get("problem") if row.get("problem") is not None else row.get("question")
    if not isinstance(problem, str) or not problem.strip():
        raise Skip("empty_question")
    images = row.get("images") if row.get("images") is not None else row.get("image")
    if images is None or (isinstance(images, list) and not images):
        raise Skip("no_image")
    if not isinstance(images, list):
        images = [images]
    stem = rid.replace("/", "_")
    paths = [
        store_image(im, source_root, out, f"images/{split}", f"{stem}-{k}") for k, im in enumerate(images)
    ]
    question, _ = strip_image_tags(problem)
    meta: dict = {"split": split}
    if answer_format == "choice":
        choices, letter = row.get("choices"), row.get("ground_truth")
        if not choices or not isinstance(letter, str) or not letter.strip():
            raise Skip("no_choices_for_choice_format")
        choices = [str(c) for c in choices]
        letter = letter.strip().upper()
        if len(letter) != 1 or not 0 <= ord(letter) - 65 < len(choices):
            raise Skip("ground_truth_not_an_option_letter")
        answer, answer_type = letter, "choice"
        if row.get("answer"):
            meta["free_form_answer"] = unbox(str(row["answer"]))
    else:
        if not isinstance(row.get("answer"), str) or not row["answer"].strip():
            raise Skip("empty_answer")
        answer = unbox(row["answer"])
        if not answer:
            raise Skip("empty_answer")
        (answer, answer_type), choices = clean_gold(answer), None
        if row.get("choices"):
            meta["choices"] = [str(c) for c in row["choices"]]
            meta["ground_truth"] = row.get("ground_truth")
    return {
        "id": rid,
        "images": paths,
        "question": question,
        "answer": answer,
        "answer_type": answer_type,
        "choices": choices,
        "source": "geometry3k",
        "meta": meta,
    }


@cli
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_source_arguments(parser, DEFAULT_HUB_ID)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--answer-format", choices=["free", "choice"], default="free")
    args = parser.parse_args(argv)

    root = resolve_source(args.input, args.hub, args.revision, args.cache_dir)
    folder = root if root.is_dir() else root.parent
    conv = Conversion(
        args.out, "Geometry3K", {"hub_id": args.hub, "revision": args.revision, "input": str(root)}
    )
    splits = args.splits
    if root.is_file():  # one file holds one split: the one its name says, else train
        splits = [next((s for s in SPLITS if s in root.name), "train")]
    for split in splits:
        files = find_data_files(root, split) if root.is_dir() else [root]
        if root.is_dir() and not any(split in f.name for f in files):
            continue  # this copy has no such split
        conv.run(
            split,
            read_all_rows(files),
            lambda row, i, split=split: convert_row(row, i, folder, args.out, split, args.answer_format),
            args.limit,
        )
    manifest = conv.write({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    for split, c in manifest["counts"].items():
        print(
            f"[geometry3k] {split}: {c['converted']}/{c['rows_in']} rows -> {args.out}/{split}.jsonl; "
            f"skipped {c['skipped']}"
        )
    return manifest


if __name__ == "__main__":
    main()

# Expected on hiyouga/geometry3k: train 2101, validation 300, test 601 converted; see manifest counts.
