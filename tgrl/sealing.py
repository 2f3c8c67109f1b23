"""Sealed splits of the tiny protocol: frozen selection first, each checkpoint scored once, all logged.

:func:`freeze` writes ``OUT/sealed_manifest.json`` (hashes of the selection, the protocol, the final
pre-registration and the sealed files); :func:`require_frozen` refuses to score until it exists and still
matches; the append-only ``OUT/scoring_log.jsonl`` records every scoring, refusal and forced rescore.
Why, and the log's events: docs/tiny_tier.md#7-fair-protocol.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tgrl.evaluation.runner import append_locked
from tgrl.utils import UserError, git_commit, load_yaml_mapping, read_jsonl, sha256_file, write_json

MANIFEST = "sealed_manifest.json"
SCORING_LOG = "scoring_log.jsonl"


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


def freeze(
    out: Path, selected_file: Path, protocol_file: Path, sealed_dir: Path, preregistration: Path | None
) -> dict[str, Any]:
    """Write OUT/sealed_manifest.json. Idempotent for the same selection; a different selection after a
    freeze is refused (the freeze exists to make that impossible)."""
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
