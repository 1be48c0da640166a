"""Pack a stream of documents into fixed-length token blocks.

Causal-LM packing (the default): documents are tokenized one at a time, joined into one
token stream with ``eos_id`` *between* documents (and ``bos_id`` before each document when
given), and cut into full blocks of ``seq_len``; the final partial block is dropped, so every
position is a real token and the attention mask is all ones.

Encoder packing (``wrap_cls_sep=(cls, sep)``, for BERT-family models): the stream is cut into
chunks of ``seq_len - 2`` tokens and each block becomes ``[CLS] chunk [SEP]``.

With a token budget the stream stops as soon as the last block is full: later documents are
never read or tokenized, so a 50k-token run over a large corpus costs 50k tokens of work.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from headgame.data.sources import iter_texts, no_text_error
from headgame.errors import HeadgameError

# Documents longer than this many characters are tokenized in pieces cut at paragraph
# breaks: a budget then stops inside a book instead of tokenizing all of it, and fast
# tokenizers never see multi-megabyte strings. Cutting at a blank line changes at most the
# token at each cut, once per ~8k tokens.
PIECE_CHARS = 32_000


@dataclass(frozen=True)
class Blocks:
    """Packed token blocks ready to batch."""

    input_ids: torch.Tensor
    """``[n_blocks, seq_len]`` int64 token ids."""
    attention_mask: torch.Tensor
    """``[n_blocks, seq_len]`` int64, 1 = real token (packing never pads, so all ones; chat rows
    of :mod:`headgame.data.chat` are right-padded)."""
    n_tokens: int
    """Non-pad tokens in the blocks (including CLS/SEP/EOS/BOS)."""
    n_documents: int
    """Documents that contributed at least one token to the blocks."""
    source: str
    """Name of the data source, for reports."""
    labels: torch.Tensor | None = None
    """``[n_blocks, seq_len]`` int64 unshifted targets, -100 = no loss (None: every token is its
    own target, as in packed text)."""

    @property
    def n_blocks(self) -> int:
        """Number of blocks (rows)."""
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        """Tokens per block (columns)."""
        return int(self.input_ids.shape[1])

    def __len__(self) -> int:
        return self.n_blocks


def _split_pieces(text: str, piece_chars: int = PIECE_CHARS) -> Iterator[str]:
    """Cut ``text`` into pieces of about ``piece_chars``, preferring paragraph breaks.

    The separator stays at the end of the earlier piece, so joining the pieces gives
    ``text`` back exactly.
    """
    start = 0
    while len(text) - start > piece_chars:
        target = start + piece_chars
        end = -1
        for sep in ("\n\n", "\n", " "):
            # Look ahead up to one more piece for a natural break before cutting hard.
            found = text.find(sep, target, target + piece_chars)
            if found != -1:
                end = found + len(sep)
                break
        if end == -1:
            end = target
        yield text[start:end]
        start = end
    if start < len(text):
        yield text[start:]


def _encode(tokenizer: Any, text: str) -> list[int]:
    # Documents are longer than the model's context by design (they are cut into blocks), so
    # transformers' "sequence length is longer than the maximum" warning is noise here.
    try:
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    except TypeError:  # a minimal tokenizer without the verbose flag
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def pack_blocks(
    texts: Iterable[str],
    tokenizer: Any,
    *,
    seq_len: int,
    max_tokens: int | None,
    bos_id: int | None = None,
    eos_id: int | None = None,
    wrap_cls_sep: tuple[int, int] | None = None,
    source_name: str = "data",
) -> Blocks:
    """Tokenize and pack ``texts`` into ``max_tokens // seq_len`` blocks of ``seq_len``.

    Args:
        texts: documents, read lazily and only as far as the budget needs.
        tokenizer: callable as ``tokenizer(text, add_special_tokens=False)["input_ids"]``.
        seq_len: tokens per block (including CLS/SEP when wrapping).
        max_tokens: token budget; None packs the whole corpus.
        bos_id: prepended to every document when given.
        eos_id: placed between consecutive documents when given (a tokenizer may have none).
        wrap_cls_sep: ``(cls_id, sep_id)`` for encoder-style ``[CLS] ... [SEP]`` blocks.
        source_name: names the source in errors and in the result.

    Returns:
        The full blocks; fewer than the budget asks for when the corpus runs out first
        (``n_tokens`` tells the real count).

    Raises:
        HeadgameError: the budget or corpus is smaller than one block, or there is no text.
    """
    reserved = 2 if wrap_cls_sep is not None else 0
    if seq_len <= reserved:
        need = reserved + 1
        raise HeadgameError(f"--seq-len {seq_len} is too small; use at least {need}")
    if max_tokens is not None and max_tokens < seq_len:
        raise HeadgameError(
            f"--max-tokens {max_tokens} is smaller than one block of --seq-len {seq_len} "
            f"tokens; raise --max-tokens to at least {seq_len} or lower --seq-len"
        )
    chunk = seq_len - reserved  # document tokens per block
    max_blocks = None if max_tokens is None else max_tokens // seq_len

    rows: list[torch.Tensor] = []
    buffer: list[int] = []
    streamed = 0  # document-stream tokens read so far (separators included)
    doc_starts: list[int] = []  # stream offset of each document's first token
    done = False
    for text in texts:
        first_piece = True
        for piece in _split_pieces(text):
            ids = _encode(tokenizer, piece)
            if first_piece and ids:
                # Separator and BOS go in only once the document proves non-empty, so
                # whitespace-only documents leave no stray EOS behind.
                prefix: list[int] = []
                if doc_starts and eos_id is not None:
                    prefix.append(eos_id)
                if bos_id is not None:
                    prefix.append(bos_id)
                doc_starts.append(streamed + len(prefix))
                ids = prefix + ids
                first_piece = False
            buffer.extend(ids)
            streamed += len(ids)
            n_full = len(buffer) // chunk
            if max_blocks is not None:
                n_full = min(n_full, max_blocks - len(rows))
            for i in range(n_full):
                rows.append(torch.tensor(buffer[i * chunk : (i + 1) * chunk], dtype=torch.long))
            del buffer[: n_full * chunk]
            if max_blocks is not None and len(rows) >= max_blocks:
                done = True
                break
        if done:
            break  # budget met: never read the next document

    if not rows:
        if streamed == 0:
            raise no_text_error(source_name)
        raise HeadgameError(
            f"data source {source_name} has only {streamed} tokens, fewer than one block of "
            f"--seq-len {seq_len} ({chunk} text tokens); lower --seq-len or give more text"
        )

    input_ids = torch.stack(rows)  # [n_blocks, chunk]
    if wrap_cls_sep is not None:
        cls_id, sep_id = wrap_cls_sep
        n = input_ids.shape[0]
        cls_col = torch.full((n, 1), cls_id, dtype=torch.long)
        sep_col = torch.full((n, 1), sep_id, dtype=torch.long)
        input_ids = torch.cat([cls_col, input_ids, sep_col], dim=1)  # [n_blocks, seq_len]
    attention_mask = torch.ones_like(input_ids)  # packing never pads
    packed = len(rows) * chunk  # stream tokens that made it into blocks
    return Blocks(
        input_ids=input_ids,
        attention_mask=attention_mask,
        n_tokens=int(attention_mask.sum()),
        n_documents=bisect.bisect_left(doc_starts, packed),
        source=source_name,
    )


def iter_batches(blocks: Blocks, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(input_ids, attention_mask)`` slices of ``batch_size`` blocks, in order.

    The last batch is smaller when ``batch_size`` does not divide the block count. Slices
    are views: no copy is made.
    """
    if batch_size < 1:
        raise HeadgameError(f"--batch-size {batch_size} must be at least 1; pass a positive size")
    for start in range(0, blocks.n_blocks, batch_size):
        stop = start + batch_size
        yield blocks.input_ids[start:stop], blocks.attention_mask[start:stop]


