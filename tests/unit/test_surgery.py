"""Physical head pruning: a pruned model computes exactly what the gated model computes."""

from __future__ import annotations

import pytest
import torch

from headgame.errors import HeadgameError
from headgame.models.load import load_model
from headgame.models.surgery import (
    HeadGatherLinear,
    PRUNING_FILE,
    head_counts,
    load_pruned,
    prune_heads,
    pruned_copy,
    pruning_record,
    save_pruned,
    zero_gates,
)
from headgame.models.tap import HeadTap

from tests.conftest import logits, random_batch

# tiny models: 2 layers x 4 heads (llama/qwen2: 2 KV heads, groups {0,1} and {2,3})
PATTERNS = {
    "uneven": {0: [1], 1: [0, 2]},  # groups keep 1/2 and 1/1 heads: gathered K/V in layer 0
    "whole_group": {0: [0, 1], 1: [3]},  # layer 0 loses KV head 0
    "uniform": {0: [0, 2], 1: [1, 3]},  # one head per group everywhere: a plain smaller model
}


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_pruned_equals_gated(tiny, pattern):
    model, _, layout = tiny
    removed = PATTERNS[pattern]
    ids, mask = random_batch(layout.n_heads, batch=2, seq=11, pad_last=3)
    gated = logits(model, ids, mask, zero_gates(layout, removed), layout)
    before = logits(model, ids, mask)
    pruned, rec = pruned_copy(model, layout, removed)
    after = logits(pruned, ids, mask)
    valid = mask.bool()
    torch.testing.assert_close(after[valid], gated[valid], atol=1e-5, rtol=0)
    assert (after[valid] - before[valid]).abs().max() > 1e-4  # the pruning did change the model
    torch.testing.assert_close(logits(model, ids, mask), before)  # the base model is untouched
    counts = head_counts(pruned, layout)
    assert [q for q, _ in counts] == [4 - len(removed.get(l, [])) for l in range(2)]
    assert rec.n_removed == sum(len(v) for v in removed.values())


def test_gqa_kv_heads_go_only_with_their_whole_group():
    model, _, layout = load_model("tiny-llama")
    pruned, rec = pruned_copy(model, layout, PATTERNS["whole_group"])
    assert head_counts(pruned, layout) == [(2, 1), (3, 2)]
    assert rec.kept_kv(0) == [1] and rec.kept_kv(1) == [0, 1]
    attn0 = layout.attention(pruned, 0)
    assert attn0.k_proj.weight.shape == (16, 64) and attn0.num_key_value_groups == 2
    attn1 = layout.attention(pruned, 1)  # groups keep 2 and 1 heads: uneven
    # both KV heads projected once each and cached once each; query heads 0, 1 read KV head 0, head 2 reads 1
    assert type(attn1.k_proj) is torch.nn.Linear and attn1.k_proj.weight.shape == (32, 64)
    assert attn1.headgame_kv_index.tolist() == [0, 0, 1] and attn1.num_key_value_groups == 1
    assert pruned.config._attn_implementation == "headgame_sdpa"
    with torch.no_grad():
        cache = pruned(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True).past_key_values
    assert [tuple(layer.keys.shape) for layer in cache.layers] == [(1, 1, 3, 16), (1, 2, 3, 16)]


def test_pruned_copy_shares_non_attention_weights():
    model, _, layout = load_model("tiny-llama")
    pruned, _ = pruned_copy(model, layout, PATTERNS["uneven"])
    assert pruned.model.embed_tokens.weight is model.model.embed_tokens.weight
    assert pruned.model.layers[0].mlp.up_proj.weight is model.model.layers[0].mlp.up_proj.weight
    assert layout.o_proj(pruned, 0).weight.data_ptr() != layout.o_proj(model, 0).weight.data_ptr()
    assert pruning_record(model) is None and pruning_record(pruned) is not None


