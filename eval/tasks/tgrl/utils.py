"""The functions our task YAMLs name (``!function utils.<name>``): lmms-eval loads this file by path.

The code lives in :mod:`tgrl.evaluation.tasks` (prompts, scorers, aggregations, the generic JSONL task);
this file only makes it reachable from the task folder.

For lmms-eval's own CLI, write the generic task of a problem JSONL first:

    python eval/tasks/tgrl/utils.py FILE.jsonl OUT_DIR NAME
    python -m lmms_eval --model tgrl ... --include_path OUT_DIR --tasks tgrl_jsonl_NAME
"""

import json
import sys

from tgrl.evaluation.tasks import (  # noqa: F401 (the names the task YAMLs reference)
    KeepAllResponses,
    aggregate_all_correct,
    dynamath_doc_to_text,
    dynamath_doc_to_visual,
    dynamath_process_results,
    hallusion_aggregate_aacc,
    hallusion_aggregate_facc,
    hallusion_aggregate_mean,
    hallusion_aggregate_qacc,
    hallusion_doc_to_text,
    hallusion_doc_to_visual,
    hallusion_process_results,
    jsonl_doc_to_text,
    jsonl_doc_to_visual,
    jsonl_process_results,
    logicvista_doc_to_text,
    logicvista_doc_to_visual,
    logicvista_process_results,
    mathverse_doc_to_text,
    mathverse_doc_to_visual,
    mathverse_process_results,
    mathvision_doc_to_text,
    mathvision_doc_to_visual,
    mathvision_process_results,
    mathvista_doc_to_text,
    mathvista_doc_to_visual,
    mathvista_process_results,
    mmmu_doc_to_text,
    mmmu_doc_to_visual,
    mmmu_pro_process_results,
    mmmu_pro_vision_doc_to_text,
    mmmu_pro_vision_doc_to_visual,
    mmmu_process_results,
    mmstar_doc_to_text,
    mmstar_doc_to_visual,
    mmstar_process_results,
    wemath_aggregate_loose,
    wemath_aggregate_strict,
    wemath_doc_to_text,
    wemath_doc_to_visual,
    wemath_process_results,
    write_jsonl_task,
)
from tgrl.evaluation.twins import (  # noqa: F401 (the aggregations of the twin splits' metrics)
    twin_aggregate_answer_tracking,
    twin_aggregate_move_invariance,
    twin_aggregate_tracking,
    twin_aggregate_tracking_recolor,
    twin_aggregate_tracking_remove,
)

if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python eval/tasks/tgrl/utils.py FILE.jsonl OUT_DIR NAME")
    print(json.dumps(write_jsonl_task(sys.argv[1], sys.argv[2], sys.argv[3]), indent=2))
