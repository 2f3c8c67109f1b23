"""Generate the synthetic visual-reasoning scenes (tiny tier): images + problem JSONL + manifest.

    python data_prep/make_synthetic.py --out data/synthetic --n-train 3000 --n-val 1000 --n-test 1000 \
        --n-shifted 1000 --seed 0

Splits (schema: tgrl.data), each ``OUT/<split>.jsonl`` with ``OUT/images/<split>/*.png``:

* ``train``: RL prompts, teacher trajectories and SFT data;
* ``val``: the same distribution, disjoint from train and test: every tuning choice is made on it;
* ``test``: the same distribution, disjoint from train: touched once, for the final table;
* ``shifted``: a controlled shift the tiny model can still be measured on: the same kind of scenes drawn
  in colour shades no training image has (tgrl.synthetic.SHIFTED_COLORS), so counting by colour must not
  lean on the exact training RGB values. Same question types, layouts and count ranges.
* ``<split>_twins`` (``--twins``; one per held-out split: val, test, shifted): each scene of the split
  (``meta.twin.kind: source``, its own image) followed by its counterfactual twins, the question unchanged:
  ``remove`` (one object removed), ``recolor`` (one object recoloured) and ``move`` (one object moved to an
  empty cell: the control, counts unchanged). ``meta.twin.change`` says what changed, with the per-colour
  count ``delta``. A twin keeps the question well posed (at least one object, diff >= 0, cmp never tied) and
  is no item of any other split; a scene without such an edit of a kind has no twin of that kind. Scored by
  the tiny suite's twin tasks (tgrl/evaluation/twins.py). Added to an existing folder of the same dataset,
  ``--twins`` writes only the twin splits.

``OUT/manifest.json`` holds the arguments, counts per split and question type, and file hashes. The same
arguments give byte-identical output; no two splits share an (image, question) item. Each split has its
own random stream, so train and test are the same as before val and shifted existed. Rerunning with the
same arguments is a no-op; different arguments into an existing folder need ``--force``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tgrl.synthetic import build_dataset
from tgrl.utils import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-val", type=int, default=0, help="validation split (tuning); same distribution")
    parser.add_argument("--n-shifted", type=int, default=0, help="shifted test split (unseen object shape)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--twins", action="store_true", help="also write the counterfactual twin split of each held-out split"
    )
    parser.add_argument("--force", action="store_true", help="replace a dataset made with other arguments")
    return parser


@cli
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    manifest = build_dataset(
        args.out,
        args.n_train,
        args.n_test,
        args.seed,
        args.force,
        n_val=args.n_val,
        n_shifted=args.n_shifted,
        twins=args.twins,
    )
    print(json.dumps(manifest["counts"], indent=None))


if __name__ == "__main__":
    main()
