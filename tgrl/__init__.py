"""tgrl: Trajectory-Guided Reinforcement Learning for multimodal RLVR (replication of arXiv 2603.26126).

The core package under the flat scripts of data_prep/, train/, eval/ and benchmarks/, listed by stage.
THE LOSS: ``tgrl.token_weights.tgrl_loss_terms``; the trainer that calls it: ``tgrl.trainer``.

Shared by every stage
* ``tgrl.prompts``            the one prompt template (system prompt, user turn, output format)
* ``tgrl.modeling``           the one model/processor loader, prompt encoding, generation guards
* ``tgrl.pixels``             the one image-pixel budget and the resize every processor agrees on
* ``tgrl.rewards``            accuracy / format rewards (TRL reward-function signature)
* ``tgrl.number_parsing``, ``tgrl.bounded_math_verify``  the answer comparison behind the rewards
* ``tgrl.utils``              user-facing errors, atomic writes, JSONL I/O, provenance

1. Data (data_prep/)
* ``tgrl.data``               problem/trajectory JSONL schema, validation, atomic I/O
* ``tgrl.converters``         public RLVR sets -> the problem schema
* ``tgrl.synthetic``          procedurally generated visual-reasoning scenes (tiny tier)
* ``tgrl.tiny``               tiny Qwen2.5-VL checkpoint + tokenizer built from code
* ``tgrl.teachers``           expert-trajectory backends (oracle, hf, vllm, openai)
* ``tgrl.filters``            trajectory filtering F1-F4

2. Training (train/)
* ``tgrl.recipes``            recipe YAML + key=value overrides, on TRL's TrlParser
* ``tgrl.tgrl_config``        TGRLConfig (the TGRL switches) and the scripts' arguments
* ``tgrl.rl_data``            problems -> the rows TRL's trainers read
* ``tgrl.trainer``            TGRLTrainer: a GRPOTrainer with expert slots, token pass and the TGRL loss
* ``tgrl.token_weights``      token quantities and the TGRL loss terms (pure tensor functions)
* ``tgrl.perturb``            image perturbations for visual dependency (trainer, filter F4, probes)
* ``tgrl.diagnostics``        the metrics the trainer logs
* ``tgrl.metrics``            metrics.jsonl on disk
* ``tgrl.trl_compat``         the TRL internals relied on, and the TRL/transformers/vLLM workarounds
* ``tgrl.runs``               run record, resume, train, save (shared by train/rl.py and train/sft.py)

3. Evaluation (eval/)
* ``tgrl.evaluation``         the lmms-eval runner, task scorers, twin metrics, tables, plots, training
                              summaries, the registered comparisons
* ``tgrl.lmms_model``         the lmms-eval model class for every checkpoint of this repo
* ``tgrl.probe``              teacher-forced token probabilities of given texts
* ``tgrl.grounding``          visual dependency of a model's own reasoning

4. Protocol and benchmarks (scripts/, benchmarks/)
* ``tgrl.protocol``           the fair tiny protocol: runs, selection, budgets
* ``tgrl.sealing``            sealed splits: the frozen selection, one scoring per checkpoint, the log
* ``tgrl.benchmarking``       the harness of benchmarks/
"""

__version__ = "0.1.0"
