"""Greedy generate-until with stop sequences, batched, with the decoding method in the loop.

Prompts are sorted by their tokens and batched; the batch's common prefix (an instruction or a
few-shot preamble) runs once and its KV cache is expanded to every row. Suffixes are left-padded
*after* the prefix (the padding is masked and positions stay contiguous), so every row predicts
its next token at the last column. A CAD prompt contributes two rows (with and without its
evidence span) that always receive the same token.

As lm-eval: the prompt is truncated on the left to ``max_length - max_new_tokens`` tokens; the
output is the decoded continuation cut at the first occurrence of each stop sequence; the EOS
token also stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from headgame.dist import merge_indexed, my_share
from headgame.evaluate.decoding import PositionStates, Sharpness, feed_sharpness
from headgame.evaluate.forward import Prefix, expand_cache, prefix_runs
from headgame.evaluate.requests import GenerateRequest, without_span

if TYPE_CHECKING:
    from headgame.evaluate.requests import Progress
    from headgame.evaluate.scorer import HFScorer


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def _prompt_views(scorer: "HFScorer", req: GenerateRequest) -> list[list[int]]:
    tokens = scorer.tokens
    budget = max(scorer.cfg.max_length - req.max_new_tokens, 1)
    views = [tokens.encode(tokens.render(req.context))[-budget:] or [tokens.prefix_token]]
    if scorer.method.n_views > 1:
        other = views[0]
        if req.cad_span:
            other = tokens.encode(tokens.render(without_span(req.context, req.cad_span)))[-budget:] or [tokens.prefix_token]
        views.append(other)
    return views


@torch.inference_mode()
def generate(scorer: "HFScorer", requests: Sequence[GenerateRequest], progress: "Progress | None" = None) -> list[str]:
    prompts = [_prompt_views(scorer, r) for r in requests]
    # every row keeps at least its last prompt token out of the prefix
    limits = [min(len(v) for v in views) - 1 for views in prompts]
    outputs: dict[int, str] = {}
    done = 0
    runs = prefix_runs(prompts, scorer.cfg.min_prefix, limits)
    # the work is (run, batch) pairs; several processes take contiguous blocks of them (headgame.dist)
    work = [(g, start) for g, (_, members) in enumerate(runs) for start in range(0, len(members), scorer.cfg.gen_batch)]
    current, prefix = -1, None
    for g, start in (work[w] for w in my_share(len(work))):
        plen, members = runs[g]
        if g != current:
            current, prefix = g, (scorer.prefix(prompts[members[0]][0][:plen], counted=start == 0) if plen else None)
        idx = members[start: start + scorer.cfg.gen_batch]
        rows = [v for i in idx for v in prompts[i]]
        texts = _generate_batch(scorer, [requests[i] for i in idx], rows, prefix)
        for i, text in zip(idx, texts):
            outputs[i] = text
        done += len(idx)
        if progress is not None:
            progress(done, {i: outputs[i] for i in idx})
    outputs = merge_indexed(outputs)
    return [outputs.get(i, "") for i in range(len(requests))]


def _generate_batch(scorer: "HFScorer", reqs: list[GenerateRequest], rows: list[list[int]], prefix: Prefix | None) -> list[str]:
    parts, method, tokens = scorer.parts, scorer.method, scorer.tokens
    nv = method.n_views
    n_rows = len(rows)
    p_len = prefix.length if prefix is not None else 0
    suffixes = [r[p_len:] for r in rows]
    width = max(len(s) for s in suffixes)
    dev = parts.device  # every tensor is made on the model's device (one copy of the token lists)
    ids = torch.tensor([[tokens.pad] * (width - len(s)) + list(s) for s in suffixes], dtype=torch.long, device=dev)  # left-pad after the prefix
    lens = torch.tensor([len(s) for s in suffixes], dtype=torch.long, device=dev)
    smask = (torch.arange(width, device=dev) >= width - lens[:, None]).long()  # [R, W]
    mask = torch.cat([torch.ones((n_rows, p_len), dtype=torch.long, device=dev), smask], dim=1)
    pos = (p_len + smask.cumsum(dim=1) - 1).clamp(min=p_len)  # [R, W]
    layers = scorer.layers
    info_layer = scorer.info_layer
    want_hidden = bool(layers) or info_layer is not None
    out = parts.decoder(
        input_ids=ids, attention_mask=mask, position_ids=pos,
        past_key_values=expand_cache(prefix, n_rows) if prefix is not None else None,
        use_cache=True, output_hidden_states=want_hidden,
    )
    scorer.stats["forward_tokens"] += int(smask.sum())
    sharp = None
    if info_layer is not None:
        states = []
        for i, s in enumerate(suffixes):
            st = scorer.start_sharpness(prefix)
            feed_sharpness(parts, st, out.hidden_states[info_layer][i, width - len(s):], info_layer)
            states.append(st)
        sharp = Sharpness.stack(states)
    cache = out.past_key_values
    last_pos = pos[:, -1]
    max_new = max(r.max_new_tokens for r in reqs)
    generated: list[list[int]] = [[] for _ in reqs]
    finished = [False] * len(reqs)
    hidden_last = out.last_hidden_state[:, -1]  # [R, d]
    layer_last = {l: out.hidden_states[l][:, -1] for l in layers}
    ent = _entropy(sharp) if sharp is not None else None
    for step in range(max_new):
        views = [hidden_last[k::nv] for k in range(nv)]  # unit u's view k is row u*nv + k
        st = PositionStates(views, {l: t[0::nv] for l, t in layer_last.items()}, ent[0::nv] if ent is not None else None)
        scores = method.logprobs(parts, st)  # [U, V]
        nxt = scores.argmax(dim=-1)  # greedy
        for u, req in enumerate(reqs):
            if finished[u]:
                continue
            tok = int(nxt[u])
            if tok == tokens.eos:
                finished[u] = True
                continue
            generated[u].append(tok)
            text = tokens.decode(generated[u])
            if len(generated[u]) >= req.max_new_tokens or any(s and s in text for s in req.until):
                finished[u] = True
        if all(finished) or step == max_new - 1:
            break
        step_ids = nxt.repeat_interleave(nv).unsqueeze(1)  # [R, 1]
        mask = torch.cat([mask, torch.ones((n_rows, 1), dtype=torch.long, device=dev)], dim=1)
        last_pos = last_pos + 1
        out = parts.decoder(
            input_ids=step_ids, attention_mask=mask, position_ids=last_pos.unsqueeze(1),
            past_key_values=cache, use_cache=True, output_hidden_states=want_hidden,
        )
        scorer.stats["forward_tokens"] += n_rows
        cache = out.past_key_values
        hidden_last = out.last_hidden_state[:, -1]
        layer_last = {l: out.hidden_states[l][:, -1] for l in layers}
        if sharp is not None:
            ent = sharp.step(parts.logits(out.hidden_states[info_layer][:, -1], info_layer))
    return [cut_at_stops(tokens.decode(g), r.until) for g, r in zip(generated, reqs)]


def _entropy(state: Sharpness) -> torch.Tensor:
    return (state.lse - (torch.exp(state.b - state.lse) - Sharpness.SHIFT)).float()
