"""Texts for GT-FEP: GSM8K problems and WikiText-2 from the data directory, as token sequences.

Spec gt-fep §2: a GSM8K problem is the text ``"Question: {question}\\nAnswer: {answer}"`` (format
``qa``; ``answer`` and ``question`` are the calibration variants). Each problem is one sequence
(truncated, padded on the right): every non-pad query position is an observation (§3.1) and
every text is scored on its own for perplexity (§5).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headgame.errors import HeadgameError

GSM8K_FORMATS = {
    "qa": "Question: {question}\nAnswer: {answer}",
    "answer": "{answer}",
    "question": "{question}",
}
GSM8K_TEST = "gsm8k/test.jsonl"
WIKITEXT_TEST = "wikitext2/wiki.test.raw.xz"


def data_file(rel: str, data_dir: str | None, flag: str = "--data-dir") -> Path:
    """``DATA_DIR/rel``, with a one-line error naming the fix when it is missing."""
    from headgame.data import resolve_data_dir

    root = resolve_data_dir(data_dir)
    path = root / rel
    if not path.is_file():
        raise HeadgameError(f"{rel} is not in the data directory {root}; pass {flag} pointing at the shared data folder")
    return path


def gsm8k_available(data_dir: str | None) -> bool:
    try:
        data_file(GSM8K_TEST, data_dir)
    except HeadgameError:
        return False
    return True


def gsm8k_texts(path: str | Path, fmt: str = "qa") -> list[str]:
    """All problems of a GSM8K JSONL file in the given text format, in file order."""
    if fmt not in GSM8K_FORMATS:
        raise HeadgameError(f"unknown GSM8K text format '{fmt}'; use one of {', '.join(GSM8K_FORMATS)}")
    path = Path(path)
    texts = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise HeadgameError(f"GSM8K file {path} cannot be read ({exc.strerror or exc}); check the path") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts.append(GSM8K_FORMATS[fmt].format(question=row["question"], answer=row["answer"]))
        except (ValueError, KeyError, TypeError):
            raise HeadgameError(
                f"{path} line {n} is not a GSM8K record with 'question' and 'answer'; pass the GSM8K test.jsonl"
            ) from None
    if not texts:
        raise HeadgameError(f"GSM8K file {path} has no problems; pass the GSM8K test.jsonl")
    return texts


def wikitext_text(path: str | Path) -> str:
    """The whole WikiText-2 test file (raw, optionally .xz) as one string."""
    from headgame.data import iter_texts

    return "\n".join(iter_texts(str(path)))


def shuffled(texts: Sequence[str], seed: int) -> list[str]:
    out = list(texts)
    random.Random(seed).shuffle(out)
    return out


@dataclass
class Sequences:
    """Right-padded token sequences, one per text."""

    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T], 1 = real token
    n_tokens: int
    n_texts: int
    source: str
    truncated: int = 0  # texts cut at max_len

    @property
    def n_sequences(self) -> int:
        return int(self.input_ids.shape[0])


def tokenize_texts(
    texts: Iterable[str],
    tokenizer: Any,
    *,
    max_len: int,
    max_tokens: int | None,
    min_len: int = 2,
) -> tuple[list[list[int]], int]:
    """Token ids of each text (the tokenizer's own special tokens), cut at ``max_len``, until ``max_tokens``.

    Returns (ids per text, number of texts truncated). Texts shorter than ``min_len`` tokens are skipped.
    """
    out: list[list[int]] = []
    total = truncated = 0
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        if len(ids) > max_len:
            ids, truncated = ids[:max_len], truncated + 1
        if len(ids) < min_len:
            continue
        out.append(ids)
        total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    return out, truncated


def pad_sequences(ids: list[list[int]], pad_id: int, *, source: str, truncated: int = 0) -> Sequences:
    if not ids:
        raise HeadgameError(f"data source {source} gave no text of at least two tokens; pass more text")
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, x in enumerate(ids):
        input_ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[r, : len(x)] = 1
    return Sequences(input_ids, mask, int(mask.sum()), len(ids), source, truncated)


def pad_id_of(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0
