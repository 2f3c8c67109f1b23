"""The lmms-eval runner behind eval/run_lmms_eval.py: settings, task and checkpoint resolution, the keys
that make it resumable, the summary rows (appended under a lock) and the lmms-eval calls.

What a run does, per task: runs lmms-eval through its Python API with our model class (tgrl.lmms_model) and
our task variants (eval/tasks), writes ``OUT/<run>/<task>__<settings hash>/results.json`` and
``samples.jsonl`` (lmms-eval's per-sample log: input, responses, per-sample scores; images left out), then
appends one row per metric to the summary file (default results/summary.jsonl):

    {"run", "method", "seed", "checkpoint", "task", "metric", "value" (a fraction in [0, 1]), "n",
     "decoding" ("greedy" | "avg@k"), "suite", "git_commit", "versions", "time", "settings": {...},
     "key", "weights_sha256", "settings_hash", "lmms_task", "limit", "eval_seconds", "results_dir",
     "machine": {"cpu", "platform"}}

Why the Python API and not lmms-eval's CLI in a subprocess: the CLI exits 0 on errors, strips <think>
before scoring, bootstraps stderr 100,000 times and finds our model only through the package entry point;
in-process, an exception is an exception (non-zero exit), nothing is stripped (our tasks also say so),
stderr bootstrapping is off (bootstrap_iters=0; the tables report spread over seeds), the model object is
passed directly, and one model load serves all tasks.

Resume: a (checkpoint, task) pair is finished when the summary holds rows with its key, a hash of the
checkpoint (absolute path or hub id, and the sha256 of a local folder's weight files), the task, the JSONL
file's sha256 (generic task), --limit and the settings below. A killed and rerun command redoes only
unfinished tasks, and checks that before it imports lmms-eval or torch (a finished rerun takes about a
second). --force redoes them.

Settings (precedence: command line > --suite in eval/suites.yaml > defaults below): backend, dtype,
batch_size, max_new_tokens, decoding (greedy | avg@k with --temperature/--top-p, lmms-eval ``repeats``),
eval_seed, min_pixels, max_pixels, attn_implementation, tensor_parallel_size, gpu_memory_utilization,
max_model_len, judge (an LLM judge model name; off by default), visual_dependency (off by default; when on,
the perturbation and threshold of tgrl.grounding.GroundingSpec), blind (off by default). All of them go into
``settings`` and the key (visual_dependency and blind only when on); the device and the process count are
recorded too but are not part of the key.

Visual dependency (``--visual-dependency``, hf backend): the model scores s_t of every response it
generated (tgrl.lmms_model, tgrl.grounding); per task the runner adds the rows ``vis_dep_reasoning``,
``vis_dep_answer``, ``vis_dep_reasoning_share`` and each with ``_correct`` / ``_incorrect`` (mean s_t,
not a fraction, except the share; definitions in tgrl/grounding.py), records ``grounding_seconds``
(the part of ``eval_seconds`` the extra passes took) and writes each response's token s_t into
``samples.jsonl`` (field ``grounding``: one record per response) for eval/report_trajectories.py.

A prompt longer than max_model_len allows is an item-level error (tgrl.lmms_model): not generated, scored
wrong, recorded in ``samples.jsonl`` (field ``error``), ``results.json`` and the summary rows (count).

Blind control (``--blind``, any task and backend): the model receives every image blanked (tgrl.lmms_model),
prompt and pixel budget unchanged; its rows get decoding ``<decoding>_blind``. When the summary holds both
the blind and the sighted evaluation of the same (checkpoint, task, settings), the second to finish adds
``mg_<metric>`` rows: the multimodal gain, value with the image minus value blind (MMStar's MG,
arXiv 2403.20330), a difference of fractions (may be negative).

A run is three steps: :func:`plan_evaluation` (what is pending), :func:`run_plan` (one model load, one
lmms-eval call per task) and :func:`record_task` (files and summary rows of one finished task).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tgrl.utils import (
    REPO_ROOT,
    UserError,
    append_jsonl,
    git_commit,
    machine_info,
    package_versions,
    read_jsonl,
    sha256_file,
    weights_sha256,
    write_json,
    write_jsonl,
)

TASKS_DIR = REPO_ROOT / "eval" / "tasks"
SUITES_FILE = REPO_ROOT / "eval" / "suites.yaml"
DEFAULT_SUMMARY = REPO_ROOT / "results" / "summary.jsonl"
DEFAULT_OUT = REPO_ROOT / "results" / "raw"
OUR_PREFIX = "tgrl_"
BLIND_SUFFIX = "_blind"  # decoding label of blind-control rows
MG_PREFIX = "mg_"  # multimodal gain rows: mg_<metric> = sighted - blind

DEFAULT_SETTINGS: dict[str, Any] = {
    "backend": "hf",
    "dtype": "auto",
    "batch_size": 1,
    "max_new_tokens": 2048,
    "decoding": "greedy",
    "temperature": 1.0,
    "top_p": 1.0,
    "eval_seed": 1234,
    "min_pixels": None,
    "max_pixels": None,
    "attn_implementation": None,
    "tensor_parallel_size": 1,
    "gpu_memory_utilization": 0.85,
    "max_model_len": None,
    "judge": None,
    "visual_dependency": False,
    "blind": False,
}
# Recorded, not hashed: where the model ran does not define the protocol.
UNHASHED_SETTINGS = ("device",)
# Hashed only when switched on, so the keys of runs from before the setting existed stay valid.
HASHED_WHEN_SET = ("visual_dependency", "blind")


# --------------------------------------------------------------------------------------------------
# settings, tasks, checkpoints


def load_suites(path: Path = SUITES_FILE) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: suites file not found")
    suites = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(suites, dict):
        raise UserError(f"{path}: expected a mapping of suite name -> {{tasks, jsonl, settings}}")
    return suites


def parse_decoding(decoding: str) -> int:
    """Samples per question: ``greedy`` -> 1, ``avg@8`` -> 8."""
    if decoding == "greedy":
        return 1
    match = re.fullmatch(r"avg@(\d+)", decoding or "")
    if not match or int(match.group(1)) < 1:
        raise UserError(f"decoding {decoding!r}: use 'greedy' or 'avg@K' (K samples, e.g. avg@8)")
    return int(match.group(1))


def decoding_label(settings: dict[str, Any]) -> str:
    """The summary's ``decoding`` field: greedy, avg@k (at T=1, top-p 1) or avg@k_t0.6_p0.95; with
    ``_blind`` appended for the blind control (images blanked), so its rows never mix with the sighted."""
    k = parse_decoding(settings["decoding"])
    suffix = BLIND_SUFFIX if settings.get("blind") else ""
    if k == 1 and settings["decoding"] == "greedy":
        return "greedy" + suffix
    if float(settings["temperature"]) == 1.0 and float(settings["top_p"]) == 1.0:
        return f"avg@{k}{suffix}"
    return f"avg@{k}_t{settings['temperature']:g}_p{settings['top_p']:g}{suffix}"


def load_suite(name: str, path: Path = SUITES_FILE) -> dict[str, Any]:
    """One suite of the suites file: its tasks, JSONL files and settings."""
    suites = load_suites(path)
    if name not in suites:
        raise UserError(f"suite {name!r} not in {path}; known: {sorted(suites)}")
    return suites[name]


def resolve_settings(overrides: dict[str, Any], suite: dict[str, Any] | None) -> dict[str, Any]:
    """The settings of a run: ``overrides`` (the command line; None = not given) over the suite's over
    ``DEFAULT_SETTINGS``, validated."""
    settings = dict(DEFAULT_SETTINGS)
    if suite:
        unknown = set(suite.get("settings") or {}) - set(DEFAULT_SETTINGS)
        if unknown:
            raise UserError(
                f"{SUITES_FILE}: unknown settings {sorted(unknown)}; known: {sorted(DEFAULT_SETTINGS)}"
            )
        settings.update(suite.get("settings") or {})
    for key in DEFAULT_SETTINGS:
        value = overrides.get(key)
        if value is not None:
            settings[key] = value
    parse_decoding(settings["decoding"])
    if settings["backend"] not in ("hf", "vllm"):
        raise UserError(f"backend {settings['backend']!r}: use hf or vllm")
    if int(settings["batch_size"]) < 1 or int(settings["max_new_tokens"]) < 1:
        raise UserError("batch_size and max_new_tokens must be >= 1")
    if settings["decoding"] != "greedy" and float(settings["temperature"]) <= 0:
        raise UserError("sampled decoding (avg@k) needs --temperature > 0")
    if settings["visual_dependency"]:
        if settings["backend"] != "hf":
            raise UserError(
                f"--visual-dependency needs the hf backend (got {settings['backend']}): vLLM cannot score a "
                "given response under a perturbed image. Fix: add --backend hf (batched; on GPU for 7B)"
            )
        from tgrl.grounding import GroundingSpec

        spec = settings["visual_dependency"]
        settings["visual_dependency"] = (
            GroundingSpec.from_settings(spec) if isinstance(spec, dict) else GroundingSpec()
        ).settings()
    return settings


def settings_hash(settings: dict[str, Any]) -> str:
    hashed = {
        k: v
        for k, v in settings.items()
        if k not in UNHASHED_SETTINGS and not (k in HASHED_WHEN_SET and not v)
    }
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:16]


class _IgnoreTags(yaml.SafeLoader):
    """Reads lmms-eval task YAMLs without resolving ``!function`` (only the task name is needed)."""


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


def our_tasks(tasks_dir: Path = TASKS_DIR) -> dict[str, Path]:
    """lmms-eval task name -> YAML file, for the tasks in eval/tasks."""
    found = {}
    for path in sorted(tasks_dir.rglob("*.yaml")):
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_IgnoreTags) or {}
        if isinstance(config, dict) and isinstance(config.get("task"), str):
            found[config["task"]] = path
    return found


def jsonl_task_name(spec: str) -> tuple[str, Path]:
    """``[NAME=]FILE`` -> (NAME, FILE); NAME defaults to ``<folder>_<stem>`` (data/synthetic/test.jsonl
    -> synthetic_test)."""
    name, sep, file = spec.partition("=")
    if not sep:
        file, name = spec, ""
    path = Path(file)
    if not name:
        name = f"{path.resolve().parent.name}_{path.stem}"
    name = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")
    if not name:
        raise UserError(f"--jsonl {spec!r}: cannot derive a task name; write NAME=FILE")
    return name, path


def resolve_tasks(task_names: list[str], jsonl_specs: list[str]) -> list[dict[str, Any]]:
    """Each task as {"task": summary name, "lmms_task": lmms-eval name, "jsonl": path | None,
    "builtin": bool}. Our tasks answer to their name with or without the ``tgrl_`` prefix."""
    ours = our_tasks()
    tasks: list[dict[str, Any]] = []
    for name in task_names:
        if name in ("tgrl_jsonl", "jsonl"):
            if not jsonl_specs:
                raise UserError("task tgrl_jsonl needs --jsonl FILE (any JSONL file in the problem schema)")
            continue
        if name in ours:
            tasks.append(
                {"task": name.removeprefix(OUR_PREFIX), "lmms_task": name, "jsonl": None, "builtin": False}
            )
        elif OUR_PREFIX + name in ours:
            tasks.append({"task": name, "lmms_task": OUR_PREFIX + name, "jsonl": None, "builtin": False})
        else:  # an lmms-eval built-in task: its own prompt and scorer (not our protocol)
            tasks.append({"task": name, "lmms_task": name, "jsonl": None, "builtin": True})
    for spec in jsonl_specs:
        name, path = jsonl_task_name(spec)
        if not path.is_file():
            raise UserError(f"--jsonl {path}: file not found (make data builds the synthetic set)")
        tasks.append(
            {"task": name, "lmms_task": f"tgrl_jsonl_{name}", "jsonl": path.resolve(), "builtin": False}
        )
    if not tasks:
        raise UserError("no tasks: give --tasks, --jsonl or --suite")
    names = [t["task"] for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"task(s) {duplicates} given twice")
    return tasks


def resolve_checkpoint(model: str) -> str:
    """Absolute path of a local checkpoint folder, or a hub id as given."""
    path = Path(model)
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{model}: not a model folder (no config.json). Fix: point --model at a saved checkpoint"
            )
        return str(path.resolve())
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise UserError(
            f"{model}: checkpoint folder not found (and not a hub id like Qwen/Qwen2.5-VL-7B-Instruct)"
        )
    return model


def default_run_name(checkpoint: str) -> str:
    path = Path(checkpoint)
    if not path.is_absolute():
        return checkpoint.replace("/", "_")
    if re.fullmatch(r"checkpoint-\d+|final|last", path.name):
        return f"{path.parent.name}_{path.name}"
    return path.name


def run_metadata(checkpoint: Path) -> dict[str, Any]:
    """Optional ``tgrl_run.json`` ({"run", "method", "seed"}) in the checkpoint folder or its parent."""
    for folder in (checkpoint, checkpoint.parent):
        meta = folder / "tgrl_run.json"
        if meta.is_file():
            try:
                data = json.loads(meta.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise UserError(f"{meta}: not valid JSON ({err.msg})") from None
            return {k: data.get(k) for k in ("run", "method", "seed") if data.get(k) is not None}
    return {}


def list_checkpoints(manifest: str | None, checkpoints_dir: str, explicit: list[str]) -> list[dict[str, Any]]:
    """Checkpoints to evaluate: explicit paths, else a manifest (JSONL rows {"checkpoint", "run",
    "method", "seed"}; relative paths against the manifest's folder), else every model folder under
    ``checkpoints_dir`` (a folder with config.json and weights; trainer intermediates ``checkpoint-N``
    are skipped)."""
    entries: list[dict[str, Any]] = []
    if explicit:
        entries = [{"checkpoint": c} for c in explicit]
    elif manifest:
        for line, row in read_jsonl(manifest):
            if not isinstance(row.get("checkpoint"), str):
                raise UserError(f"{manifest}:{line}: field 'checkpoint' (a path or hub id) is required")
            path = Path(row["checkpoint"])
            if not path.is_absolute() and (Path(manifest).parent / path).exists():
                row["checkpoint"] = str(Path(manifest).parent / path)
            entries.append(row)
    else:
        root = Path(checkpoints_dir)
        for config in sorted(root.rglob("config.json")):
            folder = config.parent
            has_weights = any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").exists()
            if not has_weights or any(
                re.fullmatch(r"checkpoint-\d+", p) for p in folder.relative_to(root).parts
            ):
                continue
            entries.append({"checkpoint": str(folder)})
    out = []
    for entry in entries:
        checkpoint = entry["checkpoint"]
        meta = run_metadata(Path(checkpoint)) if Path(checkpoint).exists() else {}
        run = entry.get("run") or meta.get("run") or default_run_name(resolve_checkpoint(checkpoint))
        out.append(
            {
                "checkpoint": checkpoint,
                "run": run,
                "method": entry.get("method") or meta.get("method") or run,
                "seed": entry.get("seed", meta.get("seed")),
            }
        )
    return out


# --------------------------------------------------------------------------------------------------
# summary bookkeeping


def pair_key(
    checkpoint: str,
    task: dict[str, Any],
    settings: dict[str, Any],
    limit: int | None,
    weights: str | None = None,
) -> str:
    """The identity of a finished (checkpoint, task): what must match for a rerun to be skipped.
    ``weights`` (:func:`tgrl.utils.weights_sha256` of a local checkpoint) makes a checkpoint retrained at the
    same path a new pair; hub ids have none and keep their keys."""
    ident = {
        "checkpoint": checkpoint,
        "task": task["task"],
        "lmms_task": task["lmms_task"],
        "data_sha256": task.get("data_sha256"),
        "limit": limit,
        "settings_hash": settings_hash(settings),
    }
    if weights is not None:
        ident["weights_sha256"] = weights
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def finished_keys(summary: Path) -> set[str]:
    if not summary.exists():
        return set()
    return {
        row["key"]
        for _, row in read_jsonl(summary, tolerate_torn_tail=True)
        if isinstance(row.get("key"), str)
    }


def append_locked(path: Path, rows: list[dict]) -> None:
    """Append under an exclusive lock: several evaluation processes may share one summary file. Every row
    gets ``machine`` (the CPU model and platform, :func:`tgrl.utils.machine_info`) unless it has one."""
    rows = [{**row, "machine": row.get("machine") or machine_info()} for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            append_jsonl(path, rows)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy (lmms-eval configs hold functions; docs may hold numpy values)."""
    return json.loads(json.dumps(obj, default=str))


def metric_n(samples: list[dict], metric: str) -> int:
    """Items behind a metric: documents carrying it, or distinct ``group`` values for grouped metrics
    (eval/tasks/tgrl/utils.py)."""
    values = [s[metric] for s in samples if metric in s]
    groups = [v.get("group") for v in values if isinstance(v, dict) and "group" in v]
    if groups:
        return len({json.dumps(g, sort_keys=True) for g in groups if g is not None})
    return len(values)


def summary_rows(
    result: dict[str, Any], samples: list[dict], base: dict[str, Any], builtin: bool
) -> list[dict[str, Any]]:
    """One row per metric ``<name>,<filter>`` of lmms-eval's result (stderr entries skipped)."""
    rows = []
    for full_name, value in result.items():
        if "," not in full_name or "_stderr" in full_name:
            continue
        metric = full_name.split(",", 1)[0]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RuntimeError(f"task {base['task']}: metric {metric} has no number ({value!r})")
        if math.isnan(value):  # an aggregation with nothing to score (e.g. twin pairs cut by --limit)
            continue
        row = {**base, "metric": metric, "value": float(value), "n": metric_n(samples, metric)}
        if value > 1.0 or value < 0.0:
            if builtin and 1.0 < value <= 100.0:  # lmms-eval built-ins report percent
                row["value"], row["scale"] = float(value) / 100.0, "percent_to_fraction"
            else:
                raise RuntimeError(
                    f"task {base['task']}: metric {metric} = {value} is not a fraction in [0, 1]"
                )
        rows.append(row)
    if not rows:
        raise RuntimeError(f"task {base['task']}: lmms-eval returned no metric (results: {result})")
    return rows


# --------------------------------------------------------------------------------------------------
# evaluation


def build_model(checkpoint: str, settings: dict[str, Any], device: str | None):
    from tgrl.lmms_model import TGRLModel

    return TGRLModel(
        pretrained=checkpoint,
        backend=settings["backend"],
        dtype=settings["dtype"],
        device=device,
        batch_size=settings["batch_size"],
        min_pixels=settings["min_pixels"],
        max_pixels=settings["max_pixels"],
        attn_implementation=settings["attn_implementation"],
        max_new_tokens=settings["max_new_tokens"],
        seed=settings["eval_seed"],
        tensor_parallel_size=settings["tensor_parallel_size"],
        gpu_memory_utilization=settings["gpu_memory_utilization"],
        max_model_len=settings["max_model_len"],
        visual_dependency=settings["visual_dependency"] or None,
        blind=bool(settings["blind"]),
    )


def gen_kwargs_string(settings: dict[str, Any]) -> str:
    """The decoding handed to lmms-eval (it overrides each task YAML's generation_kwargs)."""
    if settings["decoding"] == "greedy":
        return f"max_new_tokens={settings['max_new_tokens']},temperature=0,do_sample=False"
    return (
        f"max_new_tokens={settings['max_new_tokens']},temperature={settings['temperature']},"
        f"top_p={settings['top_p']},do_sample=True"
    )


def evaluate_task(lm, task_manager, task: dict[str, Any], settings: dict[str, Any], limit: int | None):
    """One lmms-eval run of one task; returns lmms-eval's result dict (None on ranks other than 0)."""
    from lmms_eval import evaluator

    seed = int(settings["eval_seed"])
    return evaluator.simple_evaluate(
        model=lm,
        tasks=[task["lmms_task"]],
        task_manager=task_manager,
        limit=limit,
        bootstrap_iters=0,
        log_samples=True,
        gen_kwargs=gen_kwargs_string(settings),
        repeats=parse_decoding(settings["decoding"]),
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        # one scoring worker: math-verify's wall-clock budget per answer (tgrl.rewards) must not
        # depend on how many threads compete for the CPU, or a score could change with the machine
        process_docs_parallel=1,
        verbosity="WARNING",
    )


def write_task_outputs(out_dir: Path, record: dict[str, Any], samples: list[dict]) -> None:
    logged = []
    for sample in samples:
        entry = {k: v for k, v in sample.items() if k not in ("arguments", "input_media")}
        arguments = sample.get("arguments") or []
        entry["input"] = arguments[0] if arguments else None
        logged.append(jsonable(entry))
    write_jsonl(out_dir / "samples.jsonl", logged)
    write_json(out_dir / "results.json", jsonable(record))


# --------------------------------------------------------------------------------------------------
# a run: plan what is pending, evaluate it, record each task


@dataclass
class RunLabel:
    """How a checkpoint's rows are labelled in the summary."""

    run: str
    method: str
    seed: int | None


def label_run(checkpoint: str, run: str | None, method: str | None, seed: int | None) -> RunLabel:
    """The given labels, else the checkpoint's ``tgrl_run.json``, else names derived from its folder."""
    meta = run_metadata(Path(checkpoint)) if Path(checkpoint).is_absolute() else {}
    run = run or meta.get("run") or default_run_name(checkpoint)
    return RunLabel(run, method or meta.get("method") or run, seed if seed is not None else meta.get("seed"))


@dataclass
class Plan:
    """What one invocation evaluates and where its rows go."""

    checkpoint: str
    label: RunLabel
    settings: dict[str, Any]
    tasks: list[dict[str, Any]]
    pending: list[dict[str, Any]]  # the tasks the summary does not hold yet
    summary: Path
    limit: int | None
    suite: str | None


def plan_evaluation(
    model: str,
    task_names: list[str],
    jsonl_specs: list[str],
    settings: dict[str, Any],
    *,
    suite: dict[str, Any] | None = None,
    suite_name: str | None = None,
    run: str | None = None,
    method: str | None = None,
    seed: int | None = None,
    limit: int | None = None,
    summary: str | Path = DEFAULT_SUMMARY,
    force: bool = False,
) -> Plan:
    """Resolve the checkpoint and the tasks (the suite's when none are given), key every (checkpoint,
    task) pair and leave out those the summary already holds. Cheap: no torch, no lmms-eval."""
    checkpoint = resolve_checkpoint(model)
    if suite and not task_names and not jsonl_specs:
        task_names = list(suite.get("tasks") or [])
        jsonl_specs = [f"{name}={REPO_ROOT / path}" for name, path in (suite.get("jsonl") or {}).items()]
    tasks = resolve_tasks(task_names, jsonl_specs)
    for task in tasks:
        if task["jsonl"] is not None:
            task["data_sha256"] = sha256_file(task["jsonl"])
    label = label_run(checkpoint, run, method, seed)
    summary = Path(summary)
    done = set() if force else finished_keys(summary)
    weights = weights_sha256(checkpoint)
    for task in tasks:
        task["key"] = pair_key(checkpoint, task, settings, limit, weights)
        task["weights_sha256"] = weights
    pending = [t for t in tasks if t["key"] not in done]
    for task in tasks:
        if task not in pending:
            print(
                f"[run_lmms_eval] {label.run} / {task['task']}: "
                f"finished earlier (summary {summary}); skipping"
            )
    return Plan(checkpoint, label, settings, tasks, pending, summary, limit, suite_name)


class EvaluationFailed(Exception):
    """lmms-eval raised inside a task; the message names the run, the task and the root cause."""


def load_task_manager(pending: list[dict[str, Any]], generated: Path):
    """lmms-eval's task manager over eval/tasks, the generic tasks written for the JSONL files into
    ``generated``, and the built-ins when a pending task is one."""
    from lmms_eval.tasks import TaskManager

    from tgrl.evaluation.tasks import write_jsonl_task

    include = [str(TASKS_DIR)]
    if any(t["jsonl"] is not None for t in pending):
        for task in pending:
            if task["jsonl"] is not None:
                task["n_rows"] = write_jsonl_task(task["jsonl"], generated, task["task"])["n"]
        include.append(str(generated))
    task_manager = TaskManager(
        "WARNING", include_path=include, include_defaults=any(t["builtin"] for t in pending)
    )
    missing = [t["lmms_task"] for t in pending if t["lmms_task"] not in task_manager.all_tasks]
    if missing:
        raise UserError(f"lmms-eval does not know task(s) {missing}; ours: {sorted(our_tasks())}")
    return task_manager


def explain_failure(err: BaseException, run: str, task: dict[str, Any]) -> str:
    """One line: which task failed, its root cause, and the fix when the data could not be fetched."""
    cause = err
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    hint = ""
    if any(w in f"{type(cause).__name__} {cause}".lower() for w in ("connection", "not cached", "offline")):
        hint = (
            " The benchmark data is not in the local Hugging Face cache and the network is not "
            "reachable: download it where there is network (HF_HOME shared with this machine)."
        )
    return (
        f"{run} / {task['task']} ({task['lmms_task']}) failed inside lmms-eval: "
        f"{type(cause).__name__}: {str(cause)[:300]}.{hint}"
    )


def run_plan(plan: Plan, out: str | Path, device: str | None) -> None:
    """Evaluate the pending tasks with one model load; each task's rows are appended as it finishes.
    Raises :class:`EvaluationFailed` (after printing lmms-eval's traceback) when a task fails."""
    # --- the expensive part starts here (torch, lmms-eval, the model) ---
    # Some lmms-eval task modules build an OpenAI client at import and fail without a key; a
    # placeholder is enough for them (our judge, when enabled, needs a real key).
    os.environ.setdefault("OPENAI_API_KEY", "EMPTY")
    from tgrl.utils import set_torch_threads

    set_torch_threads()
    rank = int(os.environ.get("RANK", "0"))
    run_dir = Path(out) / plan.label.run.replace("/", "__")
    task_manager = load_task_manager(plan.pending, run_dir / "_tasks")
    lm = build_model(plan.checkpoint, plan.settings, device)
    provenance = {
        "settings": {**plan.settings, "device": lm.settings()["device"]},
        "versions": package_versions(),
        "git_commit": git_commit(),
    }
    for task in plan.pending:
        print(f"[run_lmms_eval] {plan.label.run} / {task['task']} ({task['lmms_task']}): evaluating")
        started = time.time()
        try:
            results = evaluate_task(lm, task_manager, task, plan.settings, plan.limit)
        except Exception as err:  # keep the traceback, end with one line that says what failed
            traceback.print_exc()
            raise EvaluationFailed(explain_failure(err, plan.label.run, task)) from None
        seconds = round(time.time() - started, 2)
        grounding = gather_grounding(lm, task["lmms_task"]) if plan.settings["visual_dependency"] else None
        item_errors = gather_item_errors(lm, task["lmms_task"])
        if rank == 0:
            record_task(plan, task, results, lm, provenance, run_dir, seconds, grounding, item_errors)


def gather_item_errors(lm, lmms_task: str) -> dict[int, str]:
    """The documents of one task that got no generation (doc_id -> why; tgrl.lmms_model), from every
    process."""
    errors = lm.pop_item_errors(lmms_task)
    if lm.world_size > 1:
        import torch.distributed as dist

        gathered: list = [None] * lm.world_size
        dist.all_gather_object(gathered, errors)
        errors = {doc: why for part in gathered for doc, why in part.items()}
    return errors


def gather_grounding(lm, lmms_task: str) -> tuple[dict[int, list[dict]], float]:
    """The model's grounding records of one task (doc_id -> records) from every process (data parallel
    splits the documents), and the seconds the extra passes took (the slowest process)."""
    records, seconds = lm.pop_grounding(lmms_task)
    if lm.world_size > 1:
        import torch.distributed as dist

        gathered: list = [None] * lm.world_size
        dist.all_gather_object(gathered, (records, seconds))
        records = {doc: recs for part, _ in gathered for doc, recs in part.items()}
        seconds = max(sec for _, sec in gathered)
    return records, seconds


def response_correct(sample: dict, k: int, j: int, response: str, process_results) -> bool | None:
    """Whether response ``j`` of a logged sample was scored correct (its task's ``acc``; None when the task
    has no ``acc``). One response per document: the document's ``acc``. avg@k: the task's own
    ``process_results`` on that response alone (what lmms-eval does for its per-response scores)."""
    if "acc" not in sample:
        return None
    if k == 1:
        return float(sample["acc"]) >= 1.0
    if not callable(process_results):
        return None
    return float(process_results(sample["doc"], [[response]]).get("acc", 0.0)) >= 1.0


def attach_grounding(
    samples: list[dict], records: dict[int, list[dict]], lmms_task: str, process_results
) -> list[tuple[dict, bool | None]]:
    """Put each response's grounding record into its logged sample (field ``grounding``, plus ``correct``
    per response) and return (record, correct) pairs for :func:`tgrl.grounding.task_metrics`. A sample
    without its records is an internal error, not a silent gap in the metric."""
    pairs = []
    for sample in samples:
        responses = responses_of_sample(sample)
        found = records.get(int(sample["doc_id"]), [])
        if len(found) != len(responses):
            raise RuntimeError(
                f"{lmms_task} doc {sample['doc_id']}: {len(responses)} responses but {len(found)} "
                "visual-dependency records"
            )
        for j, (record, response) in enumerate(zip(found, responses, strict=True)):
            record["correct"] = response_correct(sample, len(responses), j, response, process_results)
            pairs.append((record, record["correct"]))
        sample["grounding"] = found
    return pairs


def responses_of_sample(sample: dict) -> list[str]:
    """The k responses of a logged sample (``filtered_resps`` is ``[[r1, ..., rk]]`` with our filter)."""
    from tgrl.evaluation.tasks import responses_of

    return responses_of(sample.get("filtered_resps") or sample.get("resps") or [])


def grounding_rows(
    pairs: list[tuple[dict, bool | None]], base: dict[str, Any], seconds: float
) -> list[dict[str, Any]]:
    """Summary rows of the grounding metrics (tgrl.grounding.task_metrics): mean s_t values (not fractions)
    and the share above the threshold."""
    from tgrl.grounding import task_metrics

    return [
        {
            **base,
            "metric": metric,
            "value": float(value),
            "n": n,
            "unit": "share" if "_share" in metric else "s_t",
            "grounding_seconds": round(seconds, 2),
        }
        for metric, (value, n) in task_metrics(pairs).items()
    ]


def record_task(
    plan: Plan,
    task: dict[str, Any],
    results: dict[str, Any] | None,
    lm,
    provenance: dict[str, Any],
    run_dir: Path,
    seconds: float,
    grounding: tuple[dict[int, list[dict]], float] | None = None,
    item_errors: dict[int, str] | None = None,
) -> None:
    """Write one finished task's ``results.json`` and ``samples.jsonl`` and append its summary rows (with
    ``grounding``, the model's visual-dependency records: their rows too, and the token s_t per sample).
    ``item_errors`` (doc_id -> why it was not generated; scored as an empty response) go into the samples
    (field ``error``), results.json and, counted, the summary rows (``item_errors``)."""
    if results is None or task["lmms_task"] not in results.get("results", {}):
        raise RuntimeError(f"lmms-eval returned no results for {task['lmms_task']}")
    samples = results.get("samples", {}).get(task["lmms_task"], [])
    settings_id = settings_hash(plan.settings)
    out_dir = run_dir / f"{task['task']}__{settings_id}"
    base = {
        "run": plan.label.run,
        "method": plan.label.method,
        "seed": plan.label.seed,
        "checkpoint": plan.checkpoint,
        "task": task["task"],
        "decoding": decoding_label(plan.settings),
        "suite": plan.suite or "adhoc",
        "git_commit": provenance["git_commit"],
        "versions": provenance["versions"],
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            **provenance["settings"],
            "model": lm.settings(),
            "generation": lm.generation_used.get(task["lmms_task"]),
            "extraction": "tgrl.rewards.score_completion" if not task["builtin"] else "lmms-eval built-in",
        },
        "key": task["key"],
        "weights_sha256": task.get("weights_sha256"),
        "settings_hash": settings_id,
        "lmms_task": task["lmms_task"],
        "limit": plan.limit,
        "eval_seconds": seconds,
        "results_dir": str(out_dir),
    }
    if task["jsonl"] is not None:
        base["settings"]["data"] = {"jsonl": str(task["jsonl"]), "sha256": task["data_sha256"]}
    if item_errors:
        base["item_errors"] = len(item_errors)
        for sample in samples:
            if int(sample["doc_id"]) in item_errors:
                sample["error"] = item_errors[int(sample["doc_id"])]
        first = min(item_errors)
        print(
            f"[run_lmms_eval] {plan.label.run} / {task['task']}: WARNING {len(item_errors)} item(s) not "
            f"generated, scored as wrong (doc {first}: {item_errors[first]})"
        )
    rows = summary_rows(results["results"][task["lmms_task"]], samples, base, task["builtin"])
    if grounding is not None:
        records, grounding_seconds = grounding
        config = results.get("configs", {}).get(task["lmms_task"]) or {}
        pairs = attach_grounding(samples, records, task["lmms_task"], config.get("process_results"))
        rows += grounding_rows(pairs, base, grounding_seconds)
    record = {
        "task": task["task"],
        "lmms_task": task["lmms_task"],
        "results": results["results"][task["lmms_task"]],
        "n_samples": results.get("n-samples", {}).get(task["lmms_task"]),
        "config": results.get("configs", {}).get(task["lmms_task"]),
        "lmms_eval_version": results.get("lmms_eval_version"),
        "summary_rows": rows,
        "item_errors": {str(doc): why for doc, why in sorted((item_errors or {}).items())},
    }
    write_task_outputs(out_dir, record, samples)
    append_locked(plan.summary, rows)
    shown = ", ".join(f"{r['metric']}={r['value']:.4f} (n={r['n']})" for r in rows)
    print(f"[run_lmms_eval] {plan.label.run} / {task['task']}: {shown} in {seconds:.1f}s -> {out_dir}")
    gain = multimodal_gain_rows(plan, task, rows)
    if gain:
        append_locked(plan.summary, gain)
        shown = ", ".join(f"{r['metric']}={r['value']:+.4f}" for r in gain)
        print(f"[run_lmms_eval] {plan.label.run} / {task['task']}: multimodal gain {shown}")


