"""The scoring engine: a transformers causal LM behind the narrow evaluation interface.

Tokenisation follows lm-evaluation-harness so that scores agree item by item: no special
tokens are added; trailing spaces of a context move into the continuation; the continuation's
tokens are those of ``tok(context + continuation)`` after ``len(tok(context))``; an empty
context becomes the prefix token (BOS, else EOS); inputs are truncated from the left; rolling
log-likelihood uses disjoint windows of ``max_length`` tokens.

Speed comes from computing shared context once: requests are sorted by their tokens, runs of
requests whose inputs share a long common prefix (a few-shot preamble, or the context of one
multiple-choice item) form a group whose prefix runs once, and only the remaining suffixes are
batched (right-padded, sorted by length, bounded by a token budget). Requests that need the same
row (single-token answers of one question) share it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from headgame.dist import merge_indexed, my_share
from headgame.evaluate.decoding import DecodingMethod, PositionStates, Sharpness, feed_sharpness
from headgame.evaluate.forward import ModelParts, Prefix, common_prefix_len, prefix_runs, run_prefix, run_rows
from headgame.evaluate.generation import generate
from headgame.evaluate.requests import (
    Progress,
    GenerateRequest,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    RollingRequest,
    RollingResult,
    without_span,
)

log = logging.getLogger(__name__)



class Tokens:
    """lm-eval-compatible encoding helpers around a Hugging Face tokenizer."""

    def __init__(self, tokenizer, *, chat_template: bool = False) -> None:
        self.tok = tokenizer
        self.chat = chat_template
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.prefix_token = bos if bos is not None else eos
        self.eos = eos
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def render(self, context: str) -> str:
        """The prompt as the model sees it: plain text, or the user turn of the chat template."""
        if not self.chat or not context:
            return context
        return self.tok.apply_chat_template(
            [{"role": "user", "content": context}], tokenize=False, add_generation_prompt=True
        )

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        context = self.render(context)
        if not context:
            return [self.prefix_token], self.encode(continuation)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def encode_context(self, context: str) -> list[int]:
        """A second view's context, split as :meth:`encode_pair` splits the first."""
        context = self.render(context).rstrip()
        return self.encode(context) if context else [self.prefix_token]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