def load_blocks(
    source: str,
    tokenizer: Any,
    *,
    seq_len: int,
    max_tokens: int | None,
    text_field: str = "text",
    data_dir: str | None = None,
    encoder: bool = False,
) -> Blocks:
    """Read ``source`` and pack it with the tokenizer's own special tokens.

    Causal models get the tokenizer's EOS between documents (none if it has no EOS);
    ``encoder=True`` wraps blocks in the tokenizer's CLS/SEP and separates documents by SEP.
    """
    eos_id = getattr(tokenizer, "eos_token_id", None)
    wrap: tuple[int, int] | None = None
    if encoder:
        cls_id = getattr(tokenizer, "cls_token_id", None)
        sep_id = getattr(tokenizer, "sep_token_id", None)
        if cls_id is None or sep_id is None:
            raise HeadgameError(
                "encoder packing needs a tokenizer with CLS and SEP tokens; use the model's "
                "own tokenizer or pack causally"
            )
        wrap, eos_id = (cls_id, sep_id), sep_id
    return pack_blocks(
        iter_texts(source, text_field=text_field, data_dir=data_dir),
        tokenizer,
        seq_len=seq_len,
        max_tokens=max_tokens,
        eos_id=eos_id,
        wrap_cls_sep=wrap,
        source_name=source,
    )