def multimodal_gain_rows(
    plan: Plan, task: dict[str, Any], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """MMStar's multimodal gain (arXiv 2403.20330) once both halves are in the summary: for each fraction
    metric of this task, ``mg_<metric>`` = value with the image - value blind (same checkpoint, task, data,
    limit and every other setting), labelled like the blind rows. Whichever half runs second writes it."""
    partner = {**plan.settings, "blind": not plan.settings["blind"]}
    partner_key = pair_key(plan.checkpoint, task, partner, plan.limit, task.get("weights_sha256"))
    found = [r for _, r in read_jsonl(plan.summary, tolerate_torn_tail=True) if r.get("key") == partner_key]
    if not found:
        return []
    latest = {r["metric"]: r for r in found}  # appended in time order: the last row of a metric wins
    mine = {r["metric"]: r for r in rows}
    sighted, blind = (latest, mine) if plan.settings["blind"] else (mine, latest)
    key = "mg-" + hashlib.sha256(f"{task['key']}|{partner_key}".encode()).hexdigest()[:24]
    if key in finished_keys(plan.summary):
        return []
    out = []
    for metric, row in sorted(blind.items()):
        if metric not in sighted or "unit" in row or metric.startswith(MG_PREFIX):
            continue  # s_t rows have units; only fractions (accuracies) have a gain
        out.append(
            {
                **row,
                "metric": MG_PREFIX + metric,
                "value": float(sighted[metric]["value"]) - float(row["value"]),
                "unit": "difference of fractions (with image - blind)",
                "key": key,
                "gain_of": {"sighted_key": sighted[metric]["key"], "blind_key": row["key"]},
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
    return out
