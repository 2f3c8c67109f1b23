"""Procedurally generated visual-reasoning scenes for the tiny tier (docs/tiny_tier.md#2-the-task).

The design is the one measured to be learnable by a ~0.65M-parameter Qwen2.5-VL on a 2-core CPU in
minutes (docs/tiny_tier.md#3-why-this-task): 56x56 images, a 4x4 grid of 14-px cells (one cell is
one ViT patch), 1-9 red or blue objects (circle or square: shape is a distractor), and three question
types rotating evenly:

* ``sum``  "How many red objects plus blue objects are there?"  (with two colours: the total count,
  an unconditional readout and the easy shortcut subtask)
* ``diff`` "How many more {a} objects than {b} objects are there?"  (needs both counts; a >= b)
* ``cmp``  "Are there more {a} or {b} objects? Answer {a} or {b}."  (needs both counts; never tied)

``meta`` carries the scene ground truth (per-colour counts, object cells and shapes, question type and
colours), so the oracle teacher can write grounded reasoning and the facts a model states can be checked.

Counterfactual twins (:func:`make_twins`, ``<split>_twins`` splits): each held-out scene with twins that
change one visual fact while the question stays the same (one object removed, one recoloured) and a
control that moves one object (counts unchanged). A model whose stated facts come from the image must
change them exactly as the image changed (tgrl/evaluation/twins.py scores it): a measure no logit scale or
confidence can fake.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tgrl.utils import UserError, read_jsonl, sha256_file, write_json, write_jsonl

COLORS: dict[str, tuple[int, int, int]] = {"red": (220, 30, 30), "blue": (30, 70, 225)}
# The shifted held-out split draws the same scenes in shades no training image has (a darker, bluish red and
# a lighter blue): counting by colour must not lean on the exact training RGB values. Measured to be a shift
# the tiny model can still be scored on (models lose accuracy, they do not fall to zero; REPRODUCE.md), where
# an unseen shape (triangles, diamonds) or smaller objects read as empty cells to every model.
SHIFTED_COLORS: dict[str, tuple[int, int, int]] = {"red": (170, 40, 60), "blue": (40, 110, 200)}
COLOR_ORDER = ("red", "blue")  # the canonical order in which traces state the visual facts
SHAPES = ("circle", "square")
QTYPES = ("sum", "diff", "cmp")
GRID, CELL_PX = 4, 14
IMAGE_PX = GRID * CELL_PX
MAX_OBJECTS = 9
OBJECT_PX = 10  # drawn size inside a 14-px cell (2 px margin on each side)
BACKGROUND = (255, 255, 255)

QUESTION_TEMPLATES = {
    "sum": "How many {a} objects plus {b} objects are there?",
    "diff": "How many more {a} objects than {b} objects are there?",
    "cmp": "Are there more {a} or {b} objects? Answer {a} or {b}.",
}


@dataclass(frozen=True)
class SceneObject:
    row: int
    col: int
    color: str
    shape: str


def answer_for(qtype: str, a: str, b: str, counts: dict[str, int]) -> str:
    """The gold answer of a question about colours ``a`` and ``b`` given the per-colour counts."""
    if qtype == "sum":
        return str(counts[a] + counts[b])
    if qtype == "diff":
        return str(counts[a] - counts[b])
    if qtype == "cmp":
        return a if counts[a] > counts[b] else b
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QTYPES}")


def sample_scene(rng: random.Random, qtype: str) -> tuple[list[SceneObject], str, str]:
    """Draw objects and the two question colours so that the question is well posed.

    diff: the first-named colour has at least as many objects (answer >= 0); cmp: counts never tie.
    """
    while True:
        k = rng.randint(1, MAX_OBJECTS)
        cells = rng.sample(range(GRID * GRID), k)
        objects = [
            SceneObject(c // GRID, c % GRID, rng.choice(COLOR_ORDER), rng.choice(SHAPES))
            for c in sorted(cells)
        ]
        counts = Counter(o.color for o in objects)
        a, b = rng.sample(COLOR_ORDER, 2)
        if qtype == "diff" and counts[a] < counts[b]:
            a, b = b, a
        if qtype == "cmp" and counts[a] == counts[b]:
            continue
        return objects, a, b


def render_scene(objects: list[SceneObject], colors: dict[str, tuple[int, int, int]] = COLORS):
    """Draw the scene as a 56x56 RGB PIL image (exact colours, no anti-aliasing: pixels are checkable)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (IMAGE_PX, IMAGE_PX), BACKGROUND)
    draw = ImageDraw.Draw(image)
    margin = (CELL_PX - OBJECT_PX) // 2
    for o in objects:
        x0, y0 = o.col * CELL_PX + margin, o.row * CELL_PX + margin
        box = (x0, y0, x0 + OBJECT_PX - 1, y0 + OBJECT_PX - 1)
        if o.shape == "circle":
            draw.ellipse(box, fill=colors[o.color])
        else:
            draw.rectangle(box, fill=colors[o.color])
    return image


