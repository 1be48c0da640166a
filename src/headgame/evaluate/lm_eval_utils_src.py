"""The source text of the ``utils.py`` that ``headgame eval --export-lm-eval`` writes.

lm-eval loads the exported task YAMLs' ``!function utils.…`` hooks from this file, so it must
run without headgame installed: the prompts and scoring rules are written out here as code
(the judge instructions and PopQA's instruction are filled in from headgame's own constants),
and ``tests/unit/test_lm_eval_export.py`` checks every hook against headgame's tasks.
"""

from __future__ import annotations

from headgame.evaluate.tasks.halueval import (_DIALOGUE_INSTRUCTION, _QA_INSTRUCTION, _SUMMARY_INSTRUCTION,
                                              UNTIL as HALUEVAL_UNTIL)
from headgame.evaluate.tasks.openqa import INSTRUCTION as OPENQA_INSTRUCTION
from headgame.evaluate.tasks.openqa import UNTIL as OPENQA_UNTIL

_TEMPLATE = '''"""lm-evaluation-harness hooks of headgame's own tasks (written by headgame eval --export-lm-eval).

Self-contained: lm-eval needs no headgame install to use it. Each function reproduces the
prompt or the scoring rule of the headgame task of the same name.
"""

import re
import string

HALUEVAL_UNTIL = @HALUEVAL_UNTIL@
OPENQA_UNTIL = @OPENQA_UNTIL@
QA_INSTRUCTION = @QA@
DIALOGUE_INSTRUCTION = @DIALOGUE@
SUMMARY_INSTRUCTION = @SUMMARY@
OPENQA_INSTRUCTION = @OPENQA@


# ----------------------------------------------------------------------------- HaluEval
def judged(prediction, gold_yes):
    """1.0 when the output holds exactly one of "Yes" and "No" and it is the gold one ("Yes" = hallucinated)."""
    has_yes = "Yes" in prediction
    has_no = "No" in prediction
    if has_yes == has_no:
        return 0.0
    return 1.0 if has_yes == gold_yes else 0.0


def halueval_qa_doc_to_text(doc):
    answer = doc["hallucinated_answer"] if doc["hallucinated"] else doc["right_answer"]
    return (QA_INSTRUCTION + "#Knowledge#: " + doc["knowledge"] + "\\n"
            + "#Question#: " + doc["question"] + "\\n#Answer#: " + answer + "\\n#Your Judgement#:")


def halueval_dialogue_doc_to_text(doc):
    response = doc["hallucinated_response"] if doc["hallucinated"] else doc["right_response"]
    return (DIALOGUE_INSTRUCTION + "#Knowledge#: " + doc["knowledge"] + "\\n"
            + "#Dialogue History#: " + doc["dialogue_history"] + "\\n#Response#: " + response + "\\n#Your Judgement#:")


def halueval_summarization_doc_to_text(doc):
    summary = doc["hallucinated_summary"] if doc["hallucinated"] else doc["right_summary"]
    return (SUMMARY_INSTRUCTION + "#Document#: " + doc["document"] + "\\n"
            + "#Summary#: " + summary + "\\n#Your Judgement#:")


def halueval_doc_to_target(doc):
    return "Yes" if doc["hallucinated"] else "No"


def halueval_process_results(doc, results):
    return {"acc": judged(results[0], bool(doc["hallucinated"]))}


# ----------------------------------------------------------------------------- PopQA
_ARTICLES = re.compile(r"\\b(?:The |the |An |A |The |a |an )")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_answer(text):
    """lm-eval's nq_open normalisation: drop articles, lower-case, drop punctuation."""
    return _ARTICLES.sub("", text).lower().translate(_PUNCT)


def exact_match(prediction, answers):
    pred = normalise_answer(prediction.lstrip())
    for answer in answers:
        if pred == normalise_answer(answer):
            return 1.0
    return 0.0


def popqa_doc_to_text(doc):
    """The query line Q: {question}?, then A:, adding "?" only when the question lacks one."""
    q = doc["question"].strip()
    return "Q: " + q + ("" if q.endswith("?") else "?") + "\\nA:"


def popqa_doc_to_target(doc):
    return doc["answers"][0]


def popqa_process_results(doc, results):
    return {"exact_match": exact_match(results[0], doc["answers"])}


# ----------------------------------------------------------------------------- GSM8K perplexity
def gsm8k_ppl_doc_to_target(doc):
    return "Question: " + doc["question"] + "\\nAnswer: " + doc["answer"]


def gsm8k_ppl_process_results(doc, results):
    (loglikelihood,) = results
    text = gsm8k_ppl_doc_to_target(doc)
    n_words = len(re.split(r"\\s+", text))
    n_bytes = len(text.encode("utf-8"))
    return {"word_perplexity": (loglikelihood, n_words), "byte_perplexity": (loglikelihood, n_bytes),
            "bits_per_byte": (loglikelihood, n_bytes)}
'''


def utils_source() -> str:
    """The text of the exported ``utils.py``, headgame's constants filled in."""
    fills = {"@HALUEVAL_UNTIL@": list(HALUEVAL_UNTIL), "@OPENQA_UNTIL@": list(OPENQA_UNTIL), "@QA@": _QA_INSTRUCTION,
             "@DIALOGUE@": _DIALOGUE_INSTRUCTION, "@SUMMARY@": _SUMMARY_INSTRUCTION, "@OPENQA@": OPENQA_INSTRUCTION}
    text = _TEMPLATE
    for key, value in fills.items():
        text = text.replace(key, repr(value))
    return text
