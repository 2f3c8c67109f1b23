"""Evaluation: the lmms-eval runner, the task scorers, the results tables and the training summaries.

The scripts in ``eval/`` are the command lines over these modules:

- :mod:`tgrl.evaluation.runner` (eval/run_lmms_eval.py): settings, keys, resume, summary rows, lmms-eval calls
- :mod:`tgrl.evaluation.tasks` (eval/tasks/tgrl/utils.py): prompts and scorers of our lmms-eval tasks
- :mod:`tgrl.evaluation.tables` (eval/make_tables.py): summary rows -> Markdown, CSV and LaTeX tables
- :mod:`tgrl.evaluation.training_summary` (eval/summarize_training.py): training diagnostics as summary rows
- :mod:`tgrl.evaluation.plots` (eval/plot_training.py): training curves from metrics JSONL
"""
