"""The trajectory report: one static HTML page that shows which tokens of a reasoning lean on the image.

Why: the grounding numbers (tgrl/grounding.py, the trainer's ``vis_dep/*``) say *how much* a model's
reasoning depends on the image; a person also needs to *see* it, token by token, next to the image, for
expert trajectories (with the filter's decision and the token weights w_t), training rollouts and
evaluation responses alike.

Inputs (``--input [LABEL=]PATH``, the kind is recognised from the rows):

* ``eval``: an evaluation's per-sample outputs, a results folder of ``eval/run_lmms_eval.py`` (or its
  ``samples.jsonl``). s_t comes from the ``grounding`` field that ``--visual-dependency`` writes. On a
  counterfactual twin split (``meta.twin``, make_synthetic --twins) each shown twin is drawn beside its
  source scene, same method and response: the two images, the two reasoning texts, what changed and
  whether the stated facts tracked it (tgrl/evaluation/twins.py).
* ``teacher``: a teacher trajectory file, ``trajectories.jsonl`` or the filter's
  ``trajectories.filtered.jsonl`` (``kept`` / ``reject_reason``), joined with its problems by id.
* ``training``: a training run's ``completions.jsonl`` (``log_completions_every``; or the run folder),
  with the s_t and w_t the trainer's token pass computed at that step.

Samples without s_t are scored with ``--model`` (tgrl.grounding.score_texts: the trainer's perturbation
and s_t, no sampling), and expert trajectories also get w_t from :func:`tgrl.token_weights.
expert_token_weights` with the checkpoint's recorded TGRL settings (or the trainer's defaults). Without a
model such samples show their text uncoloured.

The page is self-contained (images inlined as data URIs, CSS and plain JS inline, no network). It holds at
most ``max_samples`` samples, drawn per input with a seeded RNG when there are more, and says so. Tokens are
coloured by bins of s_t (or w_t); filters (method, kind, correct / incorrect) and sorting (most / least
grounded: the mean s_t of the reasoning tokens) run in the page. The file is written atomically, and only
after every input has been read and checked: a bad input leaves nothing behind.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tgrl.grounding import HIGH_S, regions, summarize
from tgrl.utils import REPO_ROOT, UserError, atomic_write_text, read_jsonl

KINDS = ("eval", "teacher", "training")
# s_t bin edges (bin k holds s in [EDGES[k-1], EDGES[k])): fine near 0 where most tokens are, HIGH_S marked
S_EDGES = (0.01, 0.05, 0.1, HIGH_S, 0.35, 0.6, 1.0, 2.0, 4.0)
S_COLOURS = (
    "transparent", "#fff3d6", "#ffe1a8", "#ffc878", "#ffa94d", "#ff8a3d", "#f5642a", "#e0401f", "#c0201a",
    "#8f0f14",
)  # fmt: skip
# w_t bins (mean 1 over an expert trajectory's kept tokens): below / around / above the mean
W_EDGES = (0.25, 0.75, 0.95, 1.05, 1.25, 1.5, 2.0)
W_COLOURS = ("#5b5b5b", "#9a9a9a", "#d9e6f7", "transparent", "#cfe0ff", "#9fc0ff", "#5c8fff", "#1f4fd6")
IMAGE_SIDE = 256  # thumbnails: the page stays small for thousands of samples


@dataclass
class Sample:
    """One shown text with everything the page prints about it; ``where`` names its file and row."""

    method: str
    kind: str  # eval | teacher | training (rollout or expert slot)
    where: str
    id: str
    text: str
    question: str = ""
    gold: str | None = None
    image_paths: list[str] = field(default_factory=list)
    tokens: list[str] | None = None  # token pieces; None: from the tokenizer (token_ends) when scored
    s: list[float] | None = None
    w: list[float] | None = None
    reward: float | None = None
    correct: bool | None = None
    fact_acc: float | None = None
    decision: str | None = None  # filter: kept / rejected: <reason>
    expert: bool = False
    step: int | None = None
    twin: dict[str, Any] | None = None  # meta.twin of a twin split's row: source id, kind, change
    response: int = 0  # index j of the response among the document's k
    answer_type: str | None = None


# --------------------------------------------------------------------------------------------------
# reading inputs


def detect_kind(row: dict[str, Any]) -> str | None:
    """The input kind a row belongs to, from its fields (None: not a file this report reads)."""
    if "doc_id" in row and ("resps" in row or "filtered_resps" in row):
        return "eval"
    if "step" in row and "text" in row and "is_expert" in row:
        return "training"
    if "text" in row and "id" in row and ("teacher" in row or "kept" in row or "sample_idx" in row):
        return "teacher"
    return None


def resolve_input(path: Path) -> Path:
    """A results folder -> its samples.jsonl, a training run folder -> its completions.jsonl."""
    if path.is_dir():
        for name in ("samples.jsonl", "completions.jsonl"):
            if (path / name).is_file():
                return path / name
        raise UserError(
            f"{path}: folder without samples.jsonl (an evaluation's results) or completions.jsonl (a "
            "training "
            "run with log_completions_every > 0). Fix: pass one of those files"
        )
    if not path.is_file():
        raise UserError(f"{path}: input not found")
    return path


def _existing(candidates: Sequence[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def default_problems(path: Path, kind: str) -> Path | None:
    """The problem file an input was built from, where its folder records it: the filter's manifest
    (``run_key.inputs.data.path``) for teacher trajectories, the run config's ``train_file`` for a run."""
    folder = path.parent
    recorded: str | None = None
    if kind == "teacher" and (folder / "manifest.json").is_file():
        manifest = json.loads((folder / "manifest.json").read_text())
        recorded = ((manifest.get("run_key") or {}).get("inputs") or {}).get("data", {}).get("path")
    if kind == "training" and (folder / "run_config.json").is_file():
        resolved = json.loads((folder / "run_config.json").read_text()).get("resolved") or {}
        recorded = next((v["train_file"] for v in resolved.values() if "train_file" in (v or {})), None)
    if not recorded:
        return None
    return _existing([Path(recorded), folder / recorded, REPO_ROOT / recorded])


