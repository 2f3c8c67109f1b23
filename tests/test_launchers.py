"""Launchers: DRY_RUN prints the exact command, preflight failures stop a real run with a clear message;
accelerate + DeepSpeed ZeRO-2 on CPU runs the trainer (slow: the first launch JIT-compiles an op)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_expert_set

REPO = Path(__file__).resolve().parent.parent


def bash(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    for key in (
        "NNODES", "NODE_RANK", "MASTER_ADDR", "ZERO", "VLLM_MODE", "MODEL", "DATA", "OUTPUT", "NUM_GPUS",
        "KEEP_GLOBAL_BATCH", "SHARED_OUTPUT_OK", "CHECKPOINTS", "RECIPE_GPUS", "SMOKE_VLLM", "SMOKE_DEVICE",
        "STEPS",
    ):  # fmt: skip
        if key not in env:
            full_env.pop(key, None)
    return subprocess.run(
        ["bash", f"scripts/{script}", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def parse_script(script: str, args: list[str]):
    """``args`` through the argument parsing of ``script`` itself: the recipe parser for train/, each
    script's own ``build_parser`` (with its ``--config`` file support where it has one) elsewhere."""
    import importlib

    from trl import ModelConfig, SFTConfig

    from tgrl.recipes import parse_recipe
    from tgrl.teachers.base import parse_args_with_config
    from tgrl.tgrl_config import RLScriptArguments, SFTScriptArguments
    from tgrl.trainer import TGRLConfig

    if script in ("train/rl.py", "train/sft.py"):
        types = (RLScriptArguments, TGRLConfig, ModelConfig)
        if script == "train/sft.py":
            types = (SFTScriptArguments, SFTConfig, ModelConfig)
        return parse_recipe(types, [*args, "use_cpu=true", "bf16=false"])  # this machine has no GPU
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    if script in ("data_prep/build_teacher_trajectories.py", "data_prep/filter_trajectories.py"):
        return parse_args_with_config(module.build_parser(), args)
    return module.build_parser().parse_args(args)


def parse_printed(command: list[str]) -> str:
    """A printed command (interpreter or accelerate first) through the parsers of what it runs: accelerate
    launch's own parser, then the launched script's. Returns the script."""
    from accelerate.commands.launch import launch_command_parser

    program, *args = command
    if program.endswith("accelerate") and args[:1] == ["launch"]:
        launched = launch_command_parser().parse_args(args[1:])
        script, args = launched.training_script, launched.training_script_args
    else:
        script, *args = args
    parse_script(script, args)
    return script


# Every launcher with a DRY_RUN (scripts/_launch.sh, which they source, with them), and the environment
# of its dry run: the printed commands must be ones the launched programs accept.
SMOKE_SCRIPTS = [
    "data_prep/build_tiny_model.py",
    "data_prep/make_synthetic.py",
    "data_prep/build_teacher_trajectories.py",
    "data_prep/filter_trajectories.py",
    "data_prep/build_teacher_trajectories.py",
    "train/rl.py",
    "train/rl.py",
    "eval/run_lmms_eval.py",
]