def make_record(
    idx: int, split: str, objects: list[SceneObject], qtype: str, a: str, b: str, image_rel: str
) -> dict[str, Any]:
    counts = {c: sum(o.color == c for o in objects) for c in COLOR_ORDER}
    return {
        "id": f"syn-{split}-{idx:06d}",
        "images": [image_rel],
        "question": QUESTION_TEMPLATES[qtype].format(a=a, b=b),
        "answer": answer_for(qtype, a, b, counts),
        "answer_type": "text" if qtype == "cmp" else "number",
        "choices": None,
        "source": "synthetic",
        "meta": {
            "qtype": qtype,
            "colors": list(COLOR_ORDER),
            "question_colors": [a, b],
            "counts": counts,
            "objects": [{"row": o.row, "col": o.col, "color": o.color, "shape": o.shape} for o in objects],
            "grid": GRID,
            "cell_px": CELL_PX,
        },
    }


def scene_key(objects: list[SceneObject], question: str) -> tuple:
    """Identity of an item (what the model sees): used to keep train and test disjoint."""
    return (tuple(objects), question)


def generate_split(
    split: str,
    n: int,
    seed: int,
    exclude: set[tuple] | None = None,
    qtypes: tuple[str, ...] = QTYPES,
    colors: dict[str, tuple[int, int, int]] = COLORS,
) -> list[tuple[dict[str, Any], Any]]:
    """``n`` (record, image) pairs; question types rotate evenly; items in ``exclude`` are redrawn.
    Each split name has its own random stream, so adding a split never changes another one."""
    rng = random.Random(f"tgrl-synthetic/{split}/{seed}")
    exclude = exclude if exclude is not None else set()
    out, seen = [], set()
    for idx in range(n):
        qtype = qtypes[idx % len(qtypes)]
        while True:
            objects, a, b = sample_scene(rng, qtype)
            key = scene_key(objects, QUESTION_TEMPLATES[qtype].format(a=a, b=b))
            if key not in exclude and key not in seen:
                break
        seen.add(key)
        rel = f"images/{split}/{idx:06d}.png"
        record = make_record(idx, split, objects, qtype, a, b, rel)
        if colors != COLORS:
            record["meta"]["rgb"] = {name: list(rgb) for name, rgb in colors.items()}
        out.append((record, render_scene(objects, colors)))
    return out


def record_key(record: dict[str, Any]) -> tuple:
    objects = [SceneObject(**o) for o in record["meta"]["objects"]]
    return scene_key(objects, record["question"])


# --- Counterfactual twins: one visual fact changed, the question fixed ---

TWIN_KINDS = ("remove", "recolor", "move")  # "source" marks the unchanged scene inside a twin split


def well_posed(qtype: str, a: str, b: str, counts: dict[str, int]) -> bool:
    """The question has one computable answer that the generator could have drawn: at least one object,
    diff non-negative (a >= b), cmp never tied."""
    if sum(counts.values()) < 1:
        return False
    if qtype == "diff":
        return counts[a] >= counts[b]
    if qtype == "cmp":
        return counts[a] != counts[b]
    return qtype == "sum"


def _counts(objects: list[SceneObject]) -> dict[str, int]:
    return {c: sum(o.color == c for o in objects) for c in COLOR_ORDER}


