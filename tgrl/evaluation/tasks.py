"""The lmms-eval hooks of our tasks: the generic problem-JSONL task and our variants of the real benchmarks.

Our variants keep each benchmark's data and official aggregation but prompt with the training template,
score with the training reward's code (:func:`tgrl.rewards.score_completion`) and keep all k responses
for avg@k (:class:`KeepAllResponses`); why, group metrics and the optional LLM judge
(``TGRL_JUDGE_MODEL``): docs/design.md#91-protocol. lmms-eval loads these functions by path
(eval/tasks/tgrl/utils.py) once per reference, so this module keeps no state and imports only what is cheap.
"""

from __future__ import annotations

import ast
import json
import os
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from lmms_eval.api.filter import Filter

from tgrl.prompts import choice_letter, load_template
from tgrl.rewards import answers_match, extract_answer, follows_format
from tgrl.teachers.oracle import fact_accuracy
from tgrl.utils import REPO_ROOT

TASKS_DIR = REPO_ROOT / "eval" / "tasks" / "tgrl"  # the task YAMLs and their templates


class KeepAllResponses(Filter):
    """Pass every response of a document through (lmms-eval's default filter keeps only the first)."""


# --------------------------------------------------------------------------------------------------
# shared helpers


def question_with_choices(question: str, choices: list[str] | None) -> str:
    """The question followed by the options in the project template's layout, "(A) text" lines
    under "Choices:" (the same text :func:`tgrl.prompts.build_user_text` makes in training).

    Example:
        >>> question_with_choices("Which is red?", ["the ball", "the box"]).splitlines()[-2:]
        ['(A) the ball', '(B) the box']
    """
    question = question.strip()
    if not choices:
        return question
    template = load_template()
    options = "\n".join(
        template["choice_line"].format(letter=choice_letter(i), text=str(c).strip())
        for i, c in enumerate(choices)
    )
    return question + template["choices"].format(options=options)


def responses_of(results: list) -> list[str]:
    """The k responses of one document: lmms-eval hands over ``[[r1, ..., rk]]`` with our filter
    (``[r1]`` with a filter that keeps one)."""
    out: list[str] = []
    for item in results:
        if isinstance(item, list | tuple):
            out.extend(str(x) for x in item)
        else:
            out.append(str(item))
    return out


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def format_rate(responses: list[str]) -> float:
    """Share of responses in the exact output format (``<think>..</think><answer>..</answer>``)."""
    return mean([1.0 if follows_format(r) else 0.0 for r in responses])


def judge_model() -> str | None:
    return os.environ.get("TGRL_JUDGE_MODEL") or None


JUDGE_PROMPT = (
    "You grade answers to a question. Reply with 1 if the model's final answer matches the reference "
    "answer (an option letter and its option text count as the same), otherwise 0. Reply with the "
    "digit only.\n\nQuestion:\n{question}\n\nReference answer:\n{gold}\n\nModel response:\n{response}"
)