DRY_RUNS = {
    "run_tgrl_7b.sh": ({}, ["train/rl.py"]),
    "run_grpo_7b.sh": (
        {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.1.2.3", "ZERO": "3", "VLLM_MODE": "server"},
        ["train/rl.py"],
    ),
    "run_sft_rl_7b.sh": ({"SFT_OUTPUT": "/tmp/tgrl-no-such-sft"}, ["train/sft.py", "train/rl.py"]),
    "run_gpu_7b.sh": (
        {"RECIPE": "train/recipes/7b/luffy_vl.yaml", "NUM_GPUS": "4", "CHECKPOINTS": "last"},
        ["train/rl.py"],
    ),
    "run_tiny.sh tgrl seed=1": ({"USE_ACCELERATE": "1", "NUM_PROCS": "2"}, ["train/rl.py"]),
    "run_tiny.sh base_direct_sft": ({}, ["train/sft.py"]),
    "smoke_gpu.sh": ({}, SMOKE_SCRIPTS),
}


@pytest.mark.parametrize("launcher", DRY_RUNS)
def test_dry_run_commands_pass_the_launched_programs_own_parsers(launcher, tmp_path):
    import shlex

    env, scripts = DRY_RUNS[launcher]
    script, *args = launcher.split()
    result = bash(script, *args, DRY_RUN="1", WORK=str(tmp_path / "w"), **env)
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert [parse_printed(command) for command in commands] == scripts


def test_bench_passes_its_arguments_to_both_benchmarks_parsers(tmp_path):
    """bench.sh has no dry run: a stand-in interpreter records what it is given."""
    import shlex

    log = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%q " "$@" >> {log}\necho >> {log}\n')
    fake.chmod(0o755)
    result = bash("bench.sh", "--no-reuse-base", PY=str(fake), OUT=str(tmp_path / "out"), QUICK="1")
    assert result.returncode == 0, result.stderr
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    scripts = [parse_printed([str(fake), *call]) for call in calls if call[0] != "-"]
    assert scripts == ["benchmarks/bench_step.py", "benchmarks/bench_throughput.py"]


def test_dry_run_prints_the_7b_command():
    result = bash("run_tgrl_7b.sh", DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    command = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert len(command) == 1
    cmd = command[0]
    assert "accelerate launch" in cmd and "train/deepspeed/zero2.json" in cmd
    assert "--config_file train/accelerate/zero2.yaml" in cmd and "--num_processes 8" in cmd
    assert "train/rl.py --config train/recipes/7b/tgrl.yaml" in cmd and "resume_from_checkpoint=auto" in cmd


def test_dry_run_switches_and_overrides():
    result = bash(
        "run_grpo_7b.sh",
        "seed=3",
        DRY_RUN="1",
        ZERO="3",
        NNODES="2",
        NODE_RANK="1",
        MASTER_ADDR="10.1.2.3",
        VLLM_MODE="server",
        MODEL="/models/qwen",
        FREEZE_VISION="0",
        WANDB_PROJECT="tgrl",
    )
    assert result.returncode == 0, result.stderr
    cmd = result.stdout.strip().splitlines()[-1]
    for part in (
        "train/deepspeed/zero3.json",
        "--num_machines 2",
        "--num_processes 16",
        "--machine_rank 1",
        "--main_process_ip 10.1.2.3",
        "train/recipes/7b/grpo.yaml",
        "model_name_or_path=/models/qwen",
        "freeze_vision_tower=false",
        "vllm_mode=server",
        "vllm_server_host=",
        "report_to=wandb",
        "seed=3",
    ):
        assert part in cmd, part
    assert "preflight: FAIL model not found: /models/qwen" in result.stderr  # reported, not fatal


def test_multinode_without_master_addr_is_reported():
    result = bash("run_tgrl_7b.sh", DRY_RUN="1", NNODES="2")
    assert result.returncode == 0 and "needs MASTER_ADDR" in result.stderr


# --------------------------------------------------------------------------------------------------
# multi-node: the global batch stays fixed, output_dir must be shared, disk is said


def command_of(result) -> str:
    (cmd,) = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    return cmd


def test_more_gpus_keep_the_global_batch():
    two_nodes = bash("run_tgrl_7b.sh", DRY_RUN="1", NNODES="2", MASTER_ADDR="10.0.0.1", SHARED_OUTPUT_OK="1")
    assert two_nodes.returncode == 0, two_nodes.stderr
    cmd = command_of(two_nodes)
    assert (
        "--num_processes 16" in cmd
        and "gradient_accumulation_steps=8" in cmd
        and "steps_per_generation=16" in cmd
    )
    assert (
        "x 16 GPUs x gradient_accumulation_steps 8 = 512 sequences per optimizer step (kept"
        in two_nodes.stdout
    )
    four_gpus = bash("run_grpo_7b.sh", DRY_RUN="1", NUM_GPUS="4")
    assert "gradient_accumulation_steps=32 steps_per_generation=64" in command_of(four_gpus)
    one_node = command_of(bash("run_tgrl_7b.sh", DRY_RUN="1"))
    assert "gradient_accumulation_steps=" not in one_node and "steps_per_generation=" not in one_node
    grown = bash("run_tgrl_7b.sh", DRY_RUN="1", NNODES="2", MASTER_ADDR="10.0.0.1", KEEP_GLOBAL_BATCH="0")
    assert "gradient_accumulation_steps=" not in command_of(grown)
    assert "= 1024 sequences per optimizer step (KEEP_GLOBAL_BATCH=0" in grown.stdout


def test_explicit_batch_override_wins_and_indivisible_counts_are_refused():
    result = bash("run_tgrl_7b.sh", "gradient_accumulation_steps=4", DRY_RUN="1", NUM_GPUS="4")
    cmd = command_of(result)
    assert cmd.count("gradient_accumulation_steps=") == 1 and "gradient_accumulation_steps=4" in cmd
    assert "steps_per_generation=64" in cmd
    odd = bash("run_tgrl_7b.sh", DRY_RUN="1", NUM_GPUS="3")
    assert (
        "preflight: FAIL gradient_accumulation_steps 16 x 8 recipe GPUs is not divisible by 3 GPUs"
        in odd.stderr
    )
    both = bash("run_sft_rl_7b.sh", DRY_RUN="1", NUM_GPUS="4", SFT_OUTPUT="/tmp/tgrl-no-such-sft")
    sft, rl = [line for line in both.stdout.splitlines() if line.startswith("+ ")]
    assert "gradient_accumulation_steps=8" in sft and "steps_per_generation" not in sft  # SFT: 4 -> 8
    assert "gradient_accumulation_steps=32 steps_per_generation=64" in rl


def test_multinode_output_must_be_shared(tmp_path):
    fs = subprocess.run(
        ["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True
    ).stdout.strip()
    env = dict(DRY_RUN="1", NNODES="2", MASTER_ADDR="10.0.0.1", OUTPUT=str(tmp_path / "run"))
    if fs in ("ext2/ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlayfs", "overlay"):
        assert "is on a local filesystem" in bash("run_tgrl_7b.sh", **env).stderr
    assert "local filesystem" not in bash("run_tgrl_7b.sh", SHARED_OUTPUT_OK="1", **env).stderr
    assert (
        "local filesystem" not in bash("run_tgrl_7b.sh", DRY_RUN="1", OUTPUT=str(tmp_path)).stderr
    )  # 1 node


def test_checkpoint_size_is_said_and_smaller_modes_offered():
    full = bash("run_tgrl_7b.sh", DRY_RUN="1")
    assert "checkpoints (full): ~108 GB each x 3 kept = ~324 GB" in full.stderr
    assert "resume_from_checkpoint=auto" in command_of(full)
    last = bash("run_tgrl_7b.sh", DRY_RUN="1", CHECKPOINTS="last")
    assert "save_total_limit=1" in command_of(last) and "resume_from_checkpoint=auto" in command_of(last)
    assert "~108 GB each x 1 kept" in last.stderr
    model_only = bash("run_tgrl_7b.sh", DRY_RUN="1", CHECKPOINTS="model_only")
    assert "save_only_model=true" in command_of(model_only) and "resume_from_checkpoint" not in command_of(
        model_only
    )
    assert "~17 GB each x 3 kept" in model_only.stderr
    assert bash("run_tgrl_7b.sh", DRY_RUN="1", CHECKPOINTS="some").returncode == 2


# --------------------------------------------------------------------------------------------------
# the one-GPU smoke test: what it runs, that it refuses without a GPU or vLLM, and its
# one line per stage (through a fake GPU stack: there is no GPU here)


def smoke(tmp_path, **env):
    return bash("smoke_gpu.sh", WORK=str(tmp_path / "smoke"), PY=sys.executable, **env)


def smoke_commands(result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_smoke_dry_run_prints_the_7b_keys_and_every_stage(tmp_path):
    result = smoke(tmp_path, DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    commands = smoke_commands(result)
    assert len(commands) == 8
    teacher, train, resume, evaluate = commands[4], commands[5], commands[6], commands[7]
    assert "build_teacher_trajectories.py" in teacher and "--backend vllm" in teacher
    for part in (
        "accelerate launch --config_file train/accelerate/zero2.yaml",
        "--deepspeed_config_file train/deepspeed/zero2.json",
        "--num_processes 1",
        "train/rl.py --config train/recipes/7b/tgrl.yaml",
        "use_cpu=false use_vllm=true",
        "save_steps=2",
    ):
        assert part in train and part in resume, part
    # the 7B recipe's own settings run: the smoke overrides sizes only, never these keys
    for key in ("vllm_enable_sleep_mode", "gradient_checkpointing", "grad_share_every", "bf16", "dtype"):
        assert f" {key}=" not in train, key
    assert "max_steps=2" in train and "resume_from_checkpoint" not in train
    assert "max_steps=4 resume_from_checkpoint=auto" in resume
    assert "eval/run_lmms_eval.py" in evaluate and "--backend vllm" in evaluate
    (keys,) = [line for line in result.stdout.splitlines() if line.startswith("# train: ")]
    for part in (
        "train/recipes/7b/tgrl.yaml (ZeRO-2, 1 process(es), cuda)",
        "vllm_enable_sleep_mode=true",
        "gradient_checkpointing=true",
        "grad_share_every=0",
        "per_device_train_batch_size=4",
        "max_pixels=1003520",
    ):
        assert part in keys, part
    lines = [line for line in result.stdout.splitlines() if line.startswith("smoke_gpu:")]
    assert [line.split()[1] for line in lines[:4]] == ["setup", "teacher_vllm", "train", "eval_vllm"]
    assert "gradient checkpointing, checkpoint save + resume" in lines[2]
    assert lines[-1].startswith(
        "smoke_gpu: not covered   multi-process expert alignment (NUM_GPUS=2); ZeRO-3"
    )
    assert not (tmp_path / "smoke").exists()  # a dry run writes nothing


def test_smoke_dry_run_variants(tmp_path):
    """NUM_GPUS=2, ZERO=3 and SMOKE_VLLM=0 change the launch, and every printed command still passes its
    program's parser."""
    import shlex

    two = smoke_commands(smoke(tmp_path, DRY_RUN="1", NUM_GPUS="2"))
    assert all("--num_processes 2" in cmd for cmd in two[5:7])
    zero3 = smoke(tmp_path, DRY_RUN="1", ZERO="3")
    assert all(
        "--config_file train/accelerate/zero3.yaml --deepspeed_config_file train/deepspeed/zero3.json" in cmd
        for cmd in smoke_commands(zero3)[5:7]
    )
    assert "not covered   multi-process expert alignment (NUM_GPUS=2); multi-node" in zero3.stdout
    no_vllm = smoke(tmp_path, DRY_RUN="1", SMOKE_VLLM="0")
    commands = smoke_commands(no_vllm)
    assert "vllm" not in " ".join(commands[:5] + commands[7:]).lower()
    assert "--backend hf --model" in commands[4] and "--device cuda" in commands[4]
    assert all("use_vllm=false" in cmd for cmd in commands[5:7])
    assert "--backend hf --device cuda" in commands[7]
    lines = [line for line in no_vllm.stdout.splitlines() if line.startswith("smoke_gpu:")]
    assert [line.split()[1] for line in lines[:4]] == ["setup", "teacher_hf", "train", "eval_hf"]
    assert "vLLM teacher, rollouts, sleep mode and eval (SMOKE_VLLM=1)" in lines[-1]
    assert "no vLLM" not in no_vllm.stderr  # the preflight does not ask for vLLM
    cpu = smoke_commands(smoke(tmp_path, DRY_RUN="1", SMOKE_DEVICE="cpu", NUM_GPUS="2"))
    assert all(
        "train/accelerate/zero2_cpu.yaml" in cmd and "use_cpu=true bf16=false" in cmd for cmd in cpu[5:7]
    )
    for variant in (two, smoke_commands(zero3), commands, cpu):
        assert [parse_printed(shlex.split(cmd[2:])) for cmd in variant] == SMOKE_SCRIPTS
    cpu3 = smoke_commands(smoke(tmp_path, DRY_RUN="1", SMOKE_DEVICE="cpu", ZERO="3"))
    assert all(
        "train/accelerate/zero3_cpu.yaml --deepspeed_config_file train/deepspeed/zero3.json" in c
        for c in cpu3[5:7]
    )
    refused = smoke(tmp_path, DRY_RUN="1", SMOKE_DEVICE="cpu", SMOKE_VLLM="1")
    assert "SMOKE_DEVICE=cpu needs SMOKE_VLLM=0" in refused.stderr


def test_smoke_refuses_cleanly_without_gpu_or_vllm(tmp_path):
    result = smoke(tmp_path)  # this machine: no NVIDIA driver, CPU torch, no vLLM
    assert result.returncode == 2
    assert "smoke_gpu: no GPU" in result.stderr and "smoke_gpu: no vLLM" in result.stderr
    assert "refused, nothing was run" in result.stderr and not (tmp_path / "smoke").exists()
    assert "+ " not in result.stdout


def fake_stack(tmp_path, failing: str, driver: str = "580.65.06", cuda: str = "13.0", vllm: bool = True):
    """nvidia-smi with one GPU and driver ``driver``; a python whose torch is a CUDA ``cuda`` build, that
    passes the preflight (vLLM importable if ``vllm``) and fails the commands matching ``failing`` (a bash
    case pattern) with a Python-style error; an accelerate that does the same (and says it resumed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(
        f'#!/usr/bin/env bash\ncase "$*" in *--query-gpu=driver_version*) echo "{driver}" ;;\n'
        '*) echo "GPU 0: Fake (UUID: GPU-0)" ;; esac\n'
    )
    tool = f"""#!/usr/bin/env bash
case "$*" in
  "-c import vllm") exit {0 if vllm else 1} ;;
  "-c "*torch.version.cuda*) echo "2.13.0 {cuda}" ;;
  "-c "*) exit 0 ;;
  {failing})
    echo 'Traceback (most recent call last):'; echo 'ValueError: fake failure in this stage' >&2; exit 1 ;;
  *resume_from_checkpoint=auto*) echo "[rl] resuming from out/checkpoint-2" ;;
  *) echo "ran: $*" ;;
