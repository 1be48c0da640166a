"""The scoring engine on tiny random models: exact log-likelihoods, rolling windows, greedy
generation, shared-prefix caching, peft adapters (unmerged and merged) and pruned models."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from headgame.evaluate.requests import GenerateRequest, LoglikelihoodRequest, RollingRequest
from headgame.evaluate.scorer import HFScorer, ScorerConfig, prefix_runs, rolling_windows
from headgame.models.load import load_model

PRE = "A shared few-shot preamble that every question repeats. "
REQS = [
    LoglikelihoodRequest(PRE + "Q: one? A:", " yes"),
    LoglikelihoodRequest(PRE + "Q: one? A:", " no, never"),
    LoglikelihoodRequest(PRE + "Q: two? A: ", "maybe"),  # trailing space moves into the continuation
    LoglikelihoodRequest("", "empty context"),
    LoglikelihoodRequest("Short", " one"),
]


def reference(model, scorer, req):
    """log P(continuation | context) from one plain forward of the whole sequence."""
    ctx, cont = scorer.tokens.encode_pair(req.context, req.continuation)
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].float(), -1)
    picks = [lp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)]
    greedy = all(int(lp[len(ctx) - 1 + i].argmax()) == t for i, t in enumerate(cont))
    return sum(float(x) for x in picks), greedy


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gpt2"])
@pytest.mark.parametrize("min_prefix", [4, 10_000])
def test_loglikelihood_matches_a_plain_forward(name, min_prefix):
    model, tok, _ = load_model(name)
    sc = HFScorer(model, tok, config=ScorerConfig(min_prefix=min_prefix, max_length=128, batch_tokens=64))
    got = sc.loglikelihood(REQS)
    for req, res in zip(REQS, got):
        want, greedy = reference(model, sc, req)
        assert res.logprob == pytest.approx(want, abs=1e-4)
        assert res.is_greedy == greedy
    if min_prefix == 4:
        assert sc.stats["prefix_tokens"] > 0  # the preamble ran once


def test_trailing_space_moves_to_the_continuation():
    model, tok, _ = load_model("tiny-llama")
    sc = HFScorer(model, tok)
    ctx, cont = sc.tokens.encode_pair("Answer: ", "B")
    assert sc.tokens.decode(ctx) == "Answer:" and sc.tokens.decode(cont) == " B"
    ctx, cont = sc.tokens.encode_pair("", "x")
    assert ctx == [sc.tokens.prefix_token]


def test_rolling_windows_cover_every_token_once():
    toks = list(range(100, 137))
    wins = rolling_windows(toks, 7, 10)
    assert [t for _, cont in wins for t in cont] == toks
    assert wins[0][0] == [7]
    for ctx, cont in wins:
        assert len(ctx) + len(cont) - 1 <= 10 and len(ctx) >= 1


def test_rolling_loglikelihood_equals_sum_of_window_scores():
    model, tok, _ = load_model("tiny-llama")
    sc = HFScorer(model, tok, config=ScorerConfig(max_length=16))
    text = "rolling windows over a longer text"
    res = sc.loglikelihood_rolling([RollingRequest(text)])[0]
    toks = sc.tokens.encode(text)
    total = 0.0
    for ctx, cont in rolling_windows(toks, sc.tokens.prefix_token, 16):
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont[:-1]])).logits[0].float(), -1)
        total += sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert res.n_tokens == len(toks)
    assert res.logprob == pytest.approx(total, abs=1e-3)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_generation_matches_transformers_greedy(name):
    model, tok, _ = load_model(name)
    sc = HFScorer(model, tok, config=ScorerConfig(min_prefix=4, gen_batch=3, max_length=128))
    prompts = [PRE + "Q: one? A:", PRE + "Q: a longer second question? A:", "Unrelated prompt"]
    outs = sc.generate_until([GenerateRequest(p, until=("\x00",), max_new_tokens=6) for p in prompts])
    for p, out in zip(prompts, outs):
        ids = torch.tensor([sc.tokens.encode(p)])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=None)
        assert out == sc.tokens.decode(ref[0, ids.shape[1]:].tolist())


def test_generation_stops_at_the_first_stop_sequence():
    model, tok, _ = load_model("tiny-llama")
    sc = HFScorer(model, tok)
    free = sc.generate_until([GenerateRequest("Say:", until=("\x00",), max_new_tokens=8)])[0]
    assert len(free) >= 2
    stop = free[1]
    cut = sc.generate_until([GenerateRequest("Say:", until=(stop,), max_new_tokens=8)])[0]
    assert cut == free.split(stop)[0]


def test_prefix_runs_group_shared_preambles():
    a = [(1, 2, 3, 4, 5, 6, 7, 8, 9)]
    b = [(1, 2, 3, 4, 5, 6, 7, 8, 10)]
    c = [(50, 51)]
    runs = prefix_runs([a, c, b], min_prefix=4)
    assert (8, [0, 2]) in runs and (0, [1]) in runs


def _lora(model, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False))
    peft_model.eval()
    return peft_model


def test_peft_adapter_unmerged_and_merged_score_alike(tmp_path):
    from headgame.models.adapters import apply_adapter

    base, tok, _ = load_model("tiny-llama")
    plain = HFScorer(base, tok).loglikelihood(REQS)
    _lora(base).save_pretrained(tmp_path / "adapter")
    scores = {}
    for merge in (False, True):
        fresh, _, _ = load_model("tiny-llama")
        model, info = apply_adapter(fresh, str(tmp_path / "adapter"), merge=merge, model_name="tiny-llama")
        assert info["merged"] is merge and type(model).__name__.startswith("Peft") is (not merge)
        scores[merge] = [r.logprob for r in HFScorer(model, tok).loglikelihood(REQS)]
    assert scores[False] == pytest.approx(scores[True], abs=1e-4)
    assert max(abs(a - b.logprob) for a, b in zip(scores[False], plain)) > 1e-3  # the adapter changes the model


@pytest.mark.skipif(importlib.util.find_spec("headgame.models.surgery") is None, reason="head surgery (prune tool) not present")
def test_pruned_model_scores_like_gated_heads():
    from headgame.models.surgery import prune_heads

    model, tok, layout = load_model("tiny-llama")
    removed = {0: [1], 1: [0, 3]}
    prune_heads(model, layout, removed)
    got = [r.logprob for r in HFScorer(model, tok).loglikelihood(REQS)]
    ref_model, _, layout2 = load_model("tiny-llama")
    with torch.no_grad():  # zero the removed heads' W_O columns: the pruned model's function
        for layer, heads in removed.items():
            w = layout2.o_proj(ref_model, layer).weight
            for h in heads:
                w[:, h * layout2.head_dim:(h + 1) * layout2.head_dim] = 0
    want = [r.logprob for r in HFScorer(ref_model, tok).loglikelihood(REQS)]
    assert got == pytest.approx(want, abs=1e-4)


def test_masked_lm_is_refused():
    from headgame.errors import HeadgameError

    model, tok, _ = load_model("tiny-bert")
    with pytest.raises(HeadgameError, match="causal"):
        HFScorer(model, tok)