def rolling_windows(tokens: list[int], prefix_token: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint (context, continuation) windows covering every token once (lm-eval's scheme)."""
    if not tokens:
        return []
    out = []
    first = min(max_len, len(tokens))
    out.append(([prefix_token], tokens[:first]))
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_len)
        end = done + n
        window = tokens[max(end - max_len - 1, 0): end - 1]
        out.append((window[: len(window) - (n - 1)], tokens[end - n: end]))
        done = end
    return out


@dataclass
class Unit:
    """One scored continuation: per view an input row, the positions predicting ``targets``."""

    index: int
    rows: list[tuple[int, ...]]
    positions: list[int]  # into each row (the same count for every view)
    targets: list[int]


@dataclass
class ScorerConfig:
    max_length: int = 2048
    """Longest input in tokens (lm-eval's max_length); longer inputs are truncated on the left."""
    batch_tokens: int = 2048
    """Token budget of one batch of suffix rows (rows x longest row)."""
    max_batch: int = 32
    """Most rows in one batch."""
    min_prefix: int = 16
    """Shortest common prefix worth running once and caching."""
    chunk_units: int = 256
    """Units scored per pass through a group (bounds the memory of kept hidden states)."""
    gen_batch: int = 16
    """Prompts generated together."""


class HFScorer:
    """Implements :class:`~headgame.evaluate.requests.LanguageModel` for a transformers causal LM."""

    def __init__(self, model, tokenizer, method: DecodingMethod | None = None, config: ScorerConfig | None = None,
                 *, chat_template: bool = False) -> None:
        self.parts = ModelParts.from_model(model)
        self.model = model
        self.tokens = Tokens(tokenizer, chat_template=chat_template)
        self.method = method or DecodingMethod()
        self.cfg = config or ScorerConfig()
        n = self.parts.n_layers
        self.layers = self.method.hidden_layers(n)
        self.info_layer = self.method.info_layer(n)
        self.stats = {"forward_tokens": 0, "prefix_tokens": 0, "input_tokens": 0}
        self._proper = False

    # ------------------------------------------------------------------ interface
    @torch.inference_mode()
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest], progress: Progress | None = None) -> list[LoglikelihoodResult]:
        units = [self._unit(i, r) for i, r in enumerate(requests)]
        tick = None
        if progress is not None:  # each chunk's answers go with the count (the bar's running score)
            def tick(done: int, chunk: list[tuple[Unit, tuple[float, bool]]]) -> None:
                progress(done, {u.index: LoglikelihoodResult(lp, greedy, len(u.targets)) for u, (lp, greedy) in chunk})
        scored = self._score_units(units, tick)
        return [LoglikelihoodResult(lp, greedy, len(u.targets)) for u, (lp, greedy) in zip(units, scored)]

    @torch.inference_mode()
    def loglikelihood_rolling(self, requests: Sequence[RollingRequest], progress: Progress | None = None) -> list[RollingResult]:
        units: list[Unit] = []
        owner: list[int] = []
        for i, r in enumerate(requests):
            toks = self.tokens.encode(r.text)
            for ctx, cont in rolling_windows(toks, self.tokens.prefix_token, self.cfg.max_length):
                units.append(self._make_unit(len(units), [ctx] * self.method.n_views, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        counts = [0] * len(requests)
        scale = len(requests) / max(len(units), 1)
        tick = (lambda n, _chunk: progress(int(n * scale))) if progress is not None else None
        self._proper = True  # perplexity needs a normalised distribution (no plausibility floor)
        try:
            scored = self._score_units(units, tick)
        finally:
            self._proper = False
        for u, (lp, _) in zip(units, scored):
            totals[owner[u.index]] += lp
            counts[owner[u.index]] += len(u.targets)
        return [RollingResult(t, c) for t, c in zip(totals, counts)]

    def generate_until(self, requests: Sequence[GenerateRequest], progress: Progress | None = None) -> list[str]:
        return generate(self, requests, progress)

    # ------------------------------------------------------------------ units
    def _unit(self, index: int, req: LoglikelihoodRequest) -> Unit:
        ctx, cont = self.tokens.encode_pair(req.context, req.continuation)
        views = [ctx]
        if self.method.n_views > 1:
            other = self.tokens.encode_context(without_span(req.context, req.cad_span)) if req.cad_span else ctx
            views.append(other)
        return self._make_unit(index, views, cont)

    def _make_unit(self, index: int, contexts: list[list[int]], cont: list[int]) -> Unit:
        """Rows are ``(context + continuation)[:-1]``, left-truncated to ``max_length`` tokens."""
        limit = self.cfg.max_length
        cont = cont[-limit:]  # a continuation longer than the window keeps its last tokens (as lm-eval)
        rows = [tuple((ctx + cont)[-(limit + 1):][:-1]) for ctx in contexts]
        n0 = len(rows[0])
        return Unit(index, rows, list(range(n0 - len(cont), n0)), cont)

    # ------------------------------------------------------------------ batching
    def _groups(self, units: list[Unit]) -> list[tuple[int, list[Unit]]]:
        """Runs of units whose rows share a prefix worth running once (see :func:`prefix_runs`);
        the prefix also ends before the first predicted position of every row."""
        limits = [min(pos[0] for pos in self._row_positions(u)) if u.positions else 0 for u in units]
        runs = prefix_runs([u.rows for u in units], self.cfg.min_prefix, limits)
        return [(plen, [units[i] for i in idx]) for plen, idx in runs]

    def _row_positions(self, u: Unit) -> list[list[int]]:
        """Positions per view: every view ends with the same continuation, so shift by length."""
        n0 = len(u.rows[0])
        return [[p - n0 + len(r) for p in u.positions] for r in u.rows]

    def _score_units(self, units: list[Unit], progress: Callable[[int, list], None] | None) -> list[tuple[float, bool]]:
        """(log-probability, is greedy) per unit; ``progress(done, [(unit, result), ...])`` after each chunk."""
        results: dict[int, tuple[float, bool]] = {}
        done = 0
        groups = self._groups(units)
        # the work is (run, chunk) pairs; several processes take contiguous blocks of them (headgame.dist)
        work = [(g, start) for g, (_, members) in enumerate(groups) for start in range(0, len(members), self.cfg.chunk_units)]
        current, prefix = -1, None
        for g, start in (work[w] for w in my_share(len(work))):
            plen, members = groups[g]
            if g != current:
                current, prefix = g, (self.prefix(members[0].rows[0][:plen], counted=start == 0) if plen else None)
            chunk = members[start: start + self.cfg.chunk_units]
            pairs = list(zip(chunk, self._score_chunk(chunk, prefix)))
            for u, res in pairs:
                results[u.index] = res
            done += len(chunk)
            if progress is not None:
                progress(done, pairs)
        results = merge_indexed(results)
        return [results.get(u.index, (0.0, True)) for u in units]

    def prefix(self, tokens: tuple[int, ...] | list[int], counted: bool = True) -> Prefix:
        """Run a shared prefix once (with ActDec's sharpness state after it). ``counted=False``: a
        process that takes up a run midway repeats the prefix the run's first process counted."""
        prefix = run_prefix(self.parts, tokens, self.info_layer)
        self.stats["prefix_tokens"] += prefix.length if counted else 0
        self.stats["forward_tokens"] += prefix.length if counted else 0
        if self.info_layer is not None:
            prefix.sharpness = Sharpness(self.parts.vocab_size, device=self.parts.device)
            feed_sharpness(self.parts, prefix.sharpness, prefix.info_hidden, self.info_layer)
        return prefix

    def start_sharpness(self, prefix: Prefix | None) -> Sharpness:
        if prefix is not None and prefix.sharpness is not None:
            return prefix.sharpness.copy()
        return Sharpness(self.parts.vocab_size, device=self.parts.device)

    def _score_chunk(self, chunk: list[Unit], prefix: Prefix | None) -> list[tuple[float, bool]]:
        plen = prefix.length if prefix is not None else 0
        # rows are hashed once here; everything after works on integer row ids
        ids: dict[tuple[int, ...], int] = {}
        unit_rows: list[list[int]] = []
        need: list[set[int]] = []
        for u in chunk:
            rids = []
            for row, pos in zip(u.rows, self._row_positions(u)):
                rid = ids.setdefault(row, len(ids))
                if rid == len(need):
                    need.append(set())
                need[rid].update(pos)
                rids.append(rid)
            unit_rows.append(rids)
        rows = list(ids)
        order = sorted(range(len(rows)), key=lambda r: len(rows[r]), reverse=True)
        store = _RowStore(len(rows))
        i = 0
        while i < len(order):
            width = len(rows[order[i]]) - plen
            j = i + 1
            while j < len(order) and j - i < self.cfg.max_batch and (j - i + 1) * width <= self.cfg.batch_tokens:
                j += 1
            batch = order[i:j]
            suffixes = [list(rows[r][plen:]) for r in batch]
            pos = [sorted(p - plen for p in need[r]) for r in batch]
            out = run_rows(self.parts, suffixes, pos, prefix=prefix, layers=self.layers,
                           info_layer=self.info_layer, pad_id=self.tokens.pad)
            self.stats["forward_tokens"] += sum(len(x) for x in suffixes)
            k = 0
            for b, r in enumerate(batch):
                n = len(pos[b])
                store.put(r, [p + plen for p in pos[b]], out.final[k: k + n],
                          {l: t[k: k + n] for l, t in out.layers.items()},
                          out.info[b] if out.info is not None else None)
                k += n
            i = j
        self.stats["input_tokens"] += sum(len(u.rows[0]) + 1 for u in chunk)
        return self._score_positions(chunk, unit_rows, store, prefix)

    def _score_positions(self, chunk: list[Unit], unit_rows: list[list[int]], store: "_RowStore",
                         prefix: Prefix | None, block: int = 512) -> list[tuple[float, bool]]:
        """Sum the target log-scores of every unit; positions of many units go through the LM
        head together (one large matrix product instead of one small one per unit)."""
        totals = [0.0] * len(chunk)
        greedy = [True] * len(chunk)
        plen = prefix.length if prefix is not None else 0
        pending: list[tuple[int, list[torch.Tensor], dict[int, torch.Tensor], torch.Tensor | None, list[int]]] = []
        n_pending = 0

        def flush() -> None:
            nonlocal pending, n_pending
            if not pending:
                return
            views = [torch.cat([p[1][k] for p in pending]) for k in range(self.method.n_views)]
            layers = {l: torch.cat([p[2][l] for p in pending]) for l in self.layers}
            sharp = torch.cat([p[3] for p in pending]) if self.info_layer is not None else None
            scores = self.method.logprobs(self.parts, PositionStates(views, layers, sharp), proper=self._proper)  # [n, V]
            tgt = torch.tensor([t for p in pending for t in p[4]], dtype=torch.long, device=scores.device)
            picked = scores.gather(1, tgt[:, None])[:, 0].tolist()
            hits = (scores.argmax(dim=-1) == tgt).tolist()
            at = 0
            for ui, *_, targets in pending:
                n = len(targets)
                totals[ui] += sum(picked[at: at + n])
                greedy[ui] = greedy[ui] and all(hits[at: at + n])
                at += n
            pending, n_pending = [], 0

        for ui, (u, rids) in enumerate(zip(chunk, unit_rows)):
            if not u.targets:
                continue
            per_view = self._row_positions(u)
            state = self.start_sharpness(prefix) if self.info_layer is not None else None
            fed = 0  # ActDec: suffix positions already streamed into ``state``
            for s in range(0, len(u.targets), block):
                sl = slice(s, s + block)
                views = [store.final(r, pos[sl]) for r, pos in zip(rids, per_view)]
                views += [views[0]] * (self.method.n_views - len(views))
                sharp = None
                if state is not None:
                    want = [p - plen for p in per_view[0][sl]]  # increasing
                    sharp = feed_sharpness(self.parts, state, store.info[rids[0]][fed: want[-1] + 1], self.info_layer,
                                           [p - fed for p in want])
                    fed = want[-1] + 1
                pending.append((ui, views, store.layers(rids[0], per_view[0][sl]), sharp, u.targets[sl]))
                n_pending += len(u.targets[sl])
                if n_pending >= block:
                    flush()
        flush()
        return list(zip(totals, greedy))


class _RowStore:
    """Hidden states kept per row id: [n_pos, d] tensors indexed through a position map."""

    def __init__(self, n_rows: int) -> None:
        self.index: list[dict[int, int]] = [{} for _ in range(n_rows)]
        self._final: list[torch.Tensor | None] = [None] * n_rows
        self._layers: list[dict[int, torch.Tensor]] = [{} for _ in range(n_rows)]
        self.info: list[torch.Tensor | None] = [None] * n_rows

    def put(self, rid: int, positions: list[int], final: torch.Tensor, layers: dict[int, torch.Tensor], info) -> None:
        self.index[rid] = {p: k for k, p in enumerate(positions)}
        self._final[rid] = final
        self._layers[rid] = layers
        self.info[rid] = info

    def _rows(self, rid: int, positions: list[int]) -> torch.Tensor | slice:
        idx = [self.index[rid][p] for p in positions]
        if idx and idx == list(range(idx[0], idx[0] + len(idx))):
            return slice(idx[0], idx[0] + len(idx))  # contiguous: a view, no copy
        return torch.tensor(idx, dtype=torch.long, device=self._final[rid].device)

    def final(self, rid: int, positions: list[int]) -> torch.Tensor:
        return self._final[rid][self._rows(rid, positions)]

    def layers(self, rid: int, positions: list[int]) -> dict[int, torch.Tensor]:
        sel = self._rows(rid, positions)
        return {l: t[sel] for l, t in self._layers[rid].items()}
