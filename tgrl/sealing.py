"""Sealed splits of the tiny protocol: frozen selection first, each checkpoint scored once, all logged.

:func:`freeze` writes ``OUT/sealed_manifest.json`` (hashes of the selection, the protocol, the final
pre-registration and the sealed files); :func:`require_frozen` refuses to score until it exists and still
matches; the append-only ``OUT/scoring_log.jsonl`` records every scoring, refusal and forced rescore.
Why, and the log's events: docs/tiny_tier.md#7-fair-protocol.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tgrl.evaluation.runner import append_locked
from tgrl.utils import (
    UserError,
    atomic_write_bytes,
    git_commit,
    keep_gzipped,
    load_yaml_mapping,
    read_jsonl,
    sha256_file,
    weights_sha256,
    write_json,
)

MANIFEST = "sealed_manifest.json"
SCORING_LOG = "scoring_log.jsonl"
INPUTS = "inputs"  # OUT/inputs: copies of the weak base and the training sets the frozen selection used
BASE_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
              "tokenizer_config.json", "processor_config.json", "chat_template.jinja")  # fmt: skip
SET_FILES = ("train.jsonl", "manifest.json")  # what a training run and the filter's skip check read


def selection_sha256(selected_file: Path) -> str:
    """sha256 of the selection itself (selected.json's ``selected`` and ``entries``, canonical JSON), so
    rewriting the file with the same choice keeps the hash."""
    if not selected_file.is_file():
        raise UserError(f"{selected_file}: no selection. Fix: run the tuning stage first (--stage tune)")
    data = json.loads(selected_file.read_text())
    chosen = {"selected": data.get("selected"), "entries": data.get("entries")}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()


def sealed_files(sealed_dir: Path) -> dict[str, Path]:
    """task name (``sealed_<stem>``) -> file, for every JSONL file of the sealed folder (test, shifted and
    any split derived from them later, such as twin scenes)."""
    return {f"sealed_{path.stem}": path for path in sorted(sealed_dir.glob("*.jsonl"))}


def preregistration_status(path: Path) -> dict[str, Any]:
    raw = load_yaml_mapping(path, "pre-registration")
    return {"file": str(path), "sha256": sha256_file(path), "status": str(raw.get("status", "")).lower()}


def input_hashes(base: Path, train_sets: dict[str, Path]) -> dict[str, str | None]:
    """sha256 of what every run starts from: the weak base's weights and each training set's train.jsonl. A
    base or a filtered set rebuilt on another CPU differs in floating point (F3 ranks by the base's
    likelihoods), so a protocol resumed elsewhere must start from these, not from rebuilt ones."""
    hashes: dict[str, str | None] = {"base": weights_sha256(base)}
    for name, folder in sorted(train_sets.items()):
        if (folder / "train.jsonl").is_file():  # a set no pending run needs may be absent
            hashes[f"train_set:{name}"] = sha256_file(folder / "train.jsonl")
    return hashes


def keep_inputs(out: Path, base: Path, train_sets: dict[str, Path]) -> None:
    """Copy the base (its weight, config and tokenizer files) and each training set (train.jsonl and the
    filter's manifest, gzipped) to OUT/inputs, beside the results, for :func:`restore_inputs`."""
    for name in BASE_FILES:
        if (base / name).is_file():
            atomic_write_bytes(out / INPUTS / "base" / name, (base / name).read_bytes())
    for set_name, folder in train_sets.items():
        for name in SET_FILES:
            keep_gzipped(folder / name, out / INPUTS / set_name / f"{name}.gz")


def restore_inputs(out: Path, base: Path, data: Path) -> list[str]:
    """Put the frozen inputs of OUT/inputs where the protocol reads them when they are absent (a fresh
    clone): the base into ``base`` (with its done marker) and each set into ``data/<set>``. Returns what it
    restored; inputs already present are left alone (the freeze check compares their hashes)."""
    kept, restored = out / INPUTS, []
    if not kept.is_dir():
        return restored
    if (kept / "base").is_dir() and not (base / "model.safetensors").is_file():
        for src in sorted((kept / "base").iterdir()):
            atomic_write_bytes(base / src.name, src.read_bytes())
        (base / ".tgrl_done").touch()
        restored.append(str(base))
    for folder in sorted(p for p in kept.iterdir() if p.is_dir() and p.name != "base"):
        target = data / folder.name
        if not (target / "train.jsonl").is_file():
            for name in SET_FILES:  # the manifest last: its presence marks a finished set
                atomic_write_bytes(target / name, gzip.decompress((folder / f"{name}.gz").read_bytes()))
            restored.append(str(target))
    return restored


def check_inputs(manifest: dict[str, Any], current: dict[str, str | None], where: Path) -> None:
    """The inputs now (:func:`input_hashes`) must be the frozen ones; else an error naming each difference."""
    frozen = manifest.get("inputs") or {}
    changed = [name for name, sha in current.items() if name in frozen and frozen[name] != sha]
    if changed:
        raise UserError(
            f"{', '.join(changed)}: not the ones the selection was frozen with ({where}); rebuilt on another "
            f"machine, they differ in floating point. Fix: move them aside and rerun: the protocol restores "
            f"the frozen copies from {where.parent / INPUTS}"
        )


def freeze(
    out: Path,
    selected_file: Path,
    protocol_file: Path,
    sealed_dir: Path,
    preregistration: Path | None,
    inputs: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Write OUT/sealed_manifest.json. Idempotent for the same selection; a different selection after a
    freeze is refused (the freeze exists to make that impossible). ``inputs``: :func:`input_hashes`."""
    files = sealed_files(sealed_dir)
    if not files:
        raise UserError(
            f"{sealed_dir}: no sealed splits. Fix: build them first (the protocol's sealed section)"
        )
    manifest = {
        "selection_sha256": selection_sha256(selected_file),
        "selected_file": str(selected_file),
        "protocol_sha256": sha256_file(protocol_file),
        # file names only: a resumed run on another machine keeps its data elsewhere
        "sealed": {task: {"file": path.name, "sha256": sha256_file(path)} for task, path in files.items()},
    }
    if inputs is not None:
        manifest["inputs"] = inputs
    if preregistration is not None:
        if not preregistration.is_file():
            raise UserError(
                f"{preregistration}: the pre-registration is missing. Fix: commit it before freezing"
            )
        prereg = preregistration_status(preregistration)
        if prereg["status"] != "final":
            raise UserError(
                f"{preregistration}: status is {prereg['status'] or 'missing'!r}, not 'final'. Fix: finish "
                "the pre-registration, set status: final and commit it before the final run"
            )
        manifest["preregistration"] = prereg
    path = out / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("selection_sha256") != manifest["selection_sha256"]:
            raise UserError(
                f"{path}: frozen with another selection ({old.get('selection_sha256', '')[:12]}); the "
                f"selection is now {manifest['selection_sha256'][:12]}. A frozen selection never changes"
            )
        return old
    manifest.update(frozen_at=_now(), git_commit=git_commit())
    write_json(path, manifest)
    return manifest


def require_frozen(out: Path, selected_file: Path, protocol_file: Path, sealed_dir: Path) -> dict[str, Any]:
    """The manifest, when the selection, the protocol and every sealed file (in ``sealed_dir``) still match
    it; else an error that says what changed."""
    path = out / MANIFEST
    if not path.is_file():
        raise UserError(
            f"{path}: the selection is not frozen, so no sealed split may be scored. Fix: run_protocol.py "
            "--stage freeze (after the pre-registration is final)"
        )
    manifest = json.loads(path.read_text())
    if manifest["selection_sha256"] != selection_sha256(selected_file):
        raise UserError(
            f"{selected_file}: the selection differs from the one frozen in {path}; refusing to score"
        )
    if manifest["protocol_sha256"] != sha256_file(protocol_file):
        raise UserError(f"{protocol_file}: changed since the freeze ({path}); refusing to score")
    for task, entry in manifest["sealed"].items():
        file = sealed_dir / entry["file"]
        if not file.is_file() or sha256_file(file) != entry["sha256"]:
            raise UserError(f"{file} ({task}): missing or changed since the freeze ({path})")
    return manifest


class ScoringLog:
    """The append-only log of sealed scorings (module docstring)."""

    def __init__(self, out: Path, selection: str) -> None:
        self.path, self.selection = out / SCORING_LOG, selection

    def events(self) -> list[dict[str, Any]]:
        return (
            [row for _, row in read_jsonl(self.path, tolerate_torn_tail=True)] if self.path.is_file() else []
        )

    def start(self, run: str, weights: str | None, task: str, data_sha256: str, override: str | None) -> None:
        """Log the start of ``run``'s scoring on ``task``; a finished earlier scoring of the same run or
        weights on that task is refused (and the refusal logged) unless ``override`` gives a reason."""
        earlier = [
            e
            for e in self.events()
            if e["event"] == "scored"
            and e["task"] == task
            and (e["run"] == run or e["weights_sha256"] == weights)
        ]
        entry = {"run": run, "weights_sha256": weights, "task": task, "data_sha256": data_sha256}
        if earlier and not override:
            self._append("refused", entry, reason=f"scored before at {earlier[0]['time']}")
            raise UserError(
                f"{run} was scored on the sealed split {task} before ({earlier[0]['time']}, {self.path}). "
                "Each checkpoint is scored once. Fix: none needed (its rows are in the summary); to score it "
                "again anyway pass --rescore REASON (logged)"
            )
        if earlier:
            self._append("override", entry, reason=override)
        self._append("started", entry)

    def scored(self, run: str, weights: str | None, task: str, data_sha256: str) -> None:
        self._append(
            "scored", {"run": run, "weights_sha256": weights, "task": task, "data_sha256": data_sha256}
        )

    def _append(self, event: str, entry: dict[str, Any], reason: str | None = None) -> None:
        row = {
            "event": event,
            **entry,
            "selection_sha256": self.selection,
            "time": _now(),
            "git_commit": git_commit(),
        }
        if reason:
            row["reason"] = reason
        append_locked(self.path, [row])


def scoring_record(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What a scoring log shows: the checkpoints (runs) scored, on which splits, how often each (run, split)
    was scored to the end, the scorings started and never ended (an interrupted stage: ``rescored_after``
    when its rerun then scored it, with ``same_weights`` when the rerun's weights hash equals the
    interrupted one's; ``unfinished`` otherwise), the refusals and the forced rescorings."""
    scored: dict[tuple[str, str], list[str | None]] = {}
    started: dict[tuple[str, str], list[str | None]] = {}
    for e in events:
        weights = scored if e["event"] == "scored" else started if e["event"] == "started" else None
        if weights is not None:
            weights.setdefault((e["run"], e["task"]), []).append(e.get("weights_sha256"))
    broken = {key for key, w in started.items() if len(w) > len(scored.get(key, []))}
    rescored = {key for key in broken if scored.get(key)}
    return {
        "runs": len({run for run, _ in scored}),
        "tasks": sorted({task for _, task in scored}),
        "scorings": sum(len(w) for w in scored.values()),
        "scored_more_than_once": sorted(
            f"{run} on {task}" for (run, task), w in scored.items() if len(w) > 1
        ),
        "rescored_after": sorted({run for run, _ in rescored}),
        "same_weights": sorted(
            {run for run, task in rescored if set(started[(run, task)]) == set(scored[(run, task)])}
        ),
        "unfinished": sorted({run for run, task in broken if not scored.get((run, task))}),
        "refused": sum(e["event"] == "refused" for e in events),
        "overrides": sum(e["event"] == "override" for e in events),
    }


def describe_scoring(log_path: Path) -> str:
    """One paragraph on a scoring log (:func:`scoring_record`), for the registered table's footer."""
    rec = scoring_record([row for _, row in read_jsonl(log_path, tolerate_torn_tail=True)])
    more = rec["scored_more_than_once"]
    once = f"scored more than once: {', '.join(more)}" if more else "each scored once per split"
    text = (
        f"Sealed scorings ({log_path}): {rec['runs']} checkpoints on {len(rec['tasks'])} sealed splits "
        f"({', '.join(rec['tasks'])}), {rec['scorings']} scorings, {once}; {rec['refused']} refused, "
        f"{rec['overrides']} forced."
    )
    if rec["rescored_after"]:
        same = [
            f"{run} (same weights hash)" if run in rec["same_weights"] else run
            for run in rec["rescored_after"]
        ]
        text += (
            " Interrupted before its scoring ended, then retrained and scored by its stage's rerun: "
            f"{', '.join(same)}."
        )
    if rec["unfinished"]:
        text += f" Started, not scored: {', '.join(rec['unfinished'])}."
    return text


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
