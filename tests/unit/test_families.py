"""The families added through models/families/: GPT-NeoX, OPT, Phi-3 and Falcon (three layouts).

Each runs on its tiny random model through the same invariants as the original families:
per-head outputs times their W_O slices rebuild the output projection, a zero gate equals a
zeroed W_O slice, physical pruning equals gating (also with GQA / multi-query KV heads), pruned
models survive a save and reload, LoRA training changes the attention projections only, and
analyze yields a valid G. Expected values are computed here with plain torch.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from headgame.models.layout import HeadLayout
from headgame.models.load import LoadedModel
from headgame.models.surgery import head_counts, load_pruned, pruned_copy, save_pruned, zero_gates
from headgame.models.tap import HeadTap
from headgame.models.tiny import byte_tokenizer, tiny_model
from tests.conftest import heads_and_projections, logits, random_batch

# name -> (tiny model, config overrides, KV heads of the unpruned model)
VARIANTS = {
    "gpt-neox": ("tiny-gpt-neox", {}, 4),
    "opt": ("tiny-opt", {}, 4),
    "phi3": ("tiny-phi3", {}, 2),
    "falcon": ("tiny-falcon", {}, 2),  # new_decoder_architecture: 2 KV groups of 2 query heads
    "falcon-mqa": ("tiny-falcon", {"new_decoder_architecture": False, "multi_query": True}, 1),
    "falcon-mha": ("tiny-falcon", {"new_decoder_architecture": False, "multi_query": False}, 4),
}
NEW_TINY = ("tiny-gpt-neox", "tiny-opt", "tiny-phi3", "tiny-falcon")

# 2 layers x 4 heads; with 2 KV heads the groups are {0,1} and {2,3}
PATTERNS = {
    "uneven": {0: [1], 1: [0, 2]},  # groups keep 1/2 and 1/1 heads
    "whole_group": {0: [0, 1], 1: [3]},  # layer 0 loses KV group 0
    "uniform": {0: [0, 2], 1: [1, 3]},  # one head per group in every layer
}


def build(variant: str) -> LoadedModel:
    name, overrides, _ = VARIANTS[variant]
    model = tiny_model(name, **overrides)
    return LoadedModel(model, byte_tokenizer(), HeadLayout.from_model(model), {})


def expected_counts(removed: dict[int, list[int]], n_kv: int) -> list[tuple[int, int]]:
    """(query heads, KV heads) per layer: a KV head stays while any query head of its group does."""
    out = []
    for layer in range(2):
        kept = [h for h in range(4) if h not in removed.get(layer, [])]
        out.append((len(kept), len({h // (4 // n_kv) for h in kept})))
    return out


@pytest.fixture(params=list(VARIANTS))
def variant(request) -> str:
    return request.param


# ------------------------------------------------------------------ registry and layout


def test_tiny_models_load_by_name_and_families_are_listed(capsys):
    from headgame.cli import main
    from headgame.models.load import load_model

    expect = {"tiny-gpt-neox": ("gpt_neox", "GPTNeoXForCausalLM"), "tiny-opt": ("opt", "OPTForCausalLM"),
              "tiny-phi3": ("phi3", "Phi3ForCausalLM"), "tiny-falcon": ("falcon", "FalconForCausalLM")}
    for name, (family, arch) in expect.items():
        loaded = load_model(name)
        assert (loaded.layout.family, loaded.layout.model_type, loaded.layout.architecture) == (family, family, arch)
        assert loaded.info["hash"] == load_model(name).info["hash"]  # the same random weights every time
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out
    for family, types in [("llama", ["llama", "qwen2", "mistral", "gemma3"]), ("gpt2", ["gpt2"]),
                          ("bert", ["bert", "roberta", "xlm-roberta"]), ("gpt_neox", ["gpt_neox"]),
                          ("opt", ["opt"]), ("phi3", ["phi3"]), ("falcon", ["falcon"])]:
        line = next(l for l in out.splitlines() if l.strip().startswith(family + " "))
        assert all(t in line for t in types), line


def test_layout_geometry(variant):
    model, _, layout = build(variant)
    assert (layout.n_layers, layout.n_heads, layout.head_dim, layout.d_model) == (2, 4, 16, 64)
    assert layout.n_kv_heads == VARIANTS[variant][2] and layout.causal
    assert head_counts(model, layout) == [(4, VARIANTS[variant][2])] * 2


def test_heads_times_slices_sum_to_output_projection(variant):
    model, _, layout = build(variant)
    ids, mask = random_batch(model.config.vocab_size, pad_last=3)
    outputs, proj_out = heads_and_projections(model, layout, lambda tap: model(input_ids=ids, attention_mask=mask))
    dh = layout.head_dim
    for layer in range(layout.n_layers):
        o = outputs[layer]  # [B, T, H, dh]
        assert o.shape == (*ids.shape, 4, dh)
        proj = layout.o_proj(model, layer)
        slices = layout.head_slices(model, layer)  # [H, d, dh]
        recon = torch.zeros_like(proj_out[layer])
        for h in range(4):
            w_h = proj.weight[:, h * dh:(h + 1) * dh]  # columns of head h, [d, dh]
            torch.testing.assert_close(slices[h], w_h, atol=0, rtol=0)
            recon += o[:, :, h, :] @ w_h.T  # [B, T, dh] @ [dh, d]
        bias = proj.bias if proj.bias is not None else 0.0
        torch.testing.assert_close(recon, proj_out[layer] - bias, atol=1e-5, rtol=1e-5)
        assert recon.abs().max() > 1e-3  # every head contributes something


def test_zero_gate_equals_zeroed_output_columns(variant):
    model, _, layout = build(variant)
    ids, mask = random_batch(model.config.vocab_size)
    layer, head, dh = 1, 2, layout.head_dim
    gate = torch.ones(4)
    gate[head] = 0.0
    gated = logits(model, ids, mask, {layer: gate}, layout)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        layout.o_proj(zeroed, layer).weight[:, head * dh:(head + 1) * dh] = 0.0
    torch.testing.assert_close(gated, logits(zeroed, ids, mask), atol=1e-5, rtol=1e-5)
    assert (gated - logits(model, ids, mask)).abs().max() > 1e-4


def test_argmax_matches_the_models_attention_maps(variant):
    model, _, layout = build(variant)
    ids, mask = random_batch(model.config.vocab_size, pad_last=4)
    with HeadTap(model, layout, argmax=True) as tap, torch.no_grad():  # switches the sdpa model to eager
        tap.set_mask(mask)
        model(input_ids=ids, attention_mask=mask)
    name, overrides, _ = VARIANTS[variant]
    eager = tiny_model(name, attn_implementation="eager", **overrides)  # the same weights, built eager
    with torch.no_grad():
        out = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
    for layer in range(layout.n_layers):
        ref = out.attentions[layer].argmax(-1).transpose(1, 2)  # [B, H, T, S] -> [B, T, H]
        assert torch.equal(tap.argmax[layer][mask == 1], ref[mask == 1])
        assert (tap.argmax[layer][mask == 0] == -1).all()
    assert model.config._attn_implementation == "sdpa"


# ------------------------------------------------------------------ surgery


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_pruned_equals_gated(variant, pattern):
    model, _, layout = build(variant)
    removed = PATTERNS[pattern]
    ids, mask = random_batch(model.config.vocab_size, batch=2, seq=11, pad_last=3)
    before = logits(model, ids, mask)
    gated = logits(model, ids, mask, zero_gates(layout, removed), layout)
    pruned, rec = pruned_copy(model, layout, removed)
    after = logits(pruned, ids, mask)
    valid = mask.bool()
    torch.testing.assert_close(after[valid], gated[valid], atol=1e-5, rtol=0)
    assert (after[valid] - before[valid]).abs().max() > 1e-4  # the pruning did change the model
    torch.testing.assert_close(logits(model, ids, mask), before, atol=0, rtol=0)  # the base is untouched
    n_kv = VARIANTS[variant][2]
    assert head_counts(pruned, layout) == expected_counts(removed, n_kv)
    assert [len(rec.kept_kv(l)) for l in range(2)] == [kv for _, kv in expected_counts(removed, n_kv)]
    # the pruned attention holds fewer weights: exactly the removed heads' Q (and gone KV) rows and W_O columns
    dh, d = layout.head_dim, layout.d_model
    size = lambda m: sum(p.numel() for l in range(2) for p in layout.attention(m, l).parameters() if p.dim() == 2)
    gone = sum((4 - q) * 2 * d * dh + (n_kv - kv) * 2 * d * dh for q, kv in expected_counts(removed, n_kv))
    assert size(model) - size(pruned) == gone


def test_generation_of_pruned_equals_gated(variant):
    model, tok, layout = build(variant)
    removed = PATTERNS["uneven"]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad(), HeadTap(model, layout, gates=zero_gates(layout, removed)):
        gated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    pruned, _ = pruned_copy(model, layout, removed)
    with torch.no_grad():
        assert torch.equal(pruned.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw), gated)


@pytest.mark.parametrize("pattern", ["uneven", "uniform"])
def test_save_and_reload(tmp_path, variant, pattern):
    import transformers

    model, tok, layout = build(variant)
    pruned, rec = pruned_copy(model, layout, PATTERNS[pattern])
    ids, mask = random_batch(model.config.vocab_size, seq=9)
    expect = logits(pruned, ids, mask)
    path = save_pruned(pruned, tok, tmp_path / "pruned")
    loaded = load_pruned(path)
    torch.testing.assert_close(logits(loaded.model, ids, mask), expect, atol=0, rtol=0)
    # the public loader opens a pruned folder too (and so every command's --model)
    from headgame import load_model

    again = load_model(str(path))
    torch.testing.assert_close(logits(again.model, ids, mask), expect, atol=0, rtol=0)
    assert head_counts(loaded.model, loaded.layout) == head_counts(pruned, layout)
    record = json.loads((path / "headgame_pruning.json").read_text())
    assert record["removed_heads"] == {str(l): h for l, h in PATTERNS[pattern].items()}
    # a uniform Phi-3 cut fits its config's head counts; every other cut is refused by plain transformers
    if variant == "phi3" and pattern == "uniform":
        assert record["plain_transformers_loadable"]
        plain = transformers.AutoModelForCausalLM.from_pretrained(path)
        torch.testing.assert_close(logits(plain, ids, mask), expect, atol=1e-6, rtol=0)
    else:
        assert not record["plain_transformers_loadable"]
        with pytest.raises(Exception):
            transformers.AutoModelForCausalLM.from_pretrained(path)


@pytest.mark.parametrize("pattern", [None, "uneven"])
def test_analytic_flops_equal_flop_counter(variant, pattern):
    from headgame.prune import cost

    model, _, layout = build(variant)
    m = pruned_copy(model, layout, PATTERNS[pattern])[0] if pattern else model
    a, b = cost.analytic_flops(m, layout, 24), cost.measured_flops(m, layout, 24)
    assert b["total"] == a["total"] and b["attention"] == a["attention"]
    # the MLP term by hand: every MLP matrix of the model, 2 FLOPs per multiply-add over 24 tokens
    mlp_names = (".mlp.", ".fc1.", ".fc2.")  # OPT's MLP is fc1/fc2 on the block itself
    mlp = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and any(k in n for k in mlp_names))
    assert a["components"]["mlp"] == 2 * 24 * mlp


def test_alibi_falcon_is_refused():
    from headgame.errors import HeadgameError

    model = tiny_model("tiny-falcon", new_decoder_architecture=False, multi_query=False, alibi=True)
    layout = HeadLayout.from_model(model)
    with pytest.raises(HeadgameError, match="ALiBi"):
        pruned_copy(model, layout, {0: [1]})


# ------------------------------------------------------------------ training and analysis


@pytest.mark.parametrize("name", NEW_TINY)
def test_lora_training_changes_attention_projections_only(tmp_path, corpus, name):
    from safetensors.torch import load_file

    from headgame.cli import main
    from headgame.models.load import load_model

    out = tmp_path / "o"
    code = main(["train", "--model", name, "--data", str(corpus), "--max-tokens", "1024", "--seq-len", "32",
                 "--batch-size", "4", "--val-every", "0", "--checkpoint-every", "0", "--save-merged",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    adapter = load_file(next((out / "adapter").glob("*.safetensors")))
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero
    base = load_model(name)
    merged = load_model(str(out / "merged")).model
    layout = base.layout
    scale = cfg["lora_alpha"] / cfg["r"]
    targets = {}  # module path -> W + (α/r)·B·A, from the adapter tensors
    for key, a in adapter.items():
        if "lora_A" not in key:
            continue
        path = key.split("base_model.model.", 1)[1].rsplit(".lora_A", 1)[0]
        b = adapter[key.replace("lora_A", "lora_B")]
        targets[path] = base.model.get_submodule(path).weight.detach() + scale * b @ a
    # LoRA sits on the q/k/v/o projections of every layer: every matrix of the attention, nothing else
    attention_matrices = {
        f"{layout.layer_path}.{l}.{layout.attn_path}.{n.rsplit('.', 1)[0]}"
        for l in range(2) for n, p in layout.attention(base.model, l).named_parameters() if p.dim() == 2
    }
    assert set(targets) == attention_matrices
    assert {f"{layout.layer_path}.{l}.{layout.o_proj_path}" for l in range(2)} <= set(targets)
    merged_params = dict(merged.named_parameters())
    for pname, p in base.model.named_parameters():
        module = pname.rsplit(".", 1)[0]
        if module in targets and pname.endswith(".weight"):
            torch.testing.assert_close(merged_params[pname], targets[module], atol=1e-6, rtol=1e-5)
        else:
            assert torch.equal(merged_params[pname], p), pname  # everything else is untouched


@pytest.mark.parametrize("name", NEW_TINY)
def test_analyze_gives_valid_coupling(tmp_path, corpus, name):
    from headgame.analyze.config import AnalyzeConfig
    from headgame.analyze.run import run_analysis

    res = run_analysis(AnalyzeConfig(model=name, data=str(corpus), max_tokens=256, seq_len=32, batch_size=2,
                                     out=str(tmp_path / "a")), progress=False, report=False)
    assert len(res["layers"]) == 2
    for layer in res["layers"]:
        g = np.array(layer["G"])
        assert g.shape == (4, 4) and np.isfinite(g).all()
        np.testing.assert_allclose(g, g.T, atol=1e-12)
        np.testing.assert_allclose(np.diag(g), 1.0, atol=1e-12)
        assert np.linalg.eigvalsh(g).min() > -1e-9
        assert np.isfinite(layer["gamma"]) and layer["gamma"] == pytest.approx(np.linalg.norm(g - np.eye(4)))
