"""tgrl: Trajectory-Guided Reinforcement Learning for multimodal RLVR (replication of arXiv 2603.26126).

Core package shared by the flat scripts in data_prep/, train/ and eval/. Where things live:

* ``tgrl.data``           problem/trajectory JSONL schema, validation, atomic I/O
* ``tgrl.prompts``        the one prompt template (system prompt, user turn, output format)
* ``tgrl.synthetic``      procedurally generated visual-reasoning scenes (tiny tier)
* ``tgrl.tiny``           tiny Qwen2.5-VL checkpoint + tokenizer built from code
* ``tgrl.modeling``       the single model/processor loader and generation guards
* ``tgrl.rewards``        accuracy / format rewards (TRL reward-function signature)
* ``tgrl.teachers``       expert-trajectory backends (oracle, hf, vllm, openai)
* ``tgrl.filters``        trajectory filtering F1-F4
* ``tgrl.token_weights``  token quantities and the TGRL loss terms (pure tensor functions)
* ``tgrl.perturb``        image perturbations for visual dependency (trainer and filter F4)
* ``tgrl.trainer``        TGRLConfig / TGRLTrainer (a GRPOTrainer subclass)
"""

__version__ = "0.1.0"
