"""Decoding baselines (spec game-lora §7) against their logit formulas computed by hand on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from headgame.evaluate.decoding import DECODING, Sharpness, jsd, make_method
from headgame.evaluate.requests import GenerateRequest, LoglikelihoodRequest
from headgame.evaluate.scorer import HFScorer, ScorerConfig
from headgame.models.load import load_model

PRE = "Context: the blue key opens the red door. "
REQS = [
    LoglikelihoodRequest(PRE + "Question: which door?", " the red one", cad_span=(0, len(PRE))),
    LoglikelihoodRequest(PRE + "Question: which key?", " blue", cad_span=(0, len(PRE))),
    LoglikelihoodRequest(PRE + "Question: which key?", " green", cad_span=(0, len(PRE))),
    LoglikelihoodRequest("No span here:", " plain"),
]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def _full(model, ids):
    """Final logits and all hidden states of one sequence (no cache, no batching)."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.logits[0].float(), [h[0] for h in out.hidden_states]


def _early(model, h, layer, n_layers):
    base = model.model
    return model.lm_head(base.norm(h) if layer < n_layers else h).float()


def _score(model, tok, req, formula):
    sc = HFScorer(model, tok)
    ctx, cont = sc.tokens.encode_pair(req.context, req.continuation)
    logits, hidden = _full(model, ctx + cont)
    ctx2 = sc.tokens.encode_context(req.context[: req.cad_span[0]] + req.context[req.cad_span[1]:]) if req.cad_span else ctx
    logits2, _ = _full(model, ctx2 + cont)
    total = 0.0
    for i, t in enumerate(cont):
        pos, pos2 = len(ctx) - 1 + i, len(ctx2) - 1 + i
        total += formula(logits, hidden, pos, logits2, pos2)[t].item()
    return total


def _run(model, tok, method, min_prefix=4):
    sc = HFScorer(model, tok, method, ScorerConfig(min_prefix=min_prefix, max_length=128))
    return [r.logprob for r in sc.loglikelihood(REQS)]


def test_registry_has_the_baselines():
    assert set(DECODING.names()) >= {"greedy", "cad", "dola", "actdec"}


def test_greedy_is_the_model_log_softmax(tiny):
    model, tok, _ = tiny
    got = _run(model, tok, make_method("greedy"))
    want = [_score(model, tok, r, lambda z, h, p, z2, p2: F.log_softmax(z[p], -1)) for r in REQS]
    assert got == pytest.approx(want, abs=1e-4)


def test_cad_contrasts_with_and_without_the_evidence(tiny):
    model, tok, _ = tiny
    alpha = 0.5
    got = _run(model, tok, make_method("cad", alpha=alpha))
    want = [_score(model, tok, r, lambda z, h, p, z2, p2: F.log_softmax((1 + alpha) * z[p] - alpha * z2[p2], -1)) for r in REQS]
    assert got == pytest.approx(want, abs=1e-4)
    plain = _run(model, tok, make_method("greedy"))
    assert got[3] == pytest.approx(plain[3], abs=1e-5)  # no span: CAD falls back to the plain model
    assert abs(got[0] - plain[0]) > 1e-3


@pytest.mark.parametrize("chunk", [64, 1])
def test_dola_formula(tiny, monkeypatch, chunk):
    from headgame.evaluate.decoding import DoLa

    monkeypatch.setattr(DoLa, "chunk", chunk)  # 1: every position in its own pass
    model, tok, _ = tiny
    n = model.config.num_hidden_layers
    method = make_method("dola", layers="0,1", relative_top=0.1)

    def formula(z, hidden, p, z2, p2):
        final = F.log_softmax(z[p], -1)
        cands = [F.log_softmax(_early(model, hidden[l][p], l, n), -1) for l in (0, 1)]
        divs = []
        for c in cands:  # JSD by its definition
            m = 0.5 * (final.exp() + c.exp())
            divs.append(0.5 * (final.exp() * (final - m.log())).sum() + 0.5 * (c.exp() * (c - m.log())).sum())
        prem = cands[int(torch.stack(divs).argmax())]
        contrast = F.log_softmax(final - prem, -1)
        keep = final.exp() >= 0.1 * final.exp().max()
        return torch.where(keep, contrast, torch.full_like(contrast, -1000.0))

    got = _run(model, tok, method)
    want = [_score(model, tok, r, formula) for r in REQS]
    assert got == pytest.approx(want, abs=1e-3)


def test_actdec_formula(tiny):
    model, tok, _ = tiny
    n = model.config.num_hidden_layers
    layer, alpha = 1, 0.5
    method = make_method("actdec", alpha=alpha, layer=layer, relative_top=0.1)

    def formula(z, hidden, p, z2, p2):
        final = F.log_softmax(z[p], -1)
        early = _early(model, hidden[layer][: p + 1], layer, n).double()  # [p+1, V]
        q = torch.softmax(early, dim=0)  # over positions j <= p, per token
        entropy = -(q * torch.log(q)).sum(0).float()
        keep = final.exp() >= 0.1 * final.exp().max()
        adj = torch.where(keep, final - alpha * entropy, torch.full_like(final, -math.inf))
        return torch.where(keep, F.log_softmax(adj, -1), torch.full_like(final, -1000.0))

    got = _run(model, tok, method)
    want = [_score(model, tok, r, formula) for r in REQS]
    assert got == pytest.approx(want, abs=1e-3)