esac
"""
    for name in ("python", "accelerate"):
        (bin_dir / name).write_text(tool)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PY": str(bin_dir / "python"),
        "ACCELERATE": str(bin_dir / "accelerate"),
    }


def test_smoke_ends_with_one_line_per_stage(tmp_path):
    env = fake_stack(tmp_path, "*build_teacher_trajectories.py*--backend\\ vllm*")
    result = bash("smoke_gpu.sh", WORK=str(tmp_path / "smoke"), **env)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("smoke_gpu:")]
    assert len(lines) == 6
    assert lines[0].split()[1:3] == ["setup", "ok"]
    assert lines[1].split()[1:3] == ["teacher_vllm", "failed:"] and "ValueError: fake failure" in lines[1]
    assert "logs/teacher_vllm.log" in lines[1]
    assert lines[2].split()[1:3] == ["train", "ok"] and lines[3].split()[1:3] == ["eval_vllm", "ok"]
    seconds = [int(line.split("(")[1].split()[0]) for line in (lines[0], lines[2], lines[3])]
    assert (
        lines[4] == f"smoke_gpu: total         {sum(seconds)} s, measured by the stages' own timers "
        "(cuda, 1 process(es))"
    )
    assert lines[5].startswith("smoke_gpu: not covered   multi-process")


def test_smoke_skips_what_depends_on_a_failed_stage(tmp_path):
    env = fake_stack(tmp_path, "*train/rl.py*")
    result = bash("smoke_gpu.sh", WORK=str(tmp_path / "smoke"), **env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("smoke_gpu:")]
    assert result.returncode == 1 and "train         failed: ValueError" in lines[2]
    assert lines[3].startswith("smoke_gpu: eval_vllm     skipped (needs train) - ")


def test_smoke_without_vllm_needs_no_vllm(tmp_path):
    env = fake_stack(tmp_path, "*no-such-command*", vllm=False)
    refused = bash("smoke_gpu.sh", WORK=str(tmp_path / "smoke"), **env)
    assert refused.returncode == 2 and "smoke_gpu: no vLLM" in refused.stderr
    result = bash("smoke_gpu.sh", WORK=str(tmp_path / "smoke"), SMOKE_VLLM="0", **env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("smoke_gpu:")]
    assert [line.split()[1:3] for line in lines[:4]] == [
        ["setup", "ok"], ["teacher_hf", "ok"], ["train", "ok"], ["eval_hf", "ok"]
    ]  # fmt: skip


def test_preflight_checks_the_driver_against_the_torch_cuda_build(tmp_path):
    old = fake_stack(tmp_path, "*no-such-command*", driver="550.54.15")
    result = bash("smoke_gpu.sh", WORK=str(tmp_path / "smoke"), **old)
    assert result.returncode == 2
    assert (
        "smoke_gpu: NVIDIA driver 550.54.15 is too old for torch 2.13.0 "
        "(a CUDA 13.0 build: needs driver >= 580). Fix: install NVIDIA driver >= 580" in result.stderr
    )
    launcher = bash("run_tgrl_7b.sh", DRY_RUN="1", **old)
    assert "preflight: FAIL NVIDIA driver 550.54.15 is too old" in launcher.stderr
    cuda12 = tmp_path / "cuda12"
    cuda12.mkdir()
    fine = fake_stack(cuda12, "*no-such-command*", driver="550.54.15", cuda="12.8")
    assert "too old" not in bash("smoke_gpu.sh", WORK=str(tmp_path / "smoke"), DRY_RUN="1", **fine).stderr


def test_make_smoke_gpu_runs_the_smoke_script():
    """`make smoke_gpu` is the smoke script itself, with no install step in front (it runs in the GPU env)."""
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "smoke_gpu"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == ["bash scripts/smoke_gpu.sh"]


def test_sft_rl_dry_run_prints_both_stages():
    result = bash("run_sft_rl_7b.sh", DRY_RUN="1", SFT_OUTPUT="/tmp/tgrl-no-such-sft")
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert len(commands) == 2
    assert "train/sft.py --config train/recipes/7b/sft.yaml" in commands[0]
    assert "output_dir=/tmp/tgrl-no-such-sft" in commands[0]
    assert (
        "train/recipes/7b/sft_rl.yaml" in commands[1]
        and "model_name_or_path=/tmp/tgrl-no-such-sft" in commands[1]
    )


def test_real_run_fails_in_preflight_and_starts_nothing():
    result = bash("run_tgrl_7b.sh", DATA="/nonexistent/train.jsonl")  # fails on every machine
    assert result.returncode == 2
    assert "preflight: FAIL" in result.stderr and "nothing was started" in result.stderr


def test_tiny_twin_dry_run():
    result = bash("run_tiny.sh", "tgrl", "seed=1", DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    assert (
        "train/rl.py --config train/recipes/tiny/tgrl.yaml resume_from_checkpoint=auto seed=1"
        in result.stdout
    )
    result = bash("run_tiny.sh", "base_direct_sft", DRY_RUN="1", USE_ACCELERATE="1", NUM_PROCS="2")
    assert (
        "accelerate launch --config_file train/accelerate/zero2_cpu.yaml --num_processes 2 train/sft.py"
        in result.stdout
    )


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_accelerate_deepspeed_zero2_on_cpu(processes, tiny_checkpoint, synthetic_dir, tmp_path):
    """2 TGRL steps through accelerate + DeepSpeed ZeRO-2 (gloo) on CPU, 1 and 2 processes."""
    write_expert_set(synthetic_dir, tmp_path / "train.jsonl", limit=16)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "accelerate"),  # the running venv's
            "launch",
            "--config_file",
            "train/accelerate/zero2_cpu.yaml",
            "--num_processes",
            str(processes),
            "train/rl.py",
            "--config",
            "train/recipes/tiny/tgrl.yaml",
            f"model_name_or_path={tiny_checkpoint}",
            f"train_file={tmp_path / 'train.jsonl'}",
            f"output_dir={out}",
            "max_steps=2",
            "per_device_train_batch_size=16",
            "max_completion_length=32",
            "save_strategy=no",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[-1]["inject/generated"] == 14 * processes  # 2 groups per rank, 7 generated each
    # the recipe's grad_share_every 10 is switched off under DeepSpeed with one line, not refused
    assert result.stdout.count("[tgrl] grad_share_every 10 -> 0") == 1, result.stdout[-2000:]
    assert result.stdout.count("[tgrl] share_prompt_prefix -> false") == 1, result.stdout[-2000:]
    assert not any(key.startswith("grad/") for row in rows for key in row)
    # every group's expert row carries its own prompt's (correct) oracle trace on every rank
    assert all(row["inject/rate"] == 1.0 and row["accuracy/expert"] == 1.0 for row in rows)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # ~6 min on 2 shared cores; the default 600 s leaves too little margin
@pytest.mark.parametrize("zero", ["2", "3"])
def test_smoke_cpu_mode_runs_the_7b_keys_in_two_processes(zero, tmp_path):
    """scripts/smoke_gpu.sh SMOKE_DEVICE=cpu NUM_GPUS=2 ZERO=2|3: every stage without vLLM, the train stage
    with the 7B recipe's keys (gradient checkpointing, 4 rollouts per micro-batch, save + resume) under
    accelerate + DeepSpeed ZeRO-2 / ZeRO-3 in two processes; the script's own check passes (steps 1..4
    across the resume, every expert row its own prompt's correct trace)."""
    bin_dir = Path(sys.executable).parent
    env = {
        "SMOKE_DEVICE": "cpu",
        "NUM_GPUS": "2",
        "ZERO": zero,
        "PY": sys.executable,
        "ACCELERATE": str(bin_dir / "accelerate"),
        "WORK": str(tmp_path / "smoke"),
        "MASTER_PORT": "29533",
    }
    result = subprocess.run(
        ["bash", "scripts/smoke_gpu.sh"],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("smoke_gpu:")]
    assert result.returncode == 0, "\n".join(lines) + result.stderr[-2000:]
    assert [line.split()[1:3] for line in lines[:4]] == [
        ["setup", "ok"], ["teacher_hf", "ok"], ["train", "ok"], ["eval_hf", "ok"]
    ]  # fmt: skip
    assert f"ZeRO-{zero}, 2 processes, expert rows across ranks" in lines[2] and "save + resume" in lines[2]
    assert lines[4].startswith("smoke_gpu: total ") and "(cpu, 2 process(es))" in lines[4]
    train_log = (tmp_path / "smoke" / "logs" / "train.log").read_text()
    assert "check: steps [1, 2, 3, 4], accuracy/expert [1.0" in train_log
    assert "resuming from" in train_log and "checkpoint-2" in train_log
    record = json.loads((tmp_path / "smoke" / "rl" / "run_config.json").read_text())
    assert record["recipe"] == "train/recipes/7b/tgrl.yaml"
    config, script = record["resolved"]["TGRLConfig"], record["resolved"]["RLScriptArguments"]
    assert config["gradient_checkpointing"] and config["vllm_enable_sleep_mode"]
    assert config["grad_share_every"] == 0 and config["per_device_train_batch_size"] == 4
    assert script["max_pixels"] == 1003520 and script["freeze_vision_tower"]
