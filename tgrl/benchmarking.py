"""The harness of the benchmarks in benchmarks/: measured subprocesses (wall time and peak RSS), their
output (JSON lines, a plain table, one JSON document) and the shared inputs, built like
scripts/reproduce_tiny.sh stages 1-3 at bench size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tgrl.utils import REPO_ROOT as REPO

PY = sys.executable
RECIPE_DIR = REPO / "train" / "recipes" / "tiny"
REPRO_BASE = REPO / "checkpoints" / "tiny_repro" / "base"


# --------------------------------------------------------------------------------------------------
# measured subprocesses


@dataclass
class Measured:
    """Outcome of one measured subprocess: exit code, wall seconds and peak resident memory."""

    returncode: int
    wall_s: float
    peak_rss_mb: float


def bench_env() -> dict[str, str]:
    """Environment of every measured process: one torch thread (two threads stall at random on these
    2-core machines, docs/environment.md#5-cpu-threads), offline hub, unbuffered output for the logs."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TGRL_TORCH_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="disabled",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_measured(cmd: Sequence[Any], log_path: Path, check: bool = True) -> Measured:
    """Run ``cmd`` from the repo root with its output in ``log_path``; peak RSS from ``os.wait4``.

    ``wait4`` gives the rusage of exactly this child (its own waited-for children included), so each
    measurement has its own peak even though the bench runs many processes one after another
    (``RUSAGE_CHILDREN`` of the bench itself would only ever grow)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(c) for c in cmd], cwd=REPO, env=bench_env(), stdout=log, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    if check and proc.returncode != 0:
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}; log {log_path}:\n{tail}")
    return Measured(proc.returncode, round(wall, 3), round(usage.ru_maxrss / 1024.0, 1))  # KiB -> MiB


def emit(record: dict[str, Any], sink: list[dict[str, Any]]) -> None:
    """One measurement as one JSON line on stdout (and into the --out document)."""
    sink.append(record)
    print(json.dumps(record), flush=True)


def note(message: str) -> None:
    """Progress for humans, on stderr so stdout stays JSON lines plus the final table."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def write_out(path: str | None, document: dict[str, Any]) -> None:
    """The whole run as one JSON document (``--out``), for tables and comparisons later."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(document, indent=1) + "\n")
        note(f"wrote {path}")


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table (no dependency)."""
    cells = [[str(h) for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# assets: the same pipeline as scripts/reproduce_tiny.sh stages 1-3, at bench size


@dataclass
class Assets:
    """Inputs the benchmarks share: the weak base and the problem files (paths as strings)."""

    base: str
    base_source: str
    train: str | None  # problems with meta.expert (F1+F2-filtered oracle trajectories): RL and SFT data
    problems: str  # the synthetic train split (the teacher benchmark's input)
    test: str  # the held-out synthetic split (the eval benchmark's input)


def _done(path: Path) -> bool:
    return (path / ".tgrl_done").is_file()


def _stage(out: Path, cmd: list[Any], logs: Path) -> Path:
    """Run one preparation command unless its output folder is marked finished."""
    if not _done(out):
        note(f"prepare {out.name}")
        run_measured(cmd, logs / f"{out.name}.log")
        (out / ".tgrl_done").touch()
    return out


def prepare_assets(
    work: Path,
    n_train: int = 1000,
    n_test: int = 500,
    base_steps: int = 300,
    reuse_base: bool = True,
    base: str | None = None,
    data: str | None = None,
    train: str | None = None,
    need_train: bool = True,
) -> Assets:
    """Find or build what the benchmarks run on, like scripts/reproduce_tiny.sh stages 1-3.

    Stages (each marked ``.tgrl_done`` in ``work``, so a second bench on the same folder costs nothing):
    tiny model, synthetic scenes (unless ``data`` names a folder with train/test.jsonl), oracle
    trajectories K=4 with 20% wrong facts, the F1+F2 filter (the expert set, unless ``train`` is given
    or nobody needs it), and the weak base: ``base`` if given, else the finished reproduce_tiny.sh base
    if ``reuse_base``, else ``base_steps`` SFT warm-up steps on the expert set."""
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    init = work / "tiny-init"
    make_init = [PY, "data_prep/build_tiny_model.py", "--out", init, "--size", "S", "--seed", "0"]
    if data:
        synth = Path(data)
    else:
        synth = _stage(
            work / "synthetic",
            [PY, "data_prep/make_synthetic.py", "--out", work / "synthetic", "--n-train", n_train]
            + ["--n-test", n_test, "--seed", "0"],
            logs,
        )
    build_base = not base and not (reuse_base and _done(REPRO_BASE))
    if not train and (need_train or build_base):
        _stage(init, make_init, logs)
        teacher = _stage(
            work / "teacher",
            [PY, "data_prep/build_teacher_trajectories.py", "--data", synth / "train.jsonl"]
            + ["--out", work / "teacher", "--backend", "oracle", "--k", "4", "--seed", "0"]
            + ["--wrong-fact-rate", "0.2", "--no-progress"],
            logs,
        )
        experts = _stage(
            work / "experts",
            [PY, "data_prep/filter_trajectories.py", "--data", synth / "train.jsonl", "--trajectories"]
            + [teacher / "trajectories.jsonl", "--out", work / "experts", "--policy", init]
            + ["--max-completion-tokens", "64", "--no-f3", "--no-progress"],
            logs,
        )
        train = str(experts / "train.jsonl")
    if base:
        source = f"given: {base}"
    elif not build_base:
        base, source = (
            str(REPRO_BASE),
            f"reused {REPRO_BASE.relative_to(REPO)} (the reproduce_tiny.sh weak base)",
        )
    else:
        _stage(init, make_init, logs)
        base = str(
            _stage(
                work / "base",
                [PY, "train/sft.py", "--config", RECIPE_DIR / "sft.yaml", f"output_dir={work / 'base'}"]
                + [f"model_name_or_path={init}", f"train_file={train}", "seed=0", f"max_steps={base_steps}"]
                + ["save_strategy=no"],
                logs,
            )
        )
        source = f"built: {base_steps} SFT warm-up steps on grounded oracle traces"
    return Assets(
        base=base,
        base_source=source,
        train=train,
        problems=str(synth / "train.jsonl"),
        test=str(synth / "test.jsonl"),
    )


def absolute_paths(args: argparse.Namespace) -> None:
    """Path options as absolute paths: every measured process runs from the repo root."""
    for name in ("base", "data", "train"):
        if getattr(args, name, None):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))


def assets_from_args(args: argparse.Namespace, work: Path, need_train: bool = True) -> Assets:
    """:func:`prepare_assets` with the options :func:`add_asset_args` defined (paths made absolute)."""
    absolute_paths(args)
    return prepare_assets(
        work,
        args.n_train,
        args.n_test,
        args.base_steps,
        args.reuse_base,
        args.base,
        args.data,
        getattr(args, "train", None),
        need_train,
    )


def add_asset_args(ap: argparse.ArgumentParser) -> None:
    """The asset options both benchmark scripts share."""
    ap.add_argument("--work", help="folder for the bench's base, data and runs (default: a temporary folder)")
    ap.add_argument("--base", help="use this checkpoint as the weak base (no warm-up)")
    ap.add_argument("--data", help="synthetic folder with train.jsonl and test.jsonl (default: built)")
    ap.add_argument("--base-steps", type=int, default=300, help="SFT warm-up steps when the base is built")
    ap.add_argument("--n-train", type=int, default=1000, help="synthetic train problems when built")
    ap.add_argument("--n-test", type=int, default=500, help="synthetic test problems when built")
    ap.add_argument(
        "--no-reuse-base",
        dest="reuse_base",
        action="store_false",
        help=f"build the base in --work even if {REPRO_BASE.relative_to(REPO)} is finished",
    )


def interleaved(methods: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """(round, method) in run order: round r starts r places further into the method list, so every
    method runs early, in the middle and late."""
    order = []
    for r in range(rounds):
        shift = r % len(methods)
        order.extend((r, m) for m in [*methods[shift:], *methods[:shift]])
    return order