def judge_says_correct(question: str, gold: str, response: str, retries: int = 3) -> bool:
    """Ask the pinned judge model (temperature 0) whether ``response`` answers ``question`` with
    ``gold``. Fails loudly after ``retries`` attempts: a silent 0 would look like a model error."""
    from openai import OpenAI

    client = OpenAI(
        base_url=os.environ.get("TGRL_JUDGE_BASE_URL") or None,
        api_key=os.environ.get("TGRL_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY",
    )
    prompt = JUDGE_PROMPT.format(question=question, gold=gold, response=response[-4000:])
    for attempt in range(retries):
        try:
            reply = client.chat.completions.create(
                model=judge_model(),
                messages=[{"role": "user", "content": prompt}],
                temperature=0,
                max_tokens=2,
            )
            return (reply.choices[0].message.content or "").strip().startswith("1")
        except Exception as err:  # network or API error: retry, then give up loudly
            if attempt == retries - 1:
                raise RuntimeError(f"judge {judge_model()!r} failed {retries} times: {err}") from err
            time.sleep(2**attempt)
    return False


def score_response(
    response: str,
    gold: str,
    choices: list[str] | None = None,
    answer_type: str | None = None,
    question: str | None = None,
    pred: str | None = None,
) -> float:
    """1.0/0.0 with the training reward's extraction and matching; ``pred`` overrides the extracted
    answer (benchmark-specific normalisation such as MathVista's rounding). The judge, when enabled,
    is asked only about responses the rules score 0."""
    if pred is None:
        pred = extract_answer(response)
    correct = pred is not None and answers_match(pred, gold, choices, answer_type)
    if not correct and question is not None and judge_model():
        correct = judge_says_correct(question, gold, response)
    return 1.0 if correct else 0.0


def accuracy_results(responses: list[str], scores: list[float], **extra: Any) -> dict[str, Any]:
    """The usual per-document output: ``acc`` (mean over the k responses) and ``format``."""
    return {"acc": mean(scores), "format": format_rate(responses), **extra}


def pil_images(*images: Any) -> list:
    """RGB copies of the images that are present (benchmarks leave some image columns empty)."""
    return [im.convert("RGB") for im in images if im is not None and hasattr(im, "convert")]


def all_correct_rate(items: list[dict]) -> float:
    """Share of groups whose documents are all correct, for each response index j, averaged over j.
    Documents with ``group`` None do not count."""
    k = min((len(it["scores"]) for it in items if it.get("group") is not None), default=0)
    if k == 0:
        return 0.0
    rates = []
    for j in range(k):
        groups: dict[Any, bool] = {}
        for it in items:
            if it.get("group") is None:
                continue
            key = json.dumps(it["group"], sort_keys=True)
            groups[key] = groups.get(key, True) and it["scores"][j] >= 1.0
        rates.append(mean([1.0 if ok else 0.0 for ok in groups.values()]))
    return mean(rates)


# --------------------------------------------------------------------------------------------------
# generic task: any JSONL file in the problem schema (docs/design.md#41-problems)
#
# The runner (or `python eval/tasks/tgrl/utils.py FILE OUT_DIR NAME`) validates the file with
# tgrl.data.load_problems and writes a normalised copy whose columns are all strings (absolute image
# paths, choices and meta as JSON), because the JSON loader of `datasets` cannot cast a `meta` whose
# keys differ between rows. The generated task YAML includes _jsonl_template_yaml.


def write_jsonl_task(jsonl: str | os.PathLike, out_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """Validate ``jsonl`` and write ``out_dir/<task>.yaml`` + ``out_dir/<task>.data.jsonl``.

    Returns ``{"task": lmms-eval task name, "yaml": path, "data": path, "n": rows, "sha256": of the
    source file}``. The task name is ``tgrl_jsonl_<name>``.
    """
    from tgrl.data import load_problems
    from tgrl.utils import sha256_file, write_json, write_jsonl

    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"task name {name!r}: use letters, digits and underscores")
    problems = load_problems(jsonl)
    out_dir = Path(out_dir).resolve()
    task = f"tgrl_jsonl_{name}"
    data_path = out_dir / f"{task}.data.jsonl"
    rows = [
        {
            "id": p.id,
            "question": p.question,
            "answer": p.answer,
            "answer_type": p.answer_type,
            "choices_json": json.dumps(p.choices),
            "images_json": json.dumps(p.image_paths),
            "meta_json": json.dumps(p.meta, sort_keys=True),
            "qtype": str(p.meta.get("qtype", "")),
            "source": p.source,
        }
        for p in problems
    ]
    write_jsonl(data_path, rows)
    template = TASKS_DIR / "_jsonl_template_yaml"
    yaml_path = out_dir / f"{task}.yaml"
    # JSON is valid YAML: no quoting questions for paths with odd characters.
    config = {
        "include": str(template),
        "task": task,
        "dataset_kwargs": {"data_files": {"test": str(data_path)}},
    }
    write_json(yaml_path, config)
    return {
        "task": task,
        "yaml": str(yaml_path),
        "data": str(data_path),
        "n": len(rows),
        "sha256": sha256_file(jsonl),
    }


def jsonl_doc_to_visual(doc: dict) -> list:
    from tgrl.data import load_image

    return [load_image(p) for p in json.loads(doc["images_json"])]


def jsonl_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return question_with_choices(doc["question"], json.loads(doc["choices_json"]))


def jsonl_process_results(doc: dict, results: list) -> dict[str, Any]:
    """acc, acc_<qtype> (for the synthetic types sum/diff/cmp), fact_acc (when the row carries
    ground-truth scene facts) and format; each a mean over the k responses. Rows of a twin split
    (``meta.twin``) also carry the twin_* records that tgrl/evaluation/twins.py pairs and scores."""
    responses = responses_of(results)
    choices = json.loads(doc["choices_json"])
    scores = [score_response(r, doc["answer"], choices, doc["answer_type"]) for r in responses]
    out = accuracy_results(responses, scores)
    if doc.get("qtype"):
        out[f"acc_{doc['qtype']}"] = out["acc"]
    meta = json.loads(doc["meta_json"])
    facts = [fact_accuracy(r, meta) for r in responses]
    if facts and all(f is not None for f in facts):
        out["fact_acc"] = mean(facts)
    if meta.get("twin"):  # a counterfactual twin split: the pairing happens in the aggregation
        from tgrl.evaluation.twins import TWIN_METRICS, twin_record

        record = twin_record(meta, doc["answer"], doc["answer_type"], responses)
        out.update(dict.fromkeys(TWIN_METRICS, record))
    return out


# --------------------------------------------------------------------------------------------------
# MathVista testmini (AI4Math/MathVista): pid, question, decoded_image, choices, unit, precision,
# answer, question_type (multi_choice|free_form), answer_type (text|integer|float|list), metadata, query


def mathvista_doc_to_visual(doc: dict) -> list:
    return pil_images(doc.get("decoded_image"))


def mathvista_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """Question, then the options; free-form questions get the answer-form hint MathVista's own query
    carries (integer, decimals, list), reworded so it does not contradict our output format."""
    if doc["question_type"] == "multi_choice":
        return question_with_choices(doc["question"], list(doc["choices"] or []))
    hint = {
        "integer": "The answer is an integer.",
        "list": "The answer is a Python list.",
    }.get(doc["answer_type"], "")
    if doc["answer_type"] == "float":
        places = int(doc.get("precision") or 0)
        hint = f"The answer is a number with {places} decimal place{'s' if places != 1 else ''}."
    return f"{doc['question'].strip()}\n{hint}".strip()


_PLAIN_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def mathvista_gold(doc: dict) -> tuple[str, list[str] | None, str | None]:
    """(gold, choices, answer_type) for answers_match."""
    if doc["question_type"] == "multi_choice":
        choices = list(doc["choices"] or [])
        gold = choice_letter(choices.index(doc["answer"])) if doc["answer"] in choices else str(doc["answer"])
        return gold, choices, "choice"
    answer_type = {"integer": "number", "float": "number"}.get(doc["answer_type"])
    return str(doc["answer"]), None, answer_type


def mathvista_prediction(response: str, doc: dict) -> str | None:
    """The extracted answer; for float questions a plain number is rounded to the question's precision
    first, as MathVista's official scorer does (1.449 with precision 2 is 1.45)."""
    pred = extract_answer(response)
    if pred is not None and doc["answer_type"] == "float" and doc.get("precision") is not None:
        text = pred.strip().rstrip(".").replace(",", "")
        if _PLAIN_NUMBER_RE.match(text):
            places = int(doc["precision"])
            pred = f"{round(float(text), places):.{places}f}"
    return pred


def mathvista_process_results(doc: dict, results: list) -> dict[str, Any]:
    responses = responses_of(results)
    gold, choices, answer_type = mathvista_gold(doc)
    question = mathvista_doc_to_text(doc)
    scores = [
        score_response(r, gold, choices, answer_type, question, pred=mathvista_prediction(r, doc))
        for r in responses
    ]
    return accuracy_results(responses, scores)


# --------------------------------------------------------------------------------------------------
# MathVerse testmini (CaraJ/MathVerse-lmmseval): sample_index, problem_index, problem_version, question,
# image, answer, question_type (multi-choice|free-form), metadata, query_wo, query_cot, question_for_eval


def mathverse_doc_to_visual(doc: dict) -> list:
    image = doc.get("image")
    return [] if image is None or isinstance(image, str) else pil_images(image)


def mathverse_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """MathVerse's own chain-of-thought query (``query_cot``): it carries the options and, for the
    vision-only version, the pointer to the question drawn in the image."""
    return (doc.get("query_cot") or doc["question"]).strip()


def mathverse_process_results(doc: dict, results: list) -> dict[str, Any]:
    responses = responses_of(results)
    answer_type = "choice" if doc["question_type"] == "multi-choice" else None
    question = mathverse_doc_to_text(doc)
    scores = [score_response(r, str(doc["answer"]), None, answer_type, question) for r in responses]
    return accuracy_results(responses, scores)


# --------------------------------------------------------------------------------------------------
# MathVision (MathLLMs/MathVision, test / testmini): id, question, options, image, decoded_image,
# answer, solution, level, subject


def mathvision_doc_to_visual(doc: dict) -> list:
    return pil_images(doc.get("decoded_image"))


def mathvision_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return question_with_choices(doc["question"], list(doc.get("options") or []))


def mathvision_process_results(doc: dict, results: list) -> dict[str, Any]:
    responses = responses_of(results)
    choices = list(doc.get("options") or []) or None
    answer_type = "choice" if choices else None
    question = mathvision_doc_to_text(doc)
    scores = [score_response(r, str(doc["answer"]), choices, answer_type, question) for r in responses]
    return accuracy_results(responses, scores)


# --------------------------------------------------------------------------------------------------
# WeMath testmini (We-Math/We-Math): ID, split, knowledge concept, question, option ("A. x; B. y; ..."),
# answer, image_path (an image), key (e.g. 2steps_1, 2steps_multi, 3steps_2), question number,
# knowledge concept description

_WEMATH_OPTION_RE = re.compile(r"([A-H])\.\s*(.*?)\s*(?=;\s*[A-H]\.|$)", re.DOTALL)
_WEMATH_KEY_RE = re.compile(r"^([23])steps_(\d|multi)$")


def wemath_choices(option: str) -> list[str] | None:
    """``"A. 3; B. 4"`` -> ``["3", "4"]``; None when the string is not in that form."""
    found = _WEMATH_OPTION_RE.findall(option or "")
    letters = [letter for letter, _ in found]
    if len(found) < 2 or letters != [choice_letter(i) for i in range(len(found))]:
        return None
    return [text.strip() for _, text in found]


def wemath_doc_to_visual(doc: dict) -> list:
    return pil_images(doc.get("image_path"))


def wemath_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    choices = wemath_choices(doc["option"])
    if choices is None:
        return f"{doc['question'].strip()}\n{doc['option'].strip()}"
    return question_with_choices(doc["question"], choices)


def wemath_process_results(doc: dict, results: list) -> dict[str, Any]:
    """acc over all questions; strict/loose records for the four-dimensional score. A composite
    problem is the group of rows sharing an ``ID`` whose ``key`` is ``Nsteps_i`` / ``Nsteps_multi``."""
    responses = responses_of(results)
    question = wemath_doc_to_text(doc)
    scores = [
        score_response(r, str(doc["answer"]), wemath_choices(doc["option"]), "choice", question)
        for r in responses
    ]
    match = _WEMATH_KEY_RE.match(str(doc.get("key", "")))
    record = {
        "group": [str(doc["ID"]), int(match.group(1))] if match else None,
        "part": match.group(2) if match else None,
        "scores": scores,
    }
    return accuracy_results(responses, scores, strict=record, loose=record)


def wemath_score(items: list[dict], strict: bool) -> float:
    """WeMath's score over composite problems (the official four dimensions, our implementation).

    For a composite problem with N one-step sub-problems and the multi-step problem:
    IK (insufficient knowledge): multi wrong and some sub wrong; IG (inadequate generalisation): multi
    wrong, all subs right; CM (complete mastery): multi right and all subs right (strict) or some sub
    right (loose); RM (rote memorisation): multi right otherwise. Score = (CM + 0.5 * IG) / composites,
    which is the official (total - 0.5 IG - RM - IK) / total. Composites missing a part (e.g. under
    --limit) are left out. Averaged over the k responses.
    """
    by_problem: dict[str, dict[str, list[float]]] = defaultdict(dict)
    steps: dict[str, int] = {}
    for it in items:
        if it.get("group") is None:
            continue
        key = json.dumps(it["group"])
        by_problem[key][it["part"]] = it["scores"]
        steps[key] = it["group"][1]
    complete = {
        key: parts
        for key, parts in by_problem.items()
        if "multi" in parts and all(str(i) in parts for i in range(1, steps[key] + 1))
    }
    if not complete:
        return 0.0
    k = min(len(s) for parts in complete.values() for s in parts.values())
    per_sample = []
    for j in range(k):
        total = 0.0
        for key, parts in complete.items():
            subs = [parts[str(i)][j] >= 1.0 for i in range(1, steps[key] + 1)]
            multi = parts["multi"][j] >= 1.0
            if multi and (all(subs) if strict else any(subs)):
                total += 1.0  # complete mastery
            elif not multi and all(subs):
                total += 0.5  # inadequate generalisation
        per_sample.append(total / len(complete))
    return mean(per_sample)


def wemath_aggregate_strict(items: list[dict]) -> float:
    return wemath_score(items, strict=True)


def wemath_aggregate_loose(items: list[dict]) -> float:
    return wemath_score(items, strict=False)


# --------------------------------------------------------------------------------------------------
# DynaMath (kcz358/DynaMath, test: 501 seed questions x 10 variants): id (the seed question),
# question_id (the row), question, image, decoded_image, ground_truth, answer_type
# (multiple choice|float|text), subject, knowledge_level

_DYNAMATH_TYPES = {"multiple choice": "choice", "float": "number", "text": "text"}


def dynamath_doc_to_visual(doc: dict) -> list:
    return pil_images(doc.get("decoded_image"))


def dynamath_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"].strip()


def dynamath_process_results(doc: dict, results: list) -> dict[str, Any]:
    """avg: accuracy over all variants; worst: a seed question counts only if all its variants are
    right (grouped by ``id``)."""
    responses = responses_of(results)
    answer_type = _DYNAMATH_TYPES.get(str(doc.get("answer_type")))
    question = dynamath_doc_to_text(doc)
    scores = [score_response(r, str(doc["ground_truth"]), None, answer_type, question) for r in responses]
    return {
        "avg": mean(scores),
        "worst": {"group": str(doc["id"]), "scores": scores},
        "format": format_rate(responses),
    }


# --------------------------------------------------------------------------------------------------
# LogicVista (lscpku/LogicVista, test): question (options written inside), answer ("C" or "A, C"),
# reasoning, image, skill, broad_capability, specific_capability, imagesource, sourcelink, liscenced, id

_LETTERS_RE = re.compile(r"\b([A-H])\b")


def letter_set(text: str | None) -> frozenset[str]:
    """Option letters named in an answer like "A, C", "(A) and (C)", "AC"."""
    if not text:
        return frozenset()
    text = text.strip().upper()
    if re.fullmatch(r"[A-H]{2,8}", text):
        return frozenset(text)
    return frozenset(_LETTERS_RE.findall(text))


def logicvista_doc_to_visual(doc: dict) -> list:
    return pil_images(doc.get("image"))


def logicvista_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"].strip()


def logicvista_score(response: str, gold: str, question: str | None = None) -> float:
    """Single-letter golds through the training comparison; multi-select golds ("A, C") need exactly
    that set of letters (a subset is wrong)."""
    gold_letters = letter_set(gold)
    if len(gold_letters) <= 1:
        return score_response(response, gold, None, "choice", question)
    pred = extract_answer(response)
    correct = letter_set(pred) == gold_letters
    if not correct and question is not None and judge_model():
        correct = judge_says_correct(question, gold, response)
    return 1.0 if correct else 0.0


def logicvista_process_results(doc: dict, results: list) -> dict[str, Any]:
    responses = responses_of(results)
    question = logicvista_doc_to_text(doc)
    return accuracy_results(responses, [logicvista_score(r, str(doc["answer"]), question) for r in responses])


# --------------------------------------------------------------------------------------------------
# MMMU val (lmms-lab-encoder/MMMU, validation): id, question, options (a string: a Python list),
# explanation, image_1 ... image_7, img_type, answer, topic_difficulty, question_type
# (multiple-choice|open), subfield

_MMMU_IMAGE_RE = re.compile(r"<image (\d)>")


def mmmu_options(doc: dict) -> list[str]:
    try:
        options = ast.literal_eval(doc.get("options") or "[]")
    except (ValueError, SyntaxError):
        return []
    return [str(o) for o in options] if isinstance(options, list) else []


def mmmu_doc_to_visual(doc: dict) -> list:
    """The images the question and options refer to ("<image 1>" ...), in number order."""
    text = doc["question"] + " " + " ".join(mmmu_options(doc))
    numbers = sorted(set(_MMMU_IMAGE_RE.findall(text)))
    return pil_images(*(doc.get(f"image_{n}") for n in numbers))


def mmmu_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """Also MMMU-Pro's standard setting: same columns, no ``question_type`` (every item is multiple
    choice)."""
    options = mmmu_options(doc) if doc.get("question_type", "multiple-choice") == "multiple-choice" else []
    return question_with_choices(doc["question"], options)


def mmmu_golds(doc: dict) -> list[str]:
    """Open questions sometimes list several acceptable answers as a Python list string."""
    answer = str(doc["answer"])
    if doc["question_type"] != "multiple-choice" and answer.startswith("["):
        try:
            values = ast.literal_eval(answer)
            if isinstance(values, list) and values:
                return [str(v) for v in values]
        except (ValueError, SyntaxError):
            pass
    return [answer]


def mmmu_process_results(doc: dict, results: list) -> dict[str, Any]:
    """Right when the extracted answer matches the gold (any of them for open questions that list
    several)."""
    responses = responses_of(results)
    multiple_choice = doc["question_type"] == "multiple-choice"
    choices = mmmu_options(doc) if multiple_choice else None
    answer_type = "choice" if multiple_choice else None
    golds = mmmu_golds(doc)
    question = mmmu_doc_to_text(doc)
    scores = []
    for r in responses:
        pred = extract_answer(r)
        correct = pred is not None and any(answers_match(pred, g, choices, answer_type) for g in golds)
        if not correct and judge_model():
            correct = judge_says_correct(question, " or ".join(golds), r)
        scores.append(1.0 if correct else 0.0)
    return accuracy_results(responses, scores)


# --------------------------------------------------------------------------------------------------
# MMMU-Pro (MMMU/MMMU_Pro, test; 1,730 items per setting). "standard (10 options)": the MMMU columns
# (id, question, options, explanation, image_1 ... image_7, img_type, answer, topic_difficulty, subject),
# every item multiple choice with up to 10 options. "vision": id, image (a screenshot holding the question
# AND its options), options, answer, subject. The benchmark's overall score is the mean of the two
# settings (MMMU-Pro paper, 2409.02813); tgrl/evaluation/tables.py (DERIVED) derives it as task mmmu_pro.


MMMU_PRO_VISION_PROMPT = (
    "Answer the multiple-choice question shown in the image with the letter of the correct option."
)


def mmmu_pro_vision_doc_to_visual(doc: dict) -> list:
    return pil_images(doc.get("image"))


def mmmu_pro_vision_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question and its options are only in the image (the setting's point): the text says how
    to answer, nothing else."""
    return MMMU_PRO_VISION_PROMPT


def mmmu_pro_process_results(doc: dict, results: list) -> dict[str, Any]:
    """Right when the extracted answer is the gold letter (or the gold option's text)."""
    responses = responses_of(results)
    choices = mmmu_options(doc) or None
    question = doc.get("question") or MMMU_PRO_VISION_PROMPT
    return accuracy_results(
        responses, [score_response(r, str(doc["answer"]), choices, "choice", question) for r in responses]
    )


# --------------------------------------------------------------------------------------------------
# MMStar (Lin-Chen/MMStar, val): index, question (options written inside), image, answer (A-D),
# category, l2_category, meta_info


def mmstar_doc_to_visual(doc: dict) -> list:
    return pil_images(doc.get("image"))


def mmstar_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"].strip()


def mmstar_process_results(doc: dict, results: list) -> dict[str, Any]:
    responses = responses_of(results)
    question = mmstar_doc_to_text(doc)
    return accuracy_results(
        responses, [score_response(r, str(doc["answer"]), None, "choice", question) for r in responses]
    )


# --------------------------------------------------------------------------------------------------
# HallusionBench (lmms-lab-encoder/HallusionBench, split image): category (VD|VS), subcategory,
# visual_input, set_id, figure_id, sample_note, question_id, question, gt_answer_details,
# gt_answer ("1" yes / "0" no), filename, image


def hallusion_doc_to_visual(doc: dict) -> list:
    return pil_images(doc.get("image"))


def hallusion_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"].strip()


def hallusion_score(response: str, doc: dict) -> float:
    """Yes/no against ``gt_answer``. As in the official script, a question without a visual
    supplement (VS, figure 0) also counts as right when the model declines to say yes or no."""
    gold = "yes" if str(doc["gt_answer"]).strip() == "1" else "no"
    pred = extract_answer(response)
    if pred is not None and answers_match(pred, gold):
        return 1.0
    no_figure = doc["category"] == "VS" and str(doc["figure_id"]) == "0"
    if no_figure and pred and not answers_match(pred, "yes") and not answers_match(pred, "no"):
        return 1.0
    return 0.0


def hallusion_process_results(doc: dict, results: list) -> dict[str, Any]:
    """aacc per question; qacc per question (all its figure variants right); facc per figure (all
    its questions right, figures only); mean of the three."""
    responses = responses_of(results)
    scores = [hallusion_score(r, doc) for r in responses]
    base = [doc["category"], doc["subcategory"], str(doc["set_id"])]
    question_key = [*base, str(doc["question_id"])]
    figure_key = [*base, "fig", str(doc["figure_id"])]
    no_figure = doc["category"] == "VS" and str(doc["figure_id"]) == "0"
    record = {
        "question_key": question_key,
        "figure_key": None if no_figure else figure_key,
        "row_key": [*question_key, "fig", str(doc["figure_id"])],
        "scores": scores,
    }
    return {
        "aacc": {**record, "group": record["row_key"]},
        "qacc": {**record, "group": question_key},
        "facc": {**record, "group": record["figure_key"]},
        "mean": {**record, "group": record["row_key"]},
        "format": format_rate(responses),
    }


def _regroup(items: list[dict], field: str) -> list[dict]:
    return [{**it, "group": it[field]} for it in items]


def hallusion_aggregate_aacc(items: list[dict]) -> float:
    return all_correct_rate(_regroup(items, "row_key"))


def hallusion_aggregate_qacc(items: list[dict]) -> float:
    return all_correct_rate(_regroup(items, "question_key"))


def hallusion_aggregate_facc(items: list[dict]) -> float:
    return all_correct_rate(_regroup(items, "figure_key"))


def hallusion_aggregate_mean(items: list[dict]) -> float:
    return mean(
        [hallusion_aggregate_aacc(items), hallusion_aggregate_qacc(items), hallusion_aggregate_facc(items)]
    )


def aggregate_all_correct(items: list[dict]) -> float:
    """Worst-case style metrics: a group counts only when all its documents are right."""
    return all_correct_rate(items)