def twin_candidates(objects: list[SceneObject], kind: str) -> list[tuple[list[SceneObject], dict[str, Any]]]:
    """Every scene one ``kind`` edit away from ``objects``, each with what changed (sorted like the
    generator's objects, by cell)."""
    out = []
    if kind == "remove":
        for i, o in enumerate(objects):
            out.append((objects[:i] + objects[i + 1 :], {"cell": [o.row, o.col], "color": o.color}))
    elif kind == "recolor":
        for i, o in enumerate(objects):
            new = next(c for c in COLOR_ORDER if c != o.color)
            edited = [*objects[:i], SceneObject(o.row, o.col, new, o.shape), *objects[i + 1 :]]
            out.append((edited, {"cell": [o.row, o.col], "from": o.color, "to": new}))
    elif kind == "move":
        taken = {(o.row, o.col) for o in objects}
        free = [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in taken]
        for i, o in enumerate(objects):
            for r, c in free:
                rest = objects[:i] + objects[i + 1 :]
                edited = sorted([*rest, SceneObject(r, c, o.color, o.shape)], key=lambda x: (x.row, x.col))
                out.append((edited, {"from": [o.row, o.col], "to": [r, c], "color": o.color}))
    else:
        raise ValueError(f"unknown twin kind {kind!r}; expected one of {TWIN_KINDS}")
    return out


def make_twins(
    record: dict[str, Any], rng: random.Random, exclude: set[tuple] | None = None
) -> list[tuple[str, list[SceneObject], dict[str, Any]]]:
    """The twins of one scene record: (kind, objects, change) for each kind that has a well-posed edit
    (the question unchanged, its answer computable; see :func:`well_posed`) whose item is not in
    ``exclude``. A scene without such an edit of a kind (e.g. one object: nothing to remove) gets no twin
    of that kind. ``change`` says what was edited and the per-colour count ``delta`` (twin - source)."""
    meta = record["meta"]
    a, b = meta["question_colors"]
    objects = [SceneObject(**o) for o in meta["objects"]]
    before = _counts(objects)
    exclude = exclude if exclude is not None else set()
    out = []
    for kind in TWIN_KINDS:
        options = [
            (edited, change)
            for edited, change in twin_candidates(objects, kind)
            if well_posed(meta["qtype"], a, b, _counts(edited))
            and scene_key(edited, record["question"]) not in exclude
        ]
        if not options:
            continue
        edited, change = rng.choice(options)
        after = _counts(edited)
        change = {**change, "delta": {c: after[c] - before[c] for c in COLOR_ORDER}}
        out.append((kind, edited, change))
    return out


def twin_split(
    split: str,
    items: list[tuple[dict[str, Any], Any]],
    seed: int,
    exclude: set[tuple] | None = None,
    colors: dict[str, tuple[int, int, int]] = COLORS,
) -> list[tuple[dict[str, Any], Any]]:
    """The ``<split>_twins`` split of a held-out split's (record, image) items: each source scene (kind
    ``source``, its own image file) followed by its twins, every record's ``meta.twin`` = {"source": the
    source id, "kind", "change"}. Own random stream, so it never moves another split."""
    name = f"{split}_twins"
    rng = random.Random(f"tgrl-synthetic/{name}/{seed}")
    out = []
    for record, image in items:
        source_id = record["id"]
        out.append(
            ({**record, "meta": {**record["meta"], "twin": {"source": source_id, "kind": "source"}}}, image)
        )
        idx = int(source_id.rsplit("-", 1)[1])
        meta = record["meta"]
        a, b = meta["question_colors"]
        for kind, objects, change in make_twins(record, rng, exclude):
            twin = make_record(idx, name, objects, meta["qtype"], a, b, f"images/{name}/{idx:06d}_{kind}.png")
            twin["id"] = f"{source_id}-{kind}"
            if colors != COLORS:
                twin["meta"]["rgb"] = {n: list(rgb) for n, rgb in colors.items()}
            twin["meta"]["twin"] = {"source": source_id, "kind": kind, "change": change}
            out.append((twin, render_scene(objects, colors)))
    return out


# --- A dataset on disk (data_prep/make_synthetic.py) ---

GENERATOR_VERSION = 1


SPLITS = ("train", "val", "test", "shifted")
HELD_OUT = ("val", "test", "shifted")  # the splits that get twins


