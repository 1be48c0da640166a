"""WikiText-2 (Merity et al. 2017) raw test set, document level, rolling log-likelihood.

As lm-eval's ``wikitext``: every document (an article under a top-level `` = Title = ``
heading) is detokenised and scored in disjoint windows of ``max_length`` tokens; the metrics
pool over documents: bits per byte = −Σ log₂ P / Σ bytes, byte perplexity = 2^bpb and word
perplexity = exp(−Σ ln P / Σ words), with bytes and words counted on the original
(tokenised-spacing) page.

Data: ``wikitext2/wiki.test.raw.xz``, rebuilt from the Hugging Face rows (CRLF, blank lines
dropped; MANIFEST.md), so a page here is its non-blank lines each ending in "\n". The
original document-level pages also keep the blank lines, so bytes and words differ slightly
from published numbers; both headgame and the lm-eval bridge read these same pages.
"""

from __future__ import annotations

import math
import re
from typing import Any

from headgame.data.benchmarks import FromDataDir, FromHub, read_text
from headgame.errors import HeadgameError
from headgame.evaluate.requests import RollingRequest
from headgame.evaluate.tasks.base import TASKS, Task

_HEADING = re.compile(r"^ = [^=].* = $")

# (kind, pattern, replacement) applied in order: WikiText's tokenised spacing back to prose
_DETOK: tuple[tuple[str, str, str], ...] = (
    ("str", "s '", "s'"),
    ("re", r"/' [0-9]/", r"/'[0-9]/"),
    ("str", " @-@ ", "-"),
    ("str", " @,@ ", ","),
    ("str", " @.@ ", "."),
    ("str", " : ", ": "),
    ("str", " ; ", "; "),
    ("str", " . ", ". "),
    ("str", " ! ", "! "),
    ("str", " ? ", "? "),
    ("str", " , ", ", "),
    ("re", r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
    ("re", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("re", r"{\s*([^}]*?)\s*}", r"{\1}"),
    ("re", r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    ("re", r"'\s*([^']*?)\s*'", r"'\1'"),
    ("str", "= = = =", "===="),
    ("str", "= = =", "==="),
    ("str", "= =", "=="),
    ("str", " \u00b0 ", "\u00b0"),
    ("str", " \n", "\n"),
    ("str", "\n ", "\n"),
    ("str", " N ", " 1 "),
    ("str", " 's", "'s"),
)


def detokenize(page: str) -> str:
    for kind, pattern, repl in _DETOK:
        page = page.replace(pattern, repl) if kind == "str" else re.sub(pattern, repl, page)
    return page


def split_pages(text: str) -> list[str]:
    """Documents of a raw WikiText file: a new one starts at each top-level heading."""
    pages: list[list[str]] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip():
            continue
        if _HEADING.match(line) or not pages:
            pages.append([])
        pages[-1].append(line + "\n")
    return ["".join(p) for p in pages]


@TASKS.register("wikitext")
class WikiText(Task):
    name = "wikitext"
    label = "WikiText"
    group = "knowledge"
    kind = "rolling"
    metric = "bits_per_byte"
    higher_is_better = False
    binary = False
    description = "WikiText-2 raw test, document-level rolling log-likelihood, bits per byte (lower is better)"

    def candidates(self) -> list[Any]:
        return [FromDataDir("wikitext2/wiki.test.raw.xz"), FromDataDir("wikitext2/wiki.test.raw"),
                FromHub("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test")]

    def docs(self) -> list[dict]:
        found = self.locate()
        if found.rows is not None:
            return [{"page": r["page"]} for r in found.rows]
        pages = split_pages(read_text(found.path))
        if not pages:
            raise HeadgameError(f"{found.path} holds no WikiText page (no ' = Title = ' heading); pass the raw test file")
        return [{"page": p} for p in pages]

    def requests(self, doc: dict) -> list[Any]:
        return [RollingRequest(detokenize(doc["page"]))]

    def process(self, doc: dict, results: list[Any]) -> dict:
        ll = results[0].logprob
        n_bytes = len(doc["page"].encode("utf-8"))
        words = len(re.split(r"\s+", doc["page"]))
        return {"num": -ll / math.log(2), "den": n_bytes, "ll": ll, "bytes": n_bytes, "words": words,
                "tokens": results[0].n_tokens}

    def secondary(self, records: list[dict]) -> dict[str, float]:
        ll = sum(r["ll"] for r in records)
        n_bytes = sum(r["bytes"] for r in records)
        words = sum(r["words"] for r in records)
        if not n_bytes:
            return {}
        return {"byte_perplexity": math.exp(-ll / n_bytes), "word_perplexity": math.exp(-ll / words)}
