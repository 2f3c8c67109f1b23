"""Validate problem JSONL files against the schema (docs/design.md#41-problems) before spending compute on
them.

    python data_prep/validate_data.py data/synthetic/train.jsonl [more.jsonl ...] [--no-images]

Checks every row (fields, types, answer/choices consistency, unique ids) and that every image exists
and decodes. On the first bad row it prints ``error: FILE:LINE: field 'X': problem. Fix: ...`` and
exits with code 2; otherwise it prints counts per answer type, source and question type.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tgrl.data import describe, load_problems
from tgrl.utils import cli


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--no-images", action="store_true", help="skip opening the images (faster)")
    args = parser.parse_args(argv)
    for path in args.files:
        problems = load_problems(path, check_images=not args.no_images)
        print(f"{path}: OK {json.dumps(describe(problems))}")


if __name__ == "__main__":
    main()
