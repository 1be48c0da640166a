"""WinoGrande (Sakaguchi et al. 2020), dev split (winogrande_1.1 ``dev.jsonl``, 1,267 items).

Partial-sentence scoring as lm-eval's ``winogrande``: each option replaces the blank to form two
contexts, and the shared rest of the sentence after the blank is the continuation; the option
whose context gives the rest the higher log-likelihood wins.
"""

from __future__ import annotations

from typing import Any

from headgame.data.benchmarks import FromDataDir, FromHub
from headgame.errors import HeadgameError
from headgame.evaluate.requests import LoglikelihoodRequest
from headgame.evaluate.tasks.base import TASKS, Task, mc_record


def split_sentence(doc: dict) -> tuple[list[str], str]:
    """(the two contexts, the continuation) of a WinoGrande item."""
    idx = doc["sentence"].index("_")
    contexts = [doc["sentence"][:idx] + doc["option1"], doc["sentence"][:idx] + doc["option2"]]
    return contexts, " " + doc["sentence"][idx + 1:].strip()


@TASKS.register("winogrande")
class Winogrande(Task):
    name = "winogrande"
    label = "Winogrande"
    group = "knowledge"
    kind = "loglikelihood"
    metric = "acc"
    description = "WinoGrande dev, 0-shot, partial-sentence log-likelihood"

    def candidates(self) -> list[Any]:
        return [FromDataDir("winogrande/dev.jsonl"), FromHub("allenai/winogrande", "winogrande_xl", "validation")]

    def docs(self) -> list[dict]:
        def check(obj: dict, path: Any, n: int) -> None:
            if "_" not in obj["sentence"] or str(obj["answer"]) not in ("1", "2"):
                raise HeadgameError(f"{path} line {n}: the sentence needs a '_' blank and the answer must be 1 or 2; fix or re-download the file")

        return self.jsonl_docs(("sentence", "option1", "option2", "answer"), check)

    def requests(self, doc: dict) -> list[Any]:
        contexts, cont = split_sentence(doc)
        return [LoglikelihoodRequest(c, cont) for c in contexts]

    def process(self, doc: dict, results: list[Any]) -> dict:
        return mc_record(results, int(doc["answer"]) - 1)