@pytest.mark.parametrize("name", ["greedy", "cad", "dola", "actdec"])
def test_prefix_cache_does_not_change_scores(tiny, name):
    model, tok, _ = tiny
    opts = {"layers": "0,1", "layer": 1}
    cached = _run(model, tok, make_method(name, **opts), min_prefix=4)
    plain = _run(model, tok, make_method(name, **opts), min_prefix=10_000)
    assert cached == pytest.approx(plain, abs=1e-4)


@pytest.mark.parametrize("name", ["greedy", "cad", "dola", "actdec"])
def test_generation_follows_the_method_argmax(tiny, name):
    """Greedy generation picks, step by step, the argmax of the method's scores (recomputed
    here from scratch without cache or batching)."""
    model, tok, _ = tiny
    method = make_method(name, layers="0,1", layer=1)
    sc = HFScorer(model, tok, method, ScorerConfig(min_prefix=4, max_length=128))
    reqs = [GenerateRequest(PRE + "Answer:", until=("\n\n\n",), max_new_tokens=4, cad_span=(0, len(PRE))),
            GenerateRequest(PRE + "Reply:", until=("\n\n\n",), max_new_tokens=4, cad_span=(0, len(PRE)))]
    outs = sc.generate_until(reqs)
    for req, text in zip(reqs, outs):
        ids = sc.tokens.encode(req.context)
        ids2 = sc.tokens.encode(req.context[len(PRE):])
        gen: list[int] = []
        for _ in range(req.max_new_tokens):
            with torch.no_grad():
                hs = model.model(input_ids=torch.tensor([ids + gen]), output_hidden_states=True).hidden_states
                hs2 = model.model(input_ids=torch.tensor([ids2 + gen]), output_hidden_states=True).hidden_states
            from headgame.evaluate.decoding import PositionStates
            from headgame.evaluate.forward import ModelParts

            parts = ModelParts.from_model(model)
            states = PositionStates([hs[-1][0, -1:], hs2[-1][0, -1:]], {l: hs[l][0, -1:] for l in sc.layers})
            if sc.info_layer is not None:
                st = Sharpness(parts.vocab_size)
                states.sharpness = st.update(parts.logits(hs[sc.info_layer][0], sc.info_layer))[-1:]
            gen.append(int(method.logprobs(parts, states).argmax()))
        assert text == sc.tokens.decode(gen)


def test_sharpness_streaming_matches_direct_entropy():
    torch.manual_seed(0)
    z = torch.randn(7, 5) * 4
    st = Sharpness(5)
    first = st.update(z[:3])
    rest = st.update(z[3:])
    ent = torch.cat([first, rest])
    for t in range(7):
        q = torch.softmax(z[: t + 1].double(), dim=0)
        assert torch.allclose(ent[t].double(), -(q * q.log()).sum(0), atol=1e-5)


def test_jsd_is_symmetric_and_zero_on_equal():
    a = F.log_softmax(torch.randn(3, 6), -1)
    b = F.log_softmax(torch.randn(3, 6), -1)
    assert torch.allclose(jsd(a, b), jsd(b, a), atol=1e-6)
    assert torch.allclose(jsd(a, a), torch.zeros(3), atol=1e-6)
    assert (jsd(a, b) <= math.log(2) + 1e-6).all()


@pytest.mark.parametrize("name", ["dola", "actdec"])
def test_rolling_loglikelihood_uses_a_proper_distribution(tiny, name):
    """No plausibility floor in perplexity: a distribution over the whole vocabulary."""
    from headgame.evaluate.decoding import dola_proper, plausible_mask
    from headgame.evaluate.requests import RollingRequest

    model, tok, _ = tiny
    n = model.config.num_hidden_layers
    sc = HFScorer(model, tok, make_method(name, layers="0", layer=1), ScorerConfig(max_length=128))
    text = "a short text to score"
    res = sc.loglikelihood_rolling([RollingRequest(text)])[0]
    toks = sc.tokens.encode(text)
    ids = [sc.tokens.prefix_token] + toks
    logits, hidden = _full(model, ids[:-1])
    final = F.log_softmax(logits, -1)
    if name == "dola":  # one candidate layer (0): it is the premature layer at every position
        scores = dola_proper(final, F.log_softmax(_early(model, hidden[0], 0, n), -1), plausible_mask(final, 0.1))
    else:
        early = _early(model, hidden[1], 1, n).double()
        ent = torch.stack([-(torch.softmax(early[: t + 1], 0) * torch.log_softmax(early[: t + 1], 0)).sum(0) for t in range(len(toks))]).float()
        scores = F.log_softmax(final - 0.5 * ent, -1)
    assert torch.allclose(scores.exp().sum(-1), torch.ones(len(toks)), atol=1e-4)
    want = scores[torch.arange(len(toks)), torch.tensor(toks)].sum().item()
    assert res.logprob == pytest.approx(want, abs=1e-3) and res.logprob / len(toks) > -20


def test_dola_proper_distribution_by_hand():
    """Inside the plausible set: its final-layer mass shared by the contrast; outside: q_N."""
    from headgame.evaluate.decoding import dola_proper, plausible_mask

    q_n = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    q_m = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    final, premature = q_n.log(), q_m.log()
    mask = plausible_mask(final, 0.25)  # q_N >= 0.125: the first three tokens
    assert mask.tolist() == [[True, True, True, False]]
    got = dola_proper(final, premature, mask).exp()[0]
    ratio = (q_n / q_m)[0, :3]
    want_head = 0.95 * ratio / ratio.sum()  # q_N(V_head) = 0.95
    assert torch.allclose(got[:3], want_head, atol=1e-6)
    assert got[3].item() == pytest.approx(0.05, abs=1e-7)
    assert got.sum().item() == pytest.approx(1.0, abs=1e-6)
