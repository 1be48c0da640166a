"""Texts as token sequences: GSM8K problems, WikiText-2 and any text source, one row per text.

The GT-FEP set-up: a GSM8K problem is the text
``"Question: {question}\nAnswer: {answer}"`` (format ``qa``; ``answer`` and ``question`` are the
calibration variants). Each problem is one sequence (truncated, padded on the right): every
non-pad query position is an observation of the heads' argmax-key symbols, and every text is
scored on its own for perplexity. Other sources are packed into blocks by
:func:`headgame.data.pack_blocks`. :class:`Sequences` is the one container; the measurements
(:mod:`headgame.measure`) iterate it with :func:`sequence_batches`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headgame.data.datadir import data_file
from headgame.data.packing import pack_blocks
from headgame.data.sources import iter_texts
from headgame.errors import HeadgameError

GSM8K_FORMATS = {
    "qa": "Question: {question}\nAnswer: {answer}",
    "answer": "{answer}",
    "question": "{question}",
}
GSM8K_TEST = "gsm8k/test.jsonl"
WIKITEXT_TEST = "wikitext2/wiki.test.raw.xz"


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


def prefix(seqs: Sequences, max_tokens: int) -> Sequences:
    """The first sequences of ``seqs`` whose tokens reach ``max_tokens`` (at least one)."""
    lengths = seqs.attention_mask.sum(1)
    cum = torch.cumsum(lengths, 0)
    n = int((cum < max_tokens).sum()) + 1
    n = min(n, seqs.n_sequences)
    mask = seqs.attention_mask[:n]
    return Sequences(seqs.input_ids[:n], mask, int(mask.sum()), n, seqs.source)


def sequence_batches(seqs: Sequences, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids [B, T'], attention_mask [B, T']) per chunk of ``batch_size`` sequences.

    Padding is on the right, so the chunk's trailing all-pad columns are dropped (T' ≤ T).
    """
    for s in range(0, seqs.n_sequences, batch_size):
        ids = seqs.input_ids[s : s + batch_size]
        mask = seqs.attention_mask[s : s + batch_size]
        width = int(mask.sum(1).max())  # drop all-pad columns
        yield ids[:, :width], mask[:, :width]


def resolve_source(data: str, data_dir: str | None) -> str:
    """'auto' becomes 'gsm8k' when the data directory holds GSM8K, else the packaged corpus."""
    if data == "auto":
        return "gsm8k" if gsm8k_available(data_dir) else "default"
    return data


def check_sequence_source(source: str, *, text_field: str = "text", data_dir: str | None = None) -> None:
    """The checks of :func:`load_sequences`'s inputs that need no tokenizer: a missing GSM8K file or
    text source fails here, before the model is loaded (``source`` as :func:`resolve_source` gives it)."""
    from headgame.data.sources import check_source

    if source == "gsm8k":
        data_file(GSM8K_TEST, data_dir)
    else:
        check_source(source, text_field=text_field, data_dir=data_dir)


def load_sequences(
    source: str,
    tokenizer: Any,
    *,
    causal: bool,
    max_tokens: int,
    seq_len: int,
    data_dir: str | None = None,
    text_field: str = "text",
    gsm8k_format: str = "qa",
    seed: int = 0,
) -> Sequences:
    """GSM8K problems (shuffled with ``seed``, one sequence each) or packed blocks of any source."""
    if source == "gsm8k":
        path = data_file(GSM8K_TEST, data_dir)
        texts = shuffled(gsm8k_texts(path, gsm8k_format), seed)
        ids, cut = tokenize_texts(texts, tokenizer, max_len=seq_len, max_tokens=max_tokens)
        return pad_sequences(ids, pad_id_of(tokenizer), source=f"gsm8k ({path})", truncated=cut)
    wrap = None if causal else (tokenizer.cls_token_id, tokenizer.sep_token_id)
    blocks = pack_blocks(
        iter_texts(source, text_field=text_field, data_dir=data_dir), tokenizer, seq_len=seq_len, max_tokens=max_tokens,
        eos_id=tokenizer.eos_token_id if causal else None, source_name=source,
        wrap_cls_sep=wrap if wrap and None not in wrap else None,
    )
    return Sequences(blocks.input_ids, blocks.attention_mask, blocks.n_tokens, blocks.n_blocks, source)
