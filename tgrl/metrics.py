"""Training metrics on disk: every logged step becomes one JSON line in ``<output_dir>/metrics.jsonl``.

Always on (TensorBoard / W&B stay opt-in through ``report_to``), written by the main process only,
append-only and flushed every step (fsynced at every checkpoint and at the end: an fsync per step
cost 10-15% of a tiny-tier step on a busy disk), so a killed run keeps its curve. A run that starts at
step N (a resume from ``checkpoint-N``, or N = 0 for a fresh start into an old folder) first drops the rows
of the steps it will redo, from ``metrics.jsonl``, ``data_order.jsonl`` and ``completions.jsonl``:
otherwise a run killed after step 41 and resumed from checkpoint 20 leaves 81 rows for 60 steps, and every
reader but ours (pandas, W&B imports) sees the re-done steps twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from tgrl.utils import append_jsonl, fsync_file, read_jsonl, write_jsonl

METRICS_FILE = "metrics.jsonl"
DATA_ORDER_FILE = "data_order.jsonl"  # written by TGRLTrainer when log_data_order is on
COMPLETIONS_FILE = "completions.jsonl"  # written by TGRLTrainer every log_completions_every steps


def _jsonable(value):
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def drop_rows(path: Path, keep: Callable[[dict], bool]) -> int:
    """Rewrite a JSONL log atomically with only the rows ``keep`` accepts (a torn last line, left by a kill
    mid-write, goes too). Returns how many rows were dropped; a missing file is a no-op."""
    if not path.exists():
        return 0
    text = path.read_text(encoding="utf-8")
    rows = [row for _, row in read_jsonl(path, tolerate_torn_tail=True)]
    kept = [row for row in rows if keep(row)]
    torn = bool(text) and not text.endswith("\n")
    if len(kept) < len(rows) or torn:
        write_jsonl(path, kept)
    return len(rows) - len(kept)


class JsonlMetricsCallback(TrainerCallback):
    """Append ``{"step": ..., "epoch": ..., <every logged key>}`` per ``on_log`` (NaN/inf -> null);
    the end-of-run summary (train_runtime, ...) is left out: it belongs to no step. At train begin, drop
    the rows of steps this run will redo (see the module docstring)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        start = state.global_step  # restored from the checkpoint before on_train_begin (0 on a fresh start)
        # metrics rows: step = the optimizer step just finished; steps <= start are not redone
        dropped = drop_rows(
            self.path or Path(args.output_dir) / METRICS_FILE, lambda r: r.get("step", 0) <= start
        )
        # data-order rows: step = global_step when the batch was generated; the batch at `start` is redone
        dropped_order = sum(
            drop_rows(Path(args.output_dir) / name, lambda r: r.get("step", 0) < start)
            for name in (DATA_ORDER_FILE, COMPLETIONS_FILE)
        )
        if dropped or dropped_order:
            print(
                f"[metrics] starting at step {start}: dropped {dropped} metrics rows and {dropped_order} "
                f"data-order / completion rows of steps this run redoes",
                flush=True,
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return  # the end-of-run summary goes to train_results.json, not into the per-step curve
        path = self.path or Path(args.output_dir) / METRICS_FILE
        row = {"step": state.global_step, "epoch": _jsonable(state.epoch)}
        row.update({key: _jsonable(value) for key, value in logs.items()})
        append_jsonl(path, [row], fsync=False)

    def _sync(self, args, state) -> None:
        if state.is_world_process_zero:
            fsync_file(self.path or Path(args.output_dir) / METRICS_FILE)
            fsync_file(Path(args.output_dir) / DATA_ORDER_FILE)
            fsync_file(Path(args.output_dir) / COMPLETIONS_FILE)

    def on_save(self, args, state, control, **kwargs):
        self._sync(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._sync(args, state)


SUMMARY_KEYS = (
    "loss",
    "reward",
    "accuracy/on_policy",
    "accuracy/expert",
    "fact_accuracy",
    "completion_length",
    "entropy",
    "mean_token_accuracy",
    "time/step",
)


class ConsoleSummaryCallback(TrainerCallback):
    """One short console line every ``every`` logged steps (the full record is in metrics.jsonl),
    instead of Transformers' printing of the whole log dict at every step."""

    def __init__(self, every: int = 10):
        self.every = max(1, every)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "train_runtime" not in logs and state.global_step % self.every:
            return
        parts = [
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in logs.items()
            if k in SUMMARY_KEYS
        ]
        if "train_runtime" in logs:
            parts = [f"{k}={logs[k]:.4g}" for k in ("train_runtime", "train_loss") if k in logs]
        print(f"[step {state.global_step}/{state.max_steps}] " + " ".join(parts), flush=True)


def quiet_console(trainer, every: int = 10) -> None:
    """Swap the per-step dict printing (PrinterCallback / ProgressCallback) for
    :class:`ConsoleSummaryCallback`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ConsoleSummaryCallback(every))
