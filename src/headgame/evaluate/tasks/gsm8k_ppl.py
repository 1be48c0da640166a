"""GSM8K-text perplexity, the quality measure of the pruning work (docs/formulas.md#gsm8k-perplexity).

Each test problem is the text ``"Question: {question}\nAnswer: {answer}"`` (format ``qa``;
the calibration formats ``answer`` and ``question`` of gt-fep §2 are options of the class),
scored independently (no cross-example context) with rolling log-likelihood after the prefix
token; perplexity = exp(Σ NLL / Σ tokens) over the sampled problems (lower is better). Not part
of the Halluc/Knowledge aggregates.
"""

from __future__ import annotations
from typing import Any

from headgame.data.benchmarks import FromDataDir, FromHub
from headgame.evaluate.requests import RollingRequest
from headgame.evaluate.tasks.base import TASKS, Task

FORMATS = {
    "qa": lambda d: f"Question: {d['question']}\nAnswer: {d['answer']}",
    "answer": lambda d: d["answer"],
    "question": lambda d: d["question"],
}


@TASKS.register("gsm8k_ppl")
class GSM8KPerplexity(Task):
    name = "gsm8k_ppl"
    label = "GSM8K ppl"
    group = "extra"
    kind = "rolling"
    metric = "perplexity"
    higher_is_better = False
    binary = False
    transform = "exp"
    text_format = "qa"
    description = "GSM8K test texts 'Question: …\\nAnswer: …', token perplexity (lower is better)"

    def candidates(self) -> list[Any]:
        return [FromDataDir("gsm8k/test.jsonl"), FromHub("gsm8k", "main", "test")]

    def docs(self) -> list[dict]:
        return self.jsonl_docs(("question", "answer"))

    def requests(self, doc: dict) -> list[Any]:
        return [RollingRequest(FORMATS[self.text_format](doc))]

    def process(self, doc: dict, results: list[Any]) -> dict:
        res = results[0]
        return {"num": -res.logprob, "den": res.n_tokens, "ll": res.logprob, "tokens": res.n_tokens}

    def secondary(self, records: list[dict]) -> dict[str, float]:
        tokens = sum(r["tokens"] for r in records)
        return {"nll_per_token": sum(-r["ll"] for r in records) / tokens} if tokens else {}


