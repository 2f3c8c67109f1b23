"""Small shared utilities: user-facing errors, atomic file writes, JSONL I/O, provenance.

Why here: every long job (teacher generation, training, evaluation) must write atomically, resume,
and report bad input without a traceback, so those mechanics exist once.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


class UserError(Exception):
    """An error caused by the user's input or setup (bad data, config, path, missing package).

    Scripts catch it at the top (see :func:`cli`) and print the message without a traceback; the
    message names the file, the row or key, and the fix.
    """


def cli(main: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a script's ``main``: a :class:`UserError` prints ``error: ...`` and exits with code 2."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def keep_gzipped(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Write ``src`` gzipped to ``dst`` atomically, with a zero timestamp: the same file always gives the
    same bytes, so kept copies (curves, frozen inputs) do not change in git when rewritten."""
    atomic_write_bytes(dst, gzip.compress(Path(src).read_bytes(), mtime=0))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder + rename: never a half file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic, pretty, key-sorted JSON (stable diffs, byte-identical for identical content)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Atomic JSONL: the whole file appears at once or not at all."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))


def load_yaml_mapping(path: str | os.PathLike, what: str = "config", fix: str = "") -> dict[str, Any]:
    """Read a flat YAML mapping (a recipe or a script config); every error names the file.

    ``what`` names the file's role in messages; ``fix`` is appended to the not-found message.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found" + (f". Fix: {fix}" if fix else ""))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a {what} must be a YAML mapping of key: value, got {type(data).__name__}")
    return data


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict], fsync: bool = True) -> None:
    """Append rows: the append-only log of resumable jobs (a torn last line is tolerated by
    :func:`read_jsonl` with ``tolerate_torn_tail=True``).

    ``fsync=False`` still flushes to the OS, so a killed *process* loses nothing; only a machine
    crash can. Per-step training logs use it: an fsync per step cost 37-72 ms on a busy disk (10-15%
    of a tiny-tier step), and the trainer syncs them at every checkpoint instead (:func:`fsync_file`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    if not payload:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(payload)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def fsync_file(path: str | os.PathLike) -> None:
    """Make an already-written file durable (no-op when it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_torn_tail(path: Path) -> int:
    """Cut a partial last line (the process was killed mid-write) so appends start on a fresh line.
    Returns the number of bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        chunk = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            nl = data.rfind(b"\n")
            if nl != -1:
                keep = start + nl + 1
                f.truncate(keep)
                return size - keep
            pos = start
        f.truncate(0)
        return size


def read_jsonl(path: str | os.PathLike, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)``; a malformed line raises :class:`UserError` naming file and line.

    ``tolerate_torn_tail``: an append-only log killed mid-write may end in a partial line without a
    newline; skip exactly that line (it will be regenerated) instead of failing.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if tolerate_torn_tail and i == len(lines) and not line.endswith("\n"):
                return
            raise UserError(
                f"{path}:{i}: not valid JSON ({err.msg} at column {err.colno}). "
                "Fix: each line must be one JSON object."
            ) from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}.")
        yield i, row


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


WEIGHTS_HASH_CACHE = ".tgrl_weights_sha256.json"


def weights_sha256(checkpoint: str | os.PathLike) -> str | None:
    """One sha256 over a checkpoint folder's weight files (``*.safetensors``, else ``pytorch_model*.bin``),
    or None for a hub id / a folder without weights. Evaluation and probe keys include it, so a checkpoint
    retrained at the same path never keeps the rows of the old weights.

    Cached in ``<folder>/.tgrl_weights_sha256.json`` by each file's name, size and mtime (a 7B checkpoint
    hashes once); a read-only folder just recomputes."""
    folder = Path(checkpoint)
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        return None
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = folder / WEIGHTS_HASH_CACHE
    try:
        cached = json.loads(cache.read_text())
        if cached.get("files") == stamp:
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode() + b"\0")
    digest = h.hexdigest()
    with contextlib.suppress(OSError):  # a read-only folder: no cache
        atomic_write_text(cache, json.dumps({"files": stamp, "sha256": digest}))
    return digest


@functools.cache
def machine_info() -> dict[str, str]:
    """The CPU model (``model name`` of /proc/cpuinfo, else platform.processor()) and the platform string.
    Recorded with every summary row: floating-point differences between CPUs move tiny-tier scores."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or "unknown", "platform": platform.platform()}


def git_commit(short: bool = True) -> str:
    """The repo's current commit (with ``+dirty`` when the code has uncommitted changes), or ``unknown``.

    Changes under ``results/`` do not count: they are the outputs being written (a run appending to
    the committed ``results/tiny/summary.jsonl`` would otherwise mark itself dirty)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions(
    names: Iterable[str] = (
        "torch",
        "torchvision",
        "transformers",
        "trl",
        "accelerate",
        "datasets",
        "deepspeed",
        "lmms_eval",
        "math-verify",
        "vllm",
    ),
) -> dict:
    """Installed versions of the packages that move results (missing ones are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def cpu_threads(device: str) -> int | None:
    """The thread count for :func:`set_torch_threads` of a job on ``device``: one on CPU unless the
    user chose (``TGRL_TORCH_THREADS`` / ``OMP_NUM_THREADS``; two threads stall at random on small
    models, docs/environment.md#5-cpu-threads); ``None`` leaves the setting alone (GPU jobs, explicit
    choices)."""
    explicit = os.environ.get("TGRL_TORCH_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return None if explicit or not device.startswith("cpu") else 1


def set_torch_threads(n: int | None = None) -> None:
    """Pin torch's intra-op threads (``TGRL_TORCH_THREADS`` or ``n``). On small CPUs two threads stall
    at random; GPU runs are unaffected."""
    n = n or int(os.environ.get("TGRL_TORCH_THREADS", "0") or 0)
    if n > 0:
        import torch

        torch.set_num_threads(n)
