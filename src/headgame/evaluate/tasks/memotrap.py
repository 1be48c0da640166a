"""MemoTrap (Liu & Liu 2023; ``memo-trap_v2`` of the Hallucinations Leaderboard).

The four subtask files of liujch1998/memo-trap (proverb ending, proverb translation, hate-speech
ending, history-of-science QA; 2,539 items) are read in that order and sampled together. Each
prompt is a context and each of its ``classes`` a continuation joined with the empty target
delimiter (v2); accuracy of the highest log-likelihood class.

CAD's evidence span (docs/formulas.md#cad) is the instruction that sets up the trap: everything up
to the ``": "`` after the quoted word (files 1 and 3), up to and including ``"to:\n"`` (file 2),
or the first line (file 4); the rest of the prompt is the query.
"""

from __future__ import annotations

import ast
from typing import Any

from headgame.data.benchmarks import FromDataDir, FromHub, read_csv
from headgame.errors import HeadgameError
from headgame.evaluate.requests import LoglikelihoodRequest
from headgame.evaluate.tasks.base import TASKS, Task, mc_record

FILES = ("1-proverb-ending.csv", "2-proverb-translation.csv", "3-hate-speech-ending.csv", "4-history-of-science-qa.csv")


def evidence_span(prompt: str) -> tuple[int, int] | None:
    """Characters [0, end) forming the instruction of a MemoTrap prompt."""
    for marker in ('": ', "\nto:\n"):
        at = prompt.find(marker)
        if at >= 0:
            return (0, at + len(marker))
    at = prompt.find("\n")
    return (0, at + 1) if at > 0 else None


def _from_hub(row: dict) -> dict:
    return {"prompt": row["prompt"], "classes": list(row["classes"]), "answer_index": int(row["answer_index"]), "subtask": "hub"}


@TASKS.register("memotrap")
class MemoTrap(Task):
    name = "memotrap"
    label = "MemoTrap"
    group = "halluc"
    kind = "loglikelihood"
    metric = "acc"
    description = "MemoTrap v2 (4 subtasks), 0-shot, log-likelihood over classes, empty target delimiter"

    def candidates(self) -> list[Any]:
        return [FromDataDir("memotrap/" + FILES[0]), FromHub("pminervini/inverse-scaling", "memo-trap", "data", _from_hub)]

    def docs(self) -> list[dict]:
        found = self.locate()
        if found.rows is not None:
            return found.rows
        docs = []
        for name in FILES:
            path = found.path.parent / name
            if not path.exists():
                raise HeadgameError(f"MemoTrap file {path} is missing; the data directory needs all four files of liujch1998/memo-trap")
            for line, row in read_csv(path, ("prompt", "classes", "answer_index")):
                try:
                    classes = ast.literal_eval(row["classes"])
                    gold = int(row["answer_index"])
                except (ValueError, SyntaxError):
                    raise HeadgameError(f"{path} line {line}: 'classes' must be a Python list literal and 'answer_index' an integer; fix or re-download the file") from None
                if not isinstance(classes, list) or not 0 <= gold < len(classes):
                    raise HeadgameError(f"{path} line {line}: answer_index {gold} does not index the classes {classes!r}; fix the file")
                docs.append({"prompt": row["prompt"], "classes": classes, "answer_index": gold, "subtask": name.split(".")[0]})
        return docs

    def requests(self, doc: dict) -> list[Any]:
        span = evidence_span(doc["prompt"])
        return [LoglikelihoodRequest(doc["prompt"], c, cad_span=span) for c in doc["classes"]]

    def process(self, doc: dict, results: list[Any]) -> dict:
        return mc_record(results, doc["answer_index"], {"subtask": doc["subtask"]})