def build_dataset(
    out: Path,
    n_train: int,
    n_test: int,
    seed: int,
    force: bool = False,
    n_val: int = 0,
    n_shifted: int = 0,
    twins: bool = False,
) -> dict:
    """Write the splits (``OUT/<split>.jsonl`` + ``OUT/images/<split>/``) and ``OUT/manifest.json``
    (data_prep/make_synthetic.py). The same arguments give byte-identical files and a rerun is a no-op;
    other arguments into an existing folder need ``force``. ``twins``: also a ``<split>_twins`` split per
    held-out split (:func:`twin_split`); asked of a folder that holds the same dataset without them, it
    adds them and leaves every other file as it is. Returns the manifest."""
    args = {"n_train": n_train, "n_test": n_test, "seed": seed, "generator_version": GENERATOR_VERSION}
    if n_val or n_shifted:  # recorded only when asked for, so older manifests stay valid
        args.update(n_val=n_val, n_shifted=n_shifted)
    if twins:
        args["twins"] = True
    manifest_path = out / "manifest.json"
    only_twins = False
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("args") == args:
            print(f"[make_synthetic] {out} already holds this dataset (manifest matches); nothing to do")
            return old
        only_twins = twins and old.get("args") == {k: v for k, v in args.items() if k != "twins"}
        if not force and not only_twins:
            raise UserError(
                f"{out} holds a dataset made with {old.get('args')}; "
                "pass --force to replace it or choose another --out"
            )
    sizes = {"train": n_train, "val": n_val, "test": n_test, "shifted": n_shifted}
    if min(sizes.values()) < 0 or n_train + n_test == 0:
        raise UserError("--n-train/--n-val/--n-test/--n-shifted must be >= 0 and train + test not both 0")
    old_hashes = json.loads(manifest_path.read_text())["sha256"] if only_twins else {}
    manifest_path.unlink(missing_ok=True)  # the manifest is written last: its presence marks completion
    for split in (*SPLITS, *(f"{s}_twins" for s in HELD_OUT)):
        if only_twins and split in SPLITS:
            continue
        shutil.rmtree(out / "images" / split, ignore_errors=True)
        (out / f"{split}.jsonl").unlink(missing_ok=True)

    t0 = time.time()
    splits = {"train": generate_split("train", n_train, seed)}
    seen = {record_key(r) for r, _ in splits["train"]}
    # test before val: the test split is the one every earlier result used, and it stays identical
    for split in ("test", "val", "shifted"):
        if sizes[split] or split == "test":
            kwargs = {"colors": SHIFTED_COLORS} if split == "shifted" else {}
            splits[split] = generate_split(split, sizes[split], seed, exclude=set(seen), **kwargs)
            seen |= {record_key(r) for r, _ in splits[split]}
    if twins:  # a twin is never an item of another split (train included)
        for split in HELD_OUT:
            if splits.get(split):
                kwargs = {"colors": SHIFTED_COLORS} if split == "shifted" else {}
                splits[f"{split}_twins"] = twin_split(split, splits[split], seed, exclude=seen, **kwargs)
    counts, files = {}, {}
    order = [*SPLITS, *(f"{s}_twins" for s in HELD_OUT)]
    for split, items in ((name, splits[name]) for name in order if name in splits):
        if not (only_twins and split in SPLITS):
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            for record, image in items:
                if record["images"][0].startswith(f"images/{split}/"):  # twin splits reuse source images
                    image.save(out / record["images"][0], format="PNG", optimize=False)
            write_jsonl(out / f"{split}.jsonl", [r for r, _ in items])
        counts[split] = {
            "n": len(items),
            "qtype": dict(sorted(Counter(r["meta"]["qtype"] for r, _ in items).items())),
        }
        if split.endswith("_twins"):
            counts[split]["kind"] = dict(sorted(Counter(r["meta"]["twin"]["kind"] for r, _ in items).items()))
        files[f"{split}.jsonl"] = sha256_file(out / f"{split}.jsonl")
        if old_hashes.get(f"{split}.jsonl", files[f"{split}.jsonl"]) != files[f"{split}.jsonl"]:
            raise UserError(f"{out}/{split}.jsonl differs from its manifest hash. Fix: rebuild with --force")
    manifest = {
        "args": args,
        "qtypes": list(QTYPES),
        "counts": counts,
        "sha256": files,
        "note": "generated by data_prep/make_synthetic.py; splits pairwise disjoint by (image, question); "
        f"shifted: colours {SHIFTED_COLORS} (unseen in training)"
        + ("; <split>_twins: each held-out scene and its twins (tgrl.synthetic.twin_split)" if twins else ""),
    }
    write_json(manifest_path, manifest)
    written = ", ".join(f"{len(items)} {name}" for name, items in splits.items())
    print(f"[make_synthetic] wrote {written} items to {out} in {time.time() - t0:.1f}s")
    return manifest


SEALED_SPLITS = ("test", "shifted")


