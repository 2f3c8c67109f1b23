"""Run several evaluation commands in one Python process, so torch, transformers and lmms-eval are imported
once (about 30 s per process on the 2-core tiny tier; the protocol's final scoring of a checkpoint is five
commands).

    python eval/run_batch.py '[["eval/run_lmms_eval.py", "--model", "CKPT", ...],
                              ["eval/probe_expert_tokens.py", "--model", "CKPT", ...]]'

Each command is a script of this repository and its arguments, run through the script's own ``main(argv)``
in order, exactly as its command line would run it (same arguments, same rows, same resume keys); the
first one that fails ends the batch with its exit status.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ALLOWED = ("eval/run_lmms_eval.py", "eval/probe_expert_tokens.py", "eval/summarize_training.py")


def run(commands: list[list[str]]) -> int:
    for command in commands:
        script, argv = command[0], [str(a) for a in command[1:]]
        if script not in ALLOWED:
            print(f"error: eval/run_batch.py runs {ALLOWED}, not {script!r}", file=sys.stderr)
            return 2
        spec = importlib.util.spec_from_file_location(f"_batch_{Path(script).stem}", REPO / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"[run_batch] $ {script} {' '.join(argv)}", flush=True)
        try:
            code = module.main(argv)
        except SystemExit as exit_:
            code = exit_.code
        if code not in (None, 0):
            return code if isinstance(code, int) else 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: eval/run_batch.py JSON_LIST_OF_COMMANDS")
    sys.path.insert(0, str(REPO))
    sys.exit(run(json.loads(sys.argv[1])))