def load_problem_index(paths: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """id -> {question, answer, image_paths, meta} from problem JSONL files (images not opened here)."""
    from tgrl.data import load_problems

    index: dict[str, dict[str, Any]] = {}
    for path in paths:
        for p in load_problems(path, check_images=False):
            index[p.id] = {
                "question": p.question,
                "answer": p.answer,
                "image_paths": p.image_paths,
                "meta": p.meta,
                "where": str(path),
            }
    return index


def _responses(sample: dict[str, Any]) -> list[str]:
    from tgrl.evaluation.tasks import responses_of

    return responses_of(sample.get("filtered_resps") or sample.get("resps") or [])


def _doc_images(doc: dict[str, Any]) -> list[str] | None:
    if "images_json" in doc:
        return list(json.loads(doc["images_json"]) or [])
    images = doc.get("images")
    if isinstance(images, list) and all(isinstance(i, str) for i in images):
        return images
    return None


def _eval_method(path: Path, label: str | None) -> str:
    if label:
        return label
    results = path.parent / "results.json"
    if results.is_file():
        rows = json.loads(results.read_text()).get("summary_rows") or []
        if rows and rows[0].get("method"):
            return str(rows[0]["method"])
    return path.parent.name


def read_input(
    path: Path, label: str | None, problems: dict[str, dict[str, Any]], kind: str | None = None
) -> list[Sample]:
    """Every sample of one input file (rows checked: a row of another kind, an empty completion or a
    problem that cannot be found is a :class:`UserError` naming the file and row)."""
    rows = list(read_jsonl(path))
    if not rows:
        raise UserError(f"{path}: no rows")
    kind = kind or detect_kind(rows[0][1])
    if kind not in KINDS:
        line, row = rows[0]
        raise UserError(
            f"{path}:{line}: not a file this report reads (fields: {sorted(row)[:12]}). It reads an "
            "evaluation's samples.jsonl (doc_id, resps), a teacher trajectory file (id, text, teacher) or a "
            "training run's completions.jsonl (step, text, is_expert)"
        )
    out: list[Sample] = []
    for line, row in rows:
        where = f"{path}:{line}"
        if detect_kind(row) != kind:
            raise UserError(
                f"{where}: row is not a {kind} row like the file's first (fields: {sorted(row)[:12]})"
            )
        out.extend(_samples_of_row(kind, row, where, path, label, problems))
    return out


def _problem(problems: dict[str, dict[str, Any]], pid: str, where: str) -> dict[str, Any]:
    if pid not in problems:
        raise UserError(
            f"{where}: problem {pid!r} not in the problem files. Fix: pass the problem JSONL it was built "
            "from with --problems"
        )
    return problems[pid]


def _samples_of_row(
    kind: str, row: dict[str, Any], where: str, path: Path, label: str | None, problems: dict[str, dict]
) -> list[Sample]:
    if kind == "eval":
        doc = row.get("doc") or {}
        pid = str(doc.get("id", row["doc_id"]))
        images = _doc_images(doc)
        question = str(doc.get("question") or row.get("input") or "")
        if images is None:
            problem = _problem(problems, pid, where)
            images, question = problem["image_paths"], question or problem["question"]
        responses = _responses(row)
        records = row.get("grounding") or [None] * len(responses)
        method = _eval_method(path, label)
        twin = json.loads(doc.get("meta_json") or "{}").get("twin")
        samples = []
        for j, (text, record) in enumerate(zip(responses, records, strict=False)):
            correct = (record or {}).get("correct")
            if correct is None and len(responses) == 1 and "acc" in row:
                correct = float(row["acc"]) >= 1.0
            samples.append(
                Sample(
                    method=method,
                    kind="eval",
                    where=where + (f" response {j + 1}" if len(responses) > 1 else ""),
                    id=pid,
                    text=text,
                    question=question,
                    gold=str(row.get("target", doc.get("answer", ""))),
                    image_paths=list(images),
                    tokens=_pieces(text, record["token_ends"]) if record else None,
                    s=list(record["s"]) if record else None,
                    correct=correct,
                    reward=None if correct is None else float(correct),
                    fact_acc=row.get("fact_acc") if len(responses) == 1 else None,
                    twin=twin,
                    response=j,
                    answer_type=doc.get("answer_type"),
                )
            )
        return samples
    pid = str(row["id"])
    problem = _problem(problems, pid, where)
    common = {
        "id": pid,
        "where": where,
        "text": str(row["text"]),
        "question": problem["question"],
        "gold": str(problem["answer"]),
        "image_paths": list(problem["image_paths"]),
    }
    if kind == "teacher":
        from tgrl.teachers.oracle import fact_accuracy

        reward = row.get("reward")
        decision = None
        if "kept" in row:
            decision = "kept" if row["kept"] else f"rejected: {row.get('reject_reason') or 'unknown'}"
        return [
            Sample(
                method=label or f"expert ({row.get('teacher', 'teacher')})",
                kind="teacher",
                reward=reward,
                correct=None if reward is None else float(reward) >= 1.0,
                fact_acc=fact_accuracy(row["text"], problem["meta"]),
                decision=decision,
                expert=True,
                **common,
            )
        ]
    accuracy = row.get("accuracy")
    return [
        Sample(
            method=label or path.parent.name,
            kind="training",
            tokens=list(row["tokens"]) if row.get("tokens") else None,
            s=row.get("s"),
            w=row.get("w"),
            reward=row.get("reward"),
            correct=None if accuracy is None else float(accuracy) >= 1.0,
            fact_acc=row.get("fact_accuracy"),
            expert=bool(row["is_expert"]),
            step=int(row["step"]),
            **common,
        )
    ]


def _pieces(text: str, ends: Sequence[int]) -> list[str]:
    out, start = [], 0
    for end in ends:
        out.append(text[start:end])
        start = end
    return out


def check_samples(samples: Sequence[Sample], skip_empty: bool) -> list[Sample]:
    """Empty completions are an error naming file and row (or left out with ``skip_empty``); images
    must exist. Returns the samples kept."""
    kept = []
    for sample in samples:
        if not sample.text.strip():
            if skip_empty:
                continue
            raise UserError(
                f"{sample.where}: empty completion (id {sample.id}). Fix: check the file, or pass "
                "--skip-empty to leave such rows out"
            )
        if not sample.image_paths:
            raise UserError(f"{sample.where}: no image for problem {sample.id}; the report shows the image")
        for image in sample.image_paths:
            if not Path(image).is_file():
                raise UserError(
                    f"{sample.where}: image {image} not found (problem {sample.id}). Fix: run from the "
                    "folder the paths are relative to, or pass the problem JSONL with --problems"
                )
        kept.append(sample)
    return kept


def cap_samples(samples: list[Sample], max_samples: int, seed: int) -> tuple[list[Sample], int]:
    """At most ``max_samples``, shared equally by the (method, kind) groups (a group smaller than its share
    gives the rest to the others), drawn with ``seed``; file order kept. Returns (shown, total)."""
    total = len(samples)
    if total <= max_samples:
        return samples, total
    groups: dict[tuple[str, str], list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault((sample.method, sample.kind), []).append(i)
    quota, left, todo = {}, max_samples, sorted(groups, key=lambda k: len(groups[k]))
    for n, key in enumerate(todo):  # smallest first: each takes its fair share of what is left
        quota[key] = min(len(groups[key]), left // (len(todo) - n))
        left -= quota[key]
    rng = random.Random(seed)
    chosen = [i for key in sorted(groups) for i in rng.sample(groups[key], quota[key])]
    return [samples[i] for i in sorted(chosen)], total


def twin_source_key(sample: Sample) -> tuple | None:
    """(method, source id, response) of a twin split's sample: a twin and its source share it."""
    if sample.twin is None:
        return None
    return (sample.method, str(sample.twin["source"]), sample.response)


def add_twin_sources(shown: list[Sample], every: Sequence[Sample]) -> list[Sample]:
    """``shown`` plus the source scene of every shown twin that the cap left out, so each twin can be drawn
    beside its source (file order kept)."""
    sources = {twin_source_key(s): s for s in every if s.twin and s.twin["kind"] == "source"}
    have = {id(s) for s in shown}
    needed = {
        id(src): src
        for s in shown
        if s.twin and s.twin["kind"] != "source" and (src := sources.get(twin_source_key(s))) is not None
    }
    extra = [src for key, src in needed.items() if key not in have]
    order = {id(s): i for i, s in enumerate(every)}
    return sorted([*shown, *extra], key=lambda s: order.get(id(s), -1))


def twin_verdict(source: Sample, twin: Sample) -> str:
    """What changed between a scene and its twin, and whether the stated facts and answer followed."""
    from tgrl.evaluation.twins import answer_tracks, invariant, tracks, twin_record

    meta = {"twin": {"source": source.id, "kind": "source"}}
    a = twin_record(meta, source.gold or "", source.answer_type or "number", [source.text])
    b = twin_record({"twin": twin.twin}, twin.gold or "", twin.answer_type or "number", [twin.text])
    change = twin.twin.get("change") or {}
    delta = ", ".join(f"{c} {d:+d}" for c, d in (change.get("delta") or {}).items())
    kind = twin.twin["kind"]
    if kind == "move":
        said = "stated facts and answer unchanged" if invariant(a, b, 0) else "stated facts or answer changed"
        return f"move (control: counts unchanged): {said}"
    verdict = "stated facts tracked the change" if tracks(a, b, 0) else "stated facts did not track it"
    if source.gold != twin.gold:
        verdict += "; answer " + (
            "moved as the gold did" if answer_tracks(a, b, 0) else "did not follow the gold"
        )
    return f"{kind} ({delta}): {verdict}"


# --------------------------------------------------------------------------------------------------
# scoring samples without s_t (a checkpoint)


def weight_settings(checkpoint: str) -> dict[str, Any]:
    """The token-weight settings w_t is computed with: the checkpoint's recorded TGRLConfig (a TGRL run)
    or the trainer's defaults."""
    from tgrl.trainer import TGRLConfig

    names = ("expert_token_weight", "vis_dep_alpha", "vis_topk_rho", "entropy_topk_frac", "trust_region_tau")
    names += ("p_min", "perturb_mode", "perturb_prob", "expert_ratio")
    defaults = {f.name: f.default for f in TGRLConfig.__dataclass_fields__.values() if f.name in names}
    recorded: dict[str, Any] = {}
    config = Path(checkpoint) / "run_config.json"
    if config.is_file():
        resolved = json.loads(config.read_text()).get("resolved") or {}
        recorded = {k: v for k, v in (resolved.get("TGRLConfig") or {}).items() if k in names}
    out = {**defaults, **{k: v for k, v in recorded.items() if v is not None}}
    if out.get("p_min") is None:
        out["p_min"] = 1e-4 if out["expert_ratio"] in ("shaped", "raw_p") else 0.0
    return out


def score_samples(samples: Sequence[Sample], checkpoint: str, seed: int, batch_size: int = 16) -> None:
    """Fill s_t (and w_t for expert trajectories) of the samples that lack them with one clean and one
    perturbed teacher-forced pass of ``checkpoint`` (tgrl.grounding.score_texts)."""
    todo = [s for s in samples if s.s is None]
    if not todo:
        return
    import torch

    from tgrl.grounding import GroundingSpec, score_texts
    from tgrl.modeling import load_model_and_processor
    from tgrl.token_weights import expert_token_weights

    settings = weight_settings(checkpoint)
    model, processor = load_model_and_processor(checkpoint)
    from PIL import Image

    spec = GroundingSpec(settings["perturb_mode"], float(settings["perturb_prob"]))
    images = [[Image.open(p).convert("RGB") for p in s.image_paths] for s in todo]
    records = score_texts(
        model,
        processor,
        [s.question for s in todo],
        images,
        [s.text for s in todo],
        spec,
        seed,
        batch_size=batch_size,
        keep_logp=True,
    )
    for sample, record in zip(todo, records, strict=True):
        sample.tokens, sample.s = _pieces(sample.text, record["token_ends"]), record["s"]
        if sample.expert:
            n = len(record["s"])
            w, _ = expert_token_weights(
                settings["expert_token_weight"],
                mask=torch.ones(1, n, dtype=torch.bool),
                p=torch.tensor([record["logp"]]).exp(),
                s=torch.tensor([record["s"]]),
                alpha=float(settings["vis_dep_alpha"]),
                rho=float(settings["vis_topk_rho"]),
                entropy_top=float(settings["entropy_topk_frac"]),
                trust_tau=float(settings["trust_region_tau"]),
                p_min=float(settings["p_min"]),
            ) if settings["expert_token_weight"] != "entropy_topk" else (None, None)  # fmt: skip
            sample.w = None if w is None else [round(v, 4) for v in w[0].tolist()]


# --------------------------------------------------------------------------------------------------
# rendering


def _bin(value: float, edges: Sequence[float]) -> int:
    return next((k for k, edge in enumerate(edges) if value < edge), len(edges))


def image_uri(path: str, cache: dict[str, str]) -> str:
    """A small data URI of an image (thumbnail, PNG or JPEG whichever is smaller), once per path."""
    if path not in cache:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
            best = b""
            for fmt, kwargs in (("PNG", {"optimize": True}), ("JPEG", {"quality": 85})):
                buf = io.BytesIO()
                im.save(buf, fmt, **kwargs)
                data = f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()
                if not best or len(data) < len(best):
                    best = data
        cache[path] = best
    return cache[path]


def reasoning_mean(sample: Sample) -> float | None:
    """Mean s_t of the sample's reasoning tokens (the sort key 'most / least grounded')."""
    if sample.s is None or sample.tokens is None:
        return None
    ends, pos = [], 0
    for piece in sample.tokens:
        pos += len(piece)
        ends.append(min(pos, len(sample.text)))  # a training log's pieces end with the end-of-turn token
    if not "".join(sample.tokens).startswith(sample.text):  # pieces that do not spell the text: all tokens
        return sum(sample.s) / len(sample.s) if sample.s else None
    return summarize(sample.text, ends, sample.s[: len(ends)])["reasoning"]


def _token_html(sample: Sample) -> str:
    if sample.tokens is None or sample.s is None:
        return f'<span class="plain">{html.escape(sample.text)}</span>'
    reasoning, _ = regions(sample.text)
    parts, pos = [], 0
    for i, piece in enumerate(sample.tokens):
        start, pos = pos, pos + len(piece)
        if not piece:
            continue
        s = float(sample.s[i]) if i < len(sample.s) else 0.0
        classes = [f"b{_bin(s, S_EDGES)}"]
        title = f"s_t={s:.3f}"
        if sample.w is not None and i < len(sample.w):
            classes.append(f"v{_bin(float(sample.w[i]), W_EDGES)}")
            title += f" w_t={float(sample.w[i]):.2f}"
        if reasoning and reasoning[0] <= start < reasoning[1]:
            classes.append("r")
        parts.append(f'<i class="{" ".join(classes)}" title="{title}">{html.escape(piece)}</i>')
    return "".join(parts)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def display_kind(sample: Sample) -> str:
    """The page's kind filter: eval, teacher, or for training logs rollout / expert slot."""
    if sample.kind == "training":
        return "expert slot" if sample.expert else "rollout"
    return sample.kind


def _sample_html(sample: Sample, index: int, images: dict[str, str]) -> str:
    ground = reasoning_mean(sample)
    correct = {True: "correct", False: "incorrect", None: "unknown"}[sample.correct]
    kind = display_kind(sample)
    facts = [
        ("gold", html.escape(sample.gold or "–")),
        ("reward", _fmt(sample.reward)),
        ("answer", correct),
        ("fact acc.", _fmt(sample.fact_acc)),
        ("reasoning s_t", _fmt(ground)),
    ]
    if sample.decision:
        facts.append(("filter", html.escape(sample.decision)))
    if sample.step is not None:
        facts.append(("step", str(sample.step)))
    imgs = "".join(
        f'<img src="{image_uri(p, images)}" alt="image of {html.escape(sample.id)}">'
        for p in sample.image_paths
    )
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (
        f'<article class="sample {correct}" data-i="{index}" data-method="{html.escape(sample.method)}" '
        f'data-kind="{kind}" data-correct="{correct}" data-ground="{_ground_attr(ground)}">'
        f'<div class="img">{imgs}</div><div class="body"><h3>{html.escape(sample.method)} · {kind} · '
        f'{html.escape(sample.id)}</h3><p class="q">{html.escape(sample.question)}</p><dl>{dl}</dl>'
        f'<p class="tokens">{_token_html(sample)}</p><p class="where">{html.escape(sample.where)}</p></div>'
        "</article>"
    )


def histogram_svg(
    samples: Sequence[Sample], methods: Sequence[str], width: int = 640, height: int = 180
) -> str:
    """Inline SVG: per method, the share of its shown samples in each bin of reasoning-mean s_t (S_EDGES):
    shares, so methods with different sample counts compare."""
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
    n_bins = len(S_EDGES) + 1
    counts = {m: [0] * n_bins for m in methods}
    for sample in samples:
        ground = reasoning_mean(sample)
        if ground is not None:
            counts[sample.method][_bin(ground, S_EDGES)] += 1
    shares = {m: [v / max(sum(c), 1) for v in c] for m, c in counts.items()}
    top = max([max(c) for c in shares.values()] + [1e-9])
    pad, base = 30, height - 40
    slot = (width - 2 * pad) / n_bins
    bar = slot * 0.8 / max(len(methods), 1)
    parts = [
        f'<svg id="hist" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
    ]
    parts.append(f'<line x1="{pad}" y1="{base}" x2="{width - pad}" y2="{base}" stroke="#333"/>')
    labels = ["<" + f"{S_EDGES[0]:g}"] + [f"{e:.2g}+" for e in S_EDGES]
    for k in range(n_bins):
        x0 = pad + k * slot
        parts.append(
            f'<text x="{x0 + slot / 2:.1f}" y="{base + 14}" font-size="10" text-anchor="middle">'
            f"{labels[k]}</text>"
        )
        for j, method in enumerate(methods):
            h = (base - 10) * shares[method][k] / top
            x = x0 + slot * 0.1 + j * bar
            parts.append(
                f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{palette[j % len(palette)]}"><title>{html.escape(method)}: {counts[method][k]} '
                f"({shares[method][k]:.0%})</title></rect>"
            )
    parts.append(
        f'<text x="{width / 2}" y="{height - 8}" font-size="11" text-anchor="middle">mean s_t of the '
        "reasoning tokens per sample: share of each method's shown samples</text>"
    )
    for j, method in enumerate(methods):
        parts.append(
            f'<rect x="{pad + 4}" y="{6 + 14 * j}" width="10" height="10" '
            f'fill="{palette[j % len(palette)]}"/>'
            f'<text x="{pad + 18}" y="{15 + 14 * j}" font-size="11">{html.escape(method)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222}
header p{margin:4px 0} .controls{position:sticky;top:0;background:#fafafa;padding:8px;border:1px solid #ddd;
z-index:1} .controls label{margin-right:14px}
.legend span{display:inline-block;min-width:34px;padding:1px 3px;margin:1px;border:1px solid #ccc;
font-size:11px;text-align:center}
article{display:flex;gap:12px;border-top:1px solid #ddd;padding:10px 0}
article.correct{border-left:4px solid #2ca02c;padding-left:8px}
article.incorrect{border-left:4px solid #d62728;padding-left:8px}
article.unknown{border-left:4px solid #bbb;padding-left:8px}
.img img{width:160px;height:auto;image-rendering:pixelated;border:1px solid #ccc}
h3{margin:0 0 4px;font-size:14px} .q{margin:2px 0;color:#444}
dl{display:flex;flex-wrap:wrap;gap:2px 12px;margin:4px 0;font-size:12px} dt{color:#777} dd{margin:0 6px 0 0}
.tokens{font:14px/1.9 ui-monospace,monospace;white-space:pre-wrap;word-break:break-word}
.tokens i{font-style:normal;border-radius:2px} .tokens i.r{border-bottom:1px dotted #999}
.where{font-size:11px;color:#999;margin:2px 0}
section.pair{border-top:2px solid #888;padding:6px 0} .pair .change{margin:2px 0;font-size:13px}
.pairgrid{display:grid;grid-template-columns:1fr 1fr;gap:12px} .pairgrid article{border-top:none}
.pairgrid .img img{width:120px}
"""


def _colour_css() -> str:
    rules = [f"body:not(.by-w) .b{k}{{background:{c}}}" for k, c in enumerate(S_COLOURS)]
    rules += [f"body.by-w .v{k}{{background:{c}}}" for k, c in enumerate(W_COLOURS)]
    rules += [f"body:not(.by-w) .b{k}{{color:#fff}}" for k in range(len(S_COLOURS) - 3, len(S_COLOURS))]
    rules += [f"body.by-w .v{k}{{color:#fff}}" for k in (0, len(W_COLOURS) - 2, len(W_COLOURS) - 1)]
    return "\n".join(rules)


JS = """
(function(){
  var list=document.getElementById('samples'), items=Array.prototype.slice.call(list.children);
  var count=document.getElementById('count');
  function get(id){var e=document.getElementById(id);return e?e.value:'all';}
  function apply(){
    var m=get('f-method'), k=get('f-kind'), c=get('f-correct'), o=get('f-sort'), shown=0;
    var order=items.slice();
    if(o!=='file'){order.sort(function(a,b){
      var x=a.dataset.ground===''?null:+a.dataset.ground, y=b.dataset.ground===''?null:+b.dataset.ground;
      if(x===null&&y===null)return (+a.dataset.i)-(+b.dataset.i); if(x===null)return 1; if(y===null)return -1;
      return o==='most'?y-x:x-y;});}
    order.forEach(function(e){
      var ok=(m==='all'||e.dataset.method===m)&&(k==='all'||e.dataset.kind===k)
        &&(c==='all'||e.dataset.correct===c);
      e.hidden=!ok; if(ok)shown++; list.appendChild(e);});
    count.textContent=shown;
  }
  ['f-method','f-kind','f-correct','f-sort'].forEach(function(id){
    var e=document.getElementById(id); if(e)e.addEventListener('change',apply);});
  var colour=document.getElementById('f-colour');
  if(colour)colour.addEventListener('change',function(){document.body.classList.toggle('by-w',colour.value==='w');});
  var h=location.hash.slice(1);  // e.g. #f-method=tgrl&f-sort=most: a link to a filtered view
  h.split('&').forEach(function(kv){var p=kv.split('='),e=p[0]&&document.getElementById(p[0]);
    if(e&&p.length===2)e.value=decodeURIComponent(p[1]);});
  apply();
})();
"""


def bin_labels(edges: Sequence[float], colours: Sequence[str]) -> list[tuple[str, str]]:
    """(colour, label) per bin: "<first edge", then "edge+" for the bin that starts there."""
    return [(c, f"<{edges[0]:g}" if k == 0 else f"{edges[k - 1]:.2g}+") for k, c in enumerate(colours)]


def _ground_attr(ground: float | None) -> str:
    return "" if ground is None else f"{ground:.5f}"


def _select(id_: str, label: str, options: Sequence[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{html.escape(v)}">{html.escape(t)}</option>' for v, t in options)
    return f'<label>{label} <select id="{id_}">{opts}</select></label>'


def _pair_html(source: Sample, twin: Sample, index: int, images: dict[str, str]) -> str:
    """A twin split's pair: the scene and its twin side by side, with what changed and the verdict. It
    filters and sorts as one item (the twin's method, answer and reasoning s_t)."""
    ground = reasoning_mean(twin)
    correct = {True: "correct", False: "incorrect", None: "unknown"}[twin.correct]
    return (
        f'<section class="pair" data-i="{index}" data-method="{html.escape(twin.method)}" '
        f'data-kind="twin pair" data-correct="{correct}" data-ground="{_ground_attr(ground)}">'
        f'<p class="change"><b>twin pair</b> · {html.escape(twin_verdict(source, twin))}</p>'
        f'<div class="pairgrid">{_sample_html(source, index, images)}'
        f"{_sample_html(twin, index, images)}</div></section>"
    )


def page_items(samples: Sequence[Sample], images: dict[str, str]) -> tuple[list[str], list[str]]:
    """The page's items in file order (a twin with its source becomes one pair; a source shown in a pair is
    not shown again alone) and their kinds."""
    sources = {twin_source_key(s): s for s in samples if s.twin and s.twin["kind"] == "source"}
    paired = {
        id(src)
        for s in samples
        if s.twin and s.twin["kind"] != "source" and (src := sources.get(twin_source_key(s))) is not None
    }
    items, kinds = [], []
    for i, sample in enumerate(samples):
        source = (
            sources.get(twin_source_key(sample)) if sample.twin and sample.twin["kind"] != "source" else None
        )
        if source is not None:
            items.append(_pair_html(source, sample, i, images))
            kinds.append("twin pair")
        elif id(sample) not in paired:
            items.append(_sample_html(sample, i, images))
            kinds.append(display_kind(sample))
    return items, kinds


def render_html(
    samples: Sequence[Sample], total: int, seed: int, inputs: Sequence[str], notes: Sequence[str]
) -> str:
    """The page (see the module docstring)."""
    methods = sorted({s.method for s in samples})
    images: dict[str, str] = {}
    items, item_kinds = page_items(samples, images)
    body = "".join(items)
    kinds = list(dict.fromkeys(item_kinds))
    has_w = any(s.w is not None for s in samples)
    capped = (
        f"Showing a sample of {len(samples)} of {total} (per method and kind, drawn with seed {seed})."
        if total > len(samples)
        else f"All {total} samples."
    )
    legend = "".join(f'<span style="background:{c}">{t}</span>' for c, t in bin_labels(S_EDGES, S_COLOURS))
    w_legend = "".join(f'<span style="background:{c}">{t}</span>' for c, t in bin_labels(W_EDGES, W_COLOURS))
    controls = "".join(
        [
            _select("f-method", "method", [("all", "all")] + [(m, m) for m in methods]),
            _select("f-kind", "kind", [("all", "all")] + [(k, k) for k in kinds]),
            _select(
                "f-correct",
                "answer",
                [("all", "all"), ("correct", "correct"), ("incorrect", "incorrect"), ("unknown", "unknown")],
            ),
            _select(
                "f-sort",
                "sort",
                [("file", "file order"), ("most", "most grounded"), ("least", "least grounded")],
            ),
            _select("f-colour", "colour by", [("s", "s_t"), ("w", "w_t (expert tokens)")]) if has_w else "",
        ]
    )
    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Trajectory report</title>
<style>{CSS}{_colour_css()}</style></head>
<body>
<header><h1>Trajectory report: which reasoning tokens lean on the image</h1>
<p>Each token is coloured by its visual dependency s_t = exp(d) - d - 1, d = log p(token | perturbed
image) - log p(token | image) (the trainer's perturbation and s_t, tgrl/grounding.py). s_t &ge; {HIGH_S:.3f}:
the token's probability at least halves when the image is perturbed. Reasoning tokens (inside
&lt;think&gt;) are underlined; "reasoning s_t" is their mean, the key of "most / least grounded".</p>
<p id="capnote">{capped}</p>
<p>Inputs: {html.escape(", ".join(inputs))}</p>{note_html}
<p class="legend">s_t: {legend}</p>
{f'<p class="legend">w_t (token weight, mean 1 over an expert trajectory): {w_legend}</p>' if has_w else ""}
{histogram_svg(samples, methods)}
</header>
<div class="controls">{controls}<span><b id="count">{len(samples)}</b> shown</span></div>
<main id="samples">{body}</main>
<script>{JS}</script>
</body></html>
"""


# --------------------------------------------------------------------------------------------------
# the command


def build_report(
    inputs: Sequence[tuple[str | None, Path]],
    out: Path,
    *,
    problems: Sequence[Path] = (),
    model: str | None = None,
    max_samples: int = 300,
    seed: int = 0,
    skip_empty: bool = False,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Read and check every input, cap, score what lacks s_t, render, write ``out`` atomically. Returns
    counts for the command's closing line."""
    files = [(label, resolve_input(Path(path))) for label, path in inputs]
    problem_files = [Path(p) for p in problems]
    for _, path in files:
        first = next(read_jsonl(path), None)
        kind = detect_kind(first[1]) if first else None
        found = default_problems(path, kind) if kind in ("teacher", "training") else None
        if found is not None and found not in problem_files:
            problem_files.append(found)
    index = load_problem_index(problem_files)
    samples: list[Sample] = []
    for label, path in files:
        samples += read_input(path, label, index)
    samples = check_samples(samples, skip_empty)
    if not samples:
        raise UserError("no samples to show (every completion was empty)")
    if model is not None:
        from tgrl.modeling import load_processor

        try:  # a checkpoint without a processor fails here, before any work
            load_processor(model)
        except UserError:
            raise
        except Exception as err:  # transformers' own errors for a folder it cannot read
            raise UserError(
                f"{model}: cannot load its processor ({type(err).__name__}: {str(err)[:200]}). Fix: pass a "
                "checkpoint folder with processor_config.json and the tokenizer files"
            ) from None
    shown, total = cap_samples(samples, max_samples, seed)
    shown = add_twin_sources(shown, samples)
    notes = []
    if model is not None:
        score_samples(shown, model, seed, batch_size=batch_size)
        notes.append(
            f"s_t (and w_t of expert trajectories) of samples without stored values: scored with {model}."
        )
    elif any(s.s is None for s in shown):
        notes.append("Some samples carry no s_t (shown uncoloured): pass --model CKPT to score them.")
    page = render_html(shown, total, seed, [str(p) for _, p in files], notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return {"shown": len(shown), "total": total, "bytes": len(page.encode())}
