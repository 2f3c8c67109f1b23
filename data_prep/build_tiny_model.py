"""Build the tiny Qwen2.5-VL checkpoint (tokenizer + processor + random-init model) from code alone.

    python data_prep/build_tiny_model.py --out checkpoints/tiny-init --size S --seed 0

The folder is a standard Hugging Face checkpoint: ``AutoProcessor.from_pretrained`` and
``AutoModelForImageTextToText.from_pretrained`` load it with no project import. Seeded and
deterministic; rerunning with the same arguments into an existing folder is a no-op.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tgrl.tiny import SIZES, build_tiny_checkpoint
from tgrl.utils import UserError, cli, set_torch_threads, write_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("checkpoints/tiny-init"))
    parser.add_argument("--size", default="S", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder holds this build")
    return parser


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_torch_threads(1)
    stamp = args.out / "tgrl_build.json"
    wanted = {"size": args.size, "seed": args.seed}
    if stamp.exists() and not args.force:
        old = json.loads(stamp.read_text())
        if {k: old.get(k) for k in wanted} == wanted:
            print(f"[build_tiny_model] {args.out} already built ({old['n_params']:,} params); nothing to do")
            return
        raise UserError(f"{args.out} holds a build with {old}; pass --force or choose another --out")
    info = build_tiny_checkpoint(args.out, args.size, args.seed)
    write_json(stamp, info)  # written last: marks a complete build
    print(
        f"[build_tiny_model] saved {info['n_params']:,}-parameter Qwen2.5-VL "
        f"(vision {info['n_params_vision']:,}), vocab {info['vocab_size']} to {args.out}"
    )


if __name__ == "__main__":
    main()
