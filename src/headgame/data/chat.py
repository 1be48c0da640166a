"""Chat and instruction data for ``headgame train``: one conversation per row, loss on the assistant.

A JSON/JSONL source whose first record has a ``messages`` field (a list of ``{role, content}``)
or ``prompt`` and ``completion`` fields (the user turn and the assistant turn) is chat data;
one with the text field is plain text, packed as before (:mod:`headgame.data.packing`).

Each conversation is written by the model's chat template and becomes one row of ``seq_len``
tokens, right-truncated and right-padded, so no token attends to another conversation. Its
labels are the ids themselves on the tokens that carry the loss and -100 elsewhere (padding
always): with ``loss_on="assistant"`` those are the assistant turns, each as the template writes
it after the generation prompt (content and end-of-turn marker); with ``"all"`` every real token.

The assistant spans come from rendering the conversation prefix by prefix: turn ``i`` spans from
the end of ``template(messages[:i], add_generation_prompt=True)`` to the end of
``template(messages[:i + 1])``. The rendered text is tokenized piece by piece at those
boundaries, so the mask is exact for any tokenizer.
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

import torch

from headgame.data.packing import Blocks, _encode, load_blocks
from headgame.data.sources import json_records
from headgame.errors import HeadgameError

FORMATS = ("text", "messages", "prompt_completion")
LOSS_ON = ("assistant", "all")
IGNORE = -100  # the ignore_index of torch's cross-entropy


def detect_format(source: str, *, text_field: str = "text", data_dir: str | None = None) -> str:
    """``"text"``, ``"messages"`` or ``"prompt_completion"`` from the first record of a JSON/JSONL
    file; every other source is text. Raises a one-line error when the first record has none of
    the fields."""
    records = json_records(source, text_field=text_field, data_dir=data_dir)
    if records is None:
        return "text"
    with closing(records):
        for where, record in records:
            if not isinstance(record, dict) or text_field in record:
                return "text"  # strings are documents; other types get iter_texts's own error
            if "messages" in record:
                return "messages"
            if "prompt" in record and "completion" in record:
                return "prompt_completion"
            keys = ", ".join(list(map(str, record))[:12]) or "none"
            raise HeadgameError(
                f"{where} has none of the fields '{text_field}', 'messages' or 'prompt'/'completion' "
                f"(its keys: {keys}); pass --text-field naming the text field, or write chat records "
                "with messages or prompt and completion"
            )
    return "text"


def check_chat_tokenizer(tokenizer: Any, source: str) -> None:
    """Chat data needs the model's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise HeadgameError(
            f"--data {source} holds chat records but the model's tokenizer has no chat template; "
            "use a chat (instruct) model, or plain-text records with --text-field"
        )


def _messages(record: Any, where: str, fmt: str) -> list[dict[str, str]]:
    if not isinstance(record, dict):
        raise HeadgameError(f"{where} is a JSON {type(record).__name__}, not an object; give every record the fields of the first")
    if fmt == "prompt_completion":
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise HeadgameError(f"{where} needs string fields 'prompt' and 'completion' like the first record; fix that record")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        raise HeadgameError(f"{where} field 'messages' must be a non-empty list of {{role, content}} string objects; fix that record")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool, where: str) -> str:
    if not messages:
        return ""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    except Exception as exc:  # jinja's raise_exception (e.g. roles that do not alternate), bad templates
        raise HeadgameError(f"{where}: the model's chat template refused the conversation ({exc}); fix that record's roles") from exc


def conversation_tokens(tokenizer: Any, messages: list[dict[str, str]], loss_on: str = "assistant",
                        where: str = "record") -> tuple[list[int], list[bool]]:
    """Token ids of one conversation as the chat template writes it, and which carry the loss."""
    full = _render(tokenizer, messages, False, where)
    if loss_on == "all":
        ids = _encode(tokenizer, full)
        return ids, [True] * len(ids)
    cuts: list[tuple[int, int]] = []  # character spans of the assistant turns
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, through = _render(tokenizer, messages[:i], True, where), _render(tokenizer, messages[: i + 1], False, where)
        if not (full.startswith(before) and full.startswith(through) and len(before) <= len(through)):
            raise HeadgameError(
                f"{where}: the model's chat template does not write the conversation prefix by prefix, "
                "so the assistant tokens cannot be found; pass --loss-on all"
            )
        cuts.append((len(before), len(through)))
    ids: list[int] = []
    loss: list[bool] = []
    pos = 0
    for start, end in cuts:
        for text, on in ((full[pos:start], False), (full[start:end], True)):
            piece = _encode(tokenizer, text) if text else []
            ids.extend(piece)
            loss.extend([on] * len(piece))
        pos = max(pos, end)
    tail = _encode(tokenizer, full[pos:]) if pos < len(full) else []
    return ids + tail, loss + [False] * len(tail)


def load_chat_rows(source: str, tokenizer: Any, *, fmt: str, seq_len: int, max_tokens: int | None,
                   loss_on: str = "assistant", text_field: str = "text", data_dir: str | None = None) -> Blocks:
    """One right-padded row of ``seq_len`` per conversation, read until the rows hold
    ``max_tokens`` real tokens. Rows left with no loss token after truncation are skipped."""
    check_chat_tokenizer(tokenizer, source)
    records = json_records(source, text_field=text_field, data_dir=data_dir)
    assert records is not None, "detect_format returned a chat format for a source that is not a JSON file"
    pad = next((t for t in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)) if t is not None), 0)
    rows, masks, labels = [], [], []
    n_tokens = skipped = 0
    with closing(records):
        for where, record in records:
            ids, loss = conversation_tokens(tokenizer, _messages(record, where, fmt), loss_on, where)
            ids, loss = ids[:seq_len], loss[:seq_len]
            if not any(loss[1:]):  # position 0 is never a target of next-token prediction
                skipped += 1
                continue
            fill = seq_len - len(ids)
            rows.append(ids + [pad] * fill)
            masks.append([1] * len(ids) + [0] * fill)
            labels.append([t if on else IGNORE for t, on in zip(ids, loss)] + [IGNORE] * fill)
            n_tokens += len(ids)
            if max_tokens is not None and n_tokens >= max_tokens:
                break
    if not rows:
        why = f"all {skipped} conversation(s) lose their loss tokens to --seq-len {seq_len}; raise --seq-len" if skipped \
            else "it has no conversation; give it some records"
        raise HeadgameError(f"chat data {source} gives no row to train on: {why}")
    return Blocks(
        input_ids=torch.tensor(rows, dtype=torch.long),  # [n_rows, seq_len]
        attention_mask=torch.tensor(masks, dtype=torch.long),
        n_tokens=n_tokens,
        n_documents=len(rows),
        source=source,
        labels=torch.tensor(labels, dtype=torch.long),
    )


def load_training_data(source: str, tokenizer: Any, *, fmt: str, seq_len: int, max_tokens: int | None,
                       loss_on: str = "assistant", text_field: str = "text", data_dir: str | None = None) -> Blocks:
    """Packed blocks for plain text (``labels`` None), chat rows for the chat formats."""
    if fmt == "text":
        return load_blocks(source, tokenizer, seq_len=seq_len, max_tokens=max_tokens, text_field=text_field, data_dir=data_dir)
    return load_chat_rows(source, tokenizer, fmt=fmt, seq_len=seq_len, max_tokens=max_tokens, loss_on=loss_on,
                          text_field=text_field, data_dir=data_dir)