def test_generation_of_pruned_equals_gated():
    model, tok, layout = load_model("tiny-llama")
    removed = PATTERNS["uneven"]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad(), HeadTap(model, layout, gates=zero_gates(layout, removed)):
        gated = model.generate(input_ids=ids, **kw)
    pruned, _ = pruned_copy(model, layout, removed)
    with torch.no_grad():
        assert torch.equal(pruned.generate(input_ids=ids, **kw), gated)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_save_and_reload(tmp_path, name):
    model, tok, layout = load_model(name)
    pruned, rec = pruned_copy(model, layout, PATTERNS["uneven"])
    ids, mask = random_batch(layout.n_heads, seq=9)
    expect = logits(pruned, ids, mask)
    path = save_pruned(pruned, tok, tmp_path / "pruned")
    assert (path / PRUNING_FILE).is_file() and list(path.glob("*.safetensors"))
    loaded = load_pruned(path)
    torch.testing.assert_close(logits(loaded.model, ids, mask), expect, atol=0, rtol=0)
    assert loaded.info["pruning"]["removed_heads"] == {"0": [1], "1": [0, 2]}
    assert head_counts(loaded.model, loaded.layout) == head_counts(pruned, layout)
    # plain transformers refuses the per-layer shapes instead of loading random weights
    import transformers

    auto = transformers.AutoModelForMaskedLM if name == "tiny-bert" else transformers.AutoModelForCausalLM
    with pytest.raises(Exception):
        auto.from_pretrained(path)


def test_uniform_llama_pruning_loads_in_plain_transformers(tmp_path):
    import transformers

    model, tok, layout = load_model("tiny-llama")
    pruned, rec = pruned_copy(model, layout, PATTERNS["uniform"])
    assert rec.is_uniform() and pruned.config.num_attention_heads == 2 and pruned.config.num_key_value_heads == 2
    ids, mask = random_batch(layout.n_heads, seq=9)
    path = save_pruned(pruned, tok, tmp_path / "uniform")
    plain = transformers.AutoModelForCausalLM.from_pretrained(path)
    torch.testing.assert_close(logits(plain, ids, mask), logits(pruned, ids, mask), atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(load_pruned(path).model, ids, mask), logits(pruned, ids, mask), atol=1e-6, rtol=0)


def test_bad_pruning_requests():
    model, _, layout = load_model("tiny-gpt2")
    with pytest.raises(HeadgameError, match="keep at least one head"):
        prune_heads(model, layout, {0: [0, 1, 2, 3]})
    with pytest.raises(HeadgameError, match="out of range"):
        prune_heads(model, layout, {0: [7]})
    with pytest.raises(HeadgameError, match="out of range"):
        prune_heads(model, layout, {5: [0]})
    prune_heads(model, layout, {0: [0]})
    with pytest.raises(HeadgameError, match="already pruned"):
        prune_heads(model, layout, {1: [0]})
    with pytest.raises(HeadgameError, match="no headgame_pruning.json|holds no"):
        load_pruned(".")


def test_uneven_layer_decode_reads_kv_in_place_and_equals_the_gated_model():
    """Uneven layers attend per KV head (one SDPA call per run of query heads): prefill with
    padding, and token-by-token decoding from the cache, equal the gated unpruned model."""
    from headgame.models.families.kvgather import _spans

    assert _spans(torch.tensor([0, 0, 1])) == [(0, 0, 2), (1, 2, 3)]
    assert _spans(torch.tensor([0, 1, 0])) is None  # not contiguous: falls back to the gather
    model, _, layout = load_model("tiny-llama")
    removed = {0: [1], 1: [0, 1]}  # layer 0 keeps 1 + 2 heads over its 2 KV heads: uneven
    pruned, _ = pruned_copy(model, layout, removed)
    ids = torch.randint(5, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad(), HeadTap(model, layout, gates=zero_gates(layout, removed)):
        gated = model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():
        full = pruned(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(full[mask.bool()], gated[mask.bool()], atol=1e-5, rtol=0)
        out = pruned(input_ids=ids[:, :8], attention_mask=mask[:, :8], use_cache=True)
        cache = out.past_key_values
        for t in range(8, 12):  # one token at a time from the cache
            out = pruned(input_ids=ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            torch.testing.assert_close(out.logits[:, -1], gated[:, t], atol=1e-5, rtol=0)


def test_head_taps_refuse_unevenly_pruned_layers_by_name():
    model, _, layout = load_model("tiny-llama")
    pruned, _ = pruned_copy(model, layout, {1: [0]})  # layer 0 keeps all 4 heads, layer 1 keeps 3
    with pytest.raises(HeadgameError, match=r"layer\(s\) 1 .*--layers 0 "):
        HeadTap(pruned, layout, outputs=True)
    with HeadTap(pruned, layout, [0], outputs=True) as tap, torch.no_grad():  # the full layer can be tapped
        pruned(input_ids=torch.tensor([[5, 6, 7]]))
    assert tap.outputs[0].shape == (1, 3, 4, 16)