def build_sealed_splits(
    out: Path, source: Path, seed: int, n_test: int, n_shifted: int, n_twin_sources: int | None = None
) -> dict:
    """Sealed test and shifted splits (``OUT/test.jsonl``, ``OUT/shifted.jsonl`` + images +
    ``OUT/manifest.json``) from generator ``seed``, which no split of the ``source`` dataset used, and
    disjoint from every item of it (train, val, test, shifted). The protocol scores them once, after the
    selection is frozen (tgrl/sealing.py). Each also gets its counterfactual twin split
    (``OUT/<split>_twins.jsonl``, :func:`twin_split`) of its first ``n_twin_sources`` scenes (default: all);
    every JSONL file in OUT is sealed.
    Same arguments: byte-identical files, and a rerun is a no-op; other arguments need a new OUT."""
    source_manifest = source / "manifest.json"
    if not source_manifest.is_file():
        raise UserError(f"{source_manifest}: not found. Fix: build the dataset first (make_synthetic.py)")
    src = json.loads(source_manifest.read_text())
    if int(src["args"]["seed"]) == seed:
        raise UserError(
            f"sealed seed {seed} is the seed of {source} (its splits may have been scored): choose a new one"
        )
    args = {
        "seed": seed,
        "n_test": n_test,
        "n_shifted": n_shifted,
        "generator_version": GENERATOR_VERSION,
        "source_manifest_sha256": sha256_file(source_manifest),
        "twins": True,
    }
    if n_twin_sources is not None:  # absent from older manifests: their arguments still match
        args["n_twin_sources"] = n_twin_sources
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("args") == args:
            return old
        raise UserError(
            f"{out} holds sealed splits made with {old.get('args')}, not {args}. Fix: another folder (a "
            "sealed split is never regenerated in place)"
        )
    seen = {record_key(r) for split in SPLITS if (source / f"{split}.jsonl").is_file()
            for _, r in read_jsonl(source / f"{split}.jsonl")}  # fmt: skip
    counts, files = {}, {}
    for split, n in (("test", n_test), ("shifted", n_shifted)):
        kwargs = {"colors": SHIFTED_COLORS} if split == "shifted" else {}
        items = generate_split(f"sealed_{split}", n, seed, exclude=set(seen), **kwargs)
        seen |= {record_key(r) for r, _ in items}
        (out / "images" / f"sealed_{split}").mkdir(parents=True, exist_ok=True)
        for record, image in items:
            image.save(out / record["images"][0], format="PNG", optimize=False)
        write_jsonl(out / f"{split}.jsonl", [r for r, _ in items])
        counts[split] = {"n": len(items)}
        files[f"{split}.jsonl"] = sha256_file(out / f"{split}.jsonl")
        # the grounding measures' counterfactual twins of the sealed split (the protocol scores them with it)
        twins = twin_split(f"sealed_{split}", items[:n_twin_sources], seed, exclude=seen, **kwargs)
        seen |= {record_key(r) for r, _ in twins}
        (out / "images" / f"sealed_{split}_twins").mkdir(parents=True, exist_ok=True)
        for record, image in twins:
            if record["meta"]["twin"]["kind"] != "source":
                image.save(out / record["images"][0], format="PNG", optimize=False)
        write_jsonl(out / f"{split}_twins.jsonl", [r for r, _ in twins])
        counts[f"{split}_twins"] = {"n": len(twins)}
        files[f"{split}_twins.jsonl"] = sha256_file(out / f"{split}_twins.jsonl")
    manifest = {
        "args": args,
        "counts": counts,
        "sha256": files,
        "note": f"sealed splits (tgrl/sealing.py), disjoint from every split of {source}",
    }
    write_json(manifest_path, manifest)
    return manifest


# --- Independent checks (used by tests and analysis; they do not read the generator's bookkeeping) ---


def count_colors_from_pixels(image, colors: dict[str, tuple[int, int, int]] = COLORS) -> dict[str, int]:
    """Count objects per colour by reading each cell's centre pixel of a rendered scene."""
    rgb = image.convert("RGB")
    counts = dict.fromkeys(COLOR_ORDER, 0)
    for row in range(GRID):
        for col in range(GRID):
            px = rgb.getpixel((col * CELL_PX + CELL_PX // 2, row * CELL_PX + CELL_PX // 2))
            for name, ref in colors.items():
                if sum(abs(p - r) for p, r in zip(px, ref, strict=True)) < 60:
                    counts[name] += 1
    return counts
