"""Run the tiny mini-replication's fair protocol (tgrl/protocol.py): tune on validation, then test once.

    python scripts/run_protocol.py --protocol train/tiny_protocol.yaml \
        --work checkpoints/tiny_repro --data data/tiny_repro --out results/tiny [--jobs 2]

Needs the weak base (WORK/base) and the filtered expert sets (DATA/experts, DATA/experts_nofilter) that
scripts/reproduce_tiny.sh builds first. Stages, each resumable (finished trainings have a done marker,
finished evaluations a summary row; a rerun only does what is missing):

1. tune: every grid entry of every method, seed 0, scored on the validation split (synthetic_val);
2. select: the best validation accuracy per method (ties: the earlier entry) -> OUT/selected.json and
   the tuning table OUT/tables/tiny_tuning.{md,csv};
3. final: the selected entries at every seed, the ablations (one key of TGRL's selected entry changed)
   and the weak base, scored once on the test and shifted splits (greedy, and avg@8 at T=1), with the
   teacher-forced expert content-token probability and the training diagnostics; plus, as evaluations of
   their own (each with its own settings key), the visual dependency s_t of each checkpoint's own greedy
   reasoning on the test split (tgrl/grounding.py), the counterfactual twin split of the test split
   (synthetic_test_twins: twin tracking, move invariance), the blind control (--blind: accuracy with
   the images blanked, and the multimodal gain) and the s_t at the fact tokens of the oracle trajectories
   at the run's rollout temperature (probe --fact-dependency). Added to a finished protocol, a rerun runs
   only the evaluations whose keys the summary lacks.

Runs go JOBS at a time (each a single-threaded process); the first failure stops the scheduling and names
its log.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import yaml

from tgrl.evaluation.runner import append_locked
from tgrl.protocol import (
    Protocol,
    RunSpec,
    ablation_runs,
    budget_of,
    final_runs,
    load_protocol,
    select,
    tuning_runs,
    tuning_table,
)
from tgrl.utils import UserError, atomic_write_text, cli, read_jsonl, write_json

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
DONE = ".tgrl_done"


class Runner:
    """Trains and scores protocol runs with the repo's own CLIs (train/*.py, eval/*.py)."""

    def __init__(self, protocol: Protocol, work: Path, data: Path, out: Path, quick: bool = False) -> None:
        self.protocol, self.work, self.data, self.out = protocol, work, data, out
        self.quick = quick  # demo: no avg@8 (2 min per checkpoint on 2 cores) and no validation of the base
        self.summary = out / "summary.jsonl"
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.recipes = protocol.recipes if protocol.recipes.is_absolute() else REPO / protocol.recipes

    # ------------------------------------------------------------------ commands
    def sh(self, log: Path, *cmd: object) -> None:
        with open(log, "a") as fh:
            fh.write(f"\n$ {' '.join(map(str, cmd))}\n")
            fh.flush()
            code = subprocess.call([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        if code:
            raise RuntimeError(f"failed (exit {code}): see {log}")

    def train(self, run: RunSpec) -> Path:
        """Train ``run`` (skipped when its done marker exists); returns its checkpoint folder."""
        out = self.work / run.name
        if (out / DONE).exists():
            return out
        log = self.logs / f"{run.name}.log"
        base, budget = self.work / "base", self.protocol.budget_steps
        train_file = self.data / run.train_set / "train.jsonl"
        overrides = {k: v for k, v in run.overrides.items() if k != "sft_steps"}
        common = [f"seed={run.seed}", f"train_file={train_file}"]
        if run.kind == "sft":
            steps = overrides.pop("max_steps", budget)
            self.sh(
                log, PY, "train/sft.py", "--config", self.recipes / f"{run.recipe}.yaml", f"output_dir={out}",
                f"model_name_or_path={base}", f"max_steps={steps}", *common, *_kv(overrides),
            )  # fmt: skip
        else:
            start = base
            rl_steps = budget
            if run.kind == "sft_rl":
                sft_steps = int(run.overrides["sft_steps"])
                start, rl_steps = self.work / f"{run.name}_sft", budget - sft_steps
                if not (start / DONE).exists():
                    self.sh(
                        log, PY, "train/sft.py", "--config", self.recipes / "sft.yaml", f"output_dir={start}",
                        f"model_name_or_path={base}", f"max_steps={sft_steps}", *common,
                    )  # fmt: skip
                    (start / DONE).touch()
            self.sh(
                log, PY, "train/rl.py", "--config", self.recipes / f"{run.recipe}.yaml", f"output_dir={out}",
                f"model_name_or_path={start}", f"max_steps={rl_steps}", "save_steps=100",
                "resume_from_checkpoint=auto", *common, *_kv(overrides),
            )  # fmt: skip
        (out / DONE).touch()
        return out

    def rollout_temperature(self, recipe: str | None) -> float:
        """The temperature a run's rollouts sample at (its recipe's ``temperature``); the base and SFT,
        which have none, get GRPO's: the temperature every RL run from them samples at."""
        for name in (recipe, "grpo"):
            path = self.recipes / f"{name}.yaml"
            if name and path.is_file():
                value = yaml.safe_load(path.read_text()).get("temperature")
                if value is not None:
                    return float(value)
        raise UserError(f"{self.recipes}: no recipe gives a rollout temperature (grpo.yaml: temperature)")

    def evaluate(
        self,
        name: str,
        method: str,
        seed: int,
        checkpoint: Path,
        splits: list[str],
        final: bool,
        temperature: float | None = None,
    ) -> None:
        """Score ``checkpoint`` greedily on ``splits``; ``final`` (a run scored once on the test split) adds
        avg@8 (not in demo mode), the twin split, the blind control and the expert-token probes (T = 1,
        and s_t at the fact tokens at ``temperature``, the run's rollout temperature; default GRPO's)."""
        temperature = temperature if temperature is not None else self.rollout_temperature(None)
        log = self.logs / f"{name}.eval.log"
        specs = [f"synthetic_{s}={self.data / 'synthetic' / f'{s}.jsonl'}" for s in splits]
        jsonl = [arg for spec in specs for arg in ("--jsonl", spec)]
        ident = ["--out", self.work / "eval", "--summary", self.summary, "--run", name, "--method", method]
        ident += ["--seed", seed]
        self.sh(log, PY, "eval/run_lmms_eval.py", "--model", checkpoint, "--suite", "tiny", *jsonl, *ident)
        if "test" in splits:  # grounding of the checkpoint's own greedy reasoning: its own settings key,
            # so the greedy rows above stay valid and are not recomputed (its acc rows repeat theirs: same
            # greedy responses, the extra teacher-forced passes come after generation)
            test = ["--jsonl", f"synthetic_test={self.data / 'synthetic' / 'test.jsonl'}"]
            self.sh(
                log, PY, "eval/run_lmms_eval.py", "--model", checkpoint, "--suite", "tiny", *test,
                "--visual-dependency", *ident,
            )  # fmt: skip
        if final and not self.quick:  # sampled behaviour: mean accuracy of 8 samples at T=1 (test split)
            test = ["--jsonl", f"synthetic_test={self.data / 'synthetic' / 'test.jsonl'}"]
            self.sh(
                log, PY, "eval/run_lmms_eval.py", "--model", checkpoint, "--suite", "tiny", *test,
                "--decoding", "avg@8", *ident,
            )  # fmt: skip
        if final:
            test = ["--jsonl", f"synthetic_test={self.data / 'synthetic' / 'test.jsonl'}"]
            twins = ["--jsonl", f"synthetic_test_twins={self.data / 'synthetic' / 'test_twins.jsonl'}"]
            model = ["--model", checkpoint, "--suite", "tiny"]
            self.sh(log, PY, "eval/run_lmms_eval.py", *model, *twins, *ident)
            self.sh(log, PY, "eval/run_lmms_eval.py", *model, *test, "--blind", *ident)
            probe = ["--model", checkpoint, "--jsonl", self.data / "synthetic" / "test.jsonl"]
            probe += ["--task", "synthetic_test", *ident[2:]]
            self.sh(log, PY, "eval/probe_expert_tokens.py", *probe)
            at_rollout = ["--temperature", temperature, "--fact-dependency"]
            self.sh(log, PY, "eval/probe_expert_tokens.py", *probe, *at_rollout)

    def record_budget(self, run: RunSpec, checkpoint: Path) -> None:
        """Budget rows (optimizer steps, sequences, training minutes) beside the run's test rows."""
        if any(r.get("run") == run.name and r.get("metric") == "optimizer_steps" for r in self.rows()):
            return
        minutes = 0.0
        for folder in (checkpoint, self.work / f"{run.name}_sft"):
            results = folder / "train_results.json"
            if results.is_file():
                minutes += json.loads(results.read_text()).get("train_runtime", 0.0) / 60
        values = {**budget_of(self.protocol, run), "train_minutes": minutes}
        common = {"run": run.name, "method": run.method, "seed": run.seed, "task": "synthetic_test"}
        common.update(decoding="training", suite="tiny", checkpoint=str(checkpoint), config=run.label)
        append_locked(
            self.summary, [{**common, "metric": k, "value": float(v), "n": 1} for k, v in values.items()]
        )

    def rows(self) -> list[dict]:
        return [row for _, row in read_jsonl(self.summary)] if self.summary.is_file() else []

    # ------------------------------------------------------------------ stages
    def tune(self, run: RunSpec) -> None:
        checkpoint = self.train(run)
        self.evaluate(run.name, run.method, run.seed, checkpoint, ["val"], final=False)

    def final(self, run: RunSpec) -> None:
        checkpoint = self.train(run)
        temperature = float(run.overrides.get("temperature") or self.rollout_temperature(run.recipe))
        self.evaluate(
            run.name,
            run.method,
            run.seed,
            checkpoint,
            ["test", "shifted"],
            final=True,
            temperature=temperature,
        )
        if run.kind != "sft":
            self.sh(
                self.logs / f"{run.name}.eval.log", PY, "eval/summarize_training.py", "--run-dir", checkpoint,
                "--run", run.name, "--method", run.method, "--seed", run.seed, "--summary", self.summary,
            )  # fmt: skip
        self.record_budget(run, checkpoint)

    def base(self) -> None:
        splits = ["test", "shifted"] if self.quick else ["val", "test", "shifted"]
        self.evaluate("base", "base", 0, self.work / "base", splits, final=True)


def write_runs(out: Path, work: Path, runs: list[RunSpec], protocol: Protocol) -> None:
    """OUT/runs.json: the scored runs with their figure group (eval/plot_training.py --runs-json): the main
    methods in one set of overlays, the ablations (with TGRL for reference) in another."""
    listed = []
    for run in runs:
        group = "ablations" if run.method in protocol.ablations else "main"
        listed.append(
            {"name": run.name, "method": run.method, "group": group, "checkpoint": str(work / run.name)}
        )
        if run.method == "tgrl" and protocol.ablations:
            listed.append({**listed[-1], "group": "ablations"})
    write_json(out / "runs.json", listed)


def demo(protocol: Protocol, runner: Runner, args: argparse.Namespace, t0: float) -> None:
    """The short version (make demo): the committed selection, one seed, no tuning and no ablations."""
    if not args.selected.is_file():
        raise UserError(f"{args.selected}: no selection. Fix: run the full protocol once (make reproduce)")
    selected = json.loads(args.selected.read_text())["selected"]
    methods = args.methods or list(protocol.methods)
    unknown = sorted(set(methods) - set(protocol.methods))
    if unknown:
        raise UserError(f"--methods {unknown}: not in {protocol.path} (methods: {sorted(protocol.methods)})")
    runs = [r for r in final_runs(protocol, selected) if r.method in methods and r.seed == protocol.seeds[0]]
    say(
        t0,
        f"demo: {', '.join(f'{r.method} [{r.label}]' for r in runs)} from {args.selected}, seed "
        f"{protocol.seeds[0]}",
    )
    # training first: the base's evaluation would hold a core while a run waits
    pool(args.jobs, [(r.name, runner.final, r) for r in runs] + [("base", lambda _: runner.base(), None)])
    write_runs(args.out, args.work, runs, protocol)
    say(t0, "done")


def _kv(overrides: dict) -> list[str]:
    return [f"{key}={value}" for key, value in overrides.items()]


def pool(jobs: int, tasks: list) -> None:
    """Run ``(label, fn, arg)`` tasks ``jobs`` at a time; the first failure cancels what has not started."""
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        futures = {ex.submit(fn, arg): label for label, fn, arg in tasks}
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                for other in pending:
                    other.cancel()
                raise UserError(f"{futures[future]}: {future.exception()}")
        for future in pending:
            future.result()


def say(t0: float, message: str) -> None:
    print(f"[protocol +{(time.time() - t0) / 60:.0f} min] {message}", flush=True)


@cli
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", type=Path, default=REPO / "train/tiny_protocol.yaml")
    p.add_argument(
        "--work", type=Path, required=True, help="checkpoints of the runs (WORK/base is the start)"
    )
    p.add_argument("--data", type=Path, required=True, help="synthetic splits and filtered expert sets")
    p.add_argument("--out", type=Path, required=True, help="summary.jsonl, selected.json, tables")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--stage", choices=["tune", "all"], default="all", help="tune: stop after the selection")
    p.add_argument(
        "--selected",
        type=Path,
        help="demo mode: skip tuning, train the entries this selected.json (a full run's) chose, seed 0 only",
    )
    p.add_argument("--methods", nargs="+", help="with --selected: only these methods (default: all)")
    args = p.parse_args(argv)
    protocol = load_protocol(args.protocol)
    if not (args.work / "base").is_dir():
        raise UserError(f"{args.work / 'base'}: no weak base. Fix: run scripts/reproduce_tiny.sh (stage 3)")
    args.out.mkdir(parents=True, exist_ok=True)
    runner = Runner(protocol, args.work, args.data, args.out, quick=args.selected is not None)
    t0 = time.time()

    if args.selected:
        demo(protocol, runner, args, t0)
        return
    runs = tuning_runs(protocol)
    per_method = len(runs) // len(protocol.methods)
    say(
        t0,
        f"tune: {len(runs)} runs ({len(protocol.methods)} methods x {per_method} configurations, seed "
        f"{protocol.seeds[0]}, {protocol.budget_steps} optimizer steps each), validation split",
    )
    pool(args.jobs, [("base", lambda _: runner.base(), None)] + [(r.name, runner.tune, r) for r in runs])
    rows = runner.rows()
    selected = select(protocol, rows)
    grid = {m: protocol.grid(m)[i] for m, i in selected.items()}
    write_json(
        args.out / "selected.json", {"protocol": str(args.protocol), "selected": selected, "entries": grid}
    )
    md, csv = tuning_table(protocol, rows, selected)
    caption = (
        f"Validation accuracy of every tuning configuration (seed {protocol.seeds[0]}, "
        f"{protocol.budget_steps} optimizer steps from the weak base, {protocol.path.name}); the selected "
        f"entry "
        "(best validation accuracy, ties to the earlier entry) is the one trained with every seed and "
        "scored on "
        "the test split. Generated by scripts/run_protocol.py from summary.jsonl; do not edit by hand.\n\n"
    )
    atomic_write_text(
        args.out / "tables" / "tiny_tuning.md",
        "## Tiny tier: tuning on the validation split\n\n" + caption + md,
    )
    atomic_write_text(args.out / "tables" / "tiny_tuning.csv", csv)
    say(t0, "selected: " + ", ".join(f"{m} [{protocol.methods[m]['grid'][i]}]" for m, i in selected.items()))
    if args.stage == "tune":
        return

    finals = final_runs(protocol, selected) + ablation_runs(protocol, selected)
    say(
        t0,
        f"final: {len(finals)} runs (selected entries x seeds {protocol.seeds}, ablations), test + shifted",
    )
    pool(args.jobs, [(r.name, runner.final, r) for r in finals])
    write_runs(args.out, args.work, finals, protocol)
    say(t0, "done")


if __name__ == "__main__":
    main()
