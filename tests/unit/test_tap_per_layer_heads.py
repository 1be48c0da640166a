"""Head taps and analyze on unevenly pruned models: each layer is tapped with its own head count.

The reference is the unpruned model with the removed heads' output-projection columns zeroed:
it computes the same function as the pruned one, so the kept heads' outputs, their output
gradients, their weight slices and hence every entry of G among kept heads must agree, while
the pruned layer's G is only the kept heads' block.
"""

from __future__ import annotations

import copy

import pytest
import torch

from headgame.analyze.collect import CouplingCollector
from headgame.errors import HeadgameError
from headgame.models.load import load_model
from headgame.models.objective import Objective
from headgame.models.surgery import pruned_copy
from headgame.models.tap import HeadTap

from tests.conftest import random_batch

REMOVED = {0: [1], 1: [0, 2, 3]}  # layer 0 keeps 3 of 4 heads (uneven groups), layer 1 keeps one


def zeroed_twin(model, layout, removed):
    """A copy of the unpruned model whose removed heads write nothing (their W_O columns are 0)."""
    twin = copy.deepcopy(model)
    dh = layout.head_dim
    with torch.no_grad():
        for layer, heads in removed.items():
            w = layout.o_proj(twin, layer).weight  # [d, H*dh]
            for h in heads:
                w[:, h * dh:(h + 1) * dh] = 0.0
    return twin


@pytest.fixture(scope="module")
def pair():
    model, tok, layout = load_model("tiny-llama")
    pruned, rec = pruned_copy(model, layout, REMOVED)
    return model, pruned, rec, tok, layout


def test_without_per_layer_heads_uneven_layers_are_refused(pair):
    _, pruned, _, _, layout = pair
    with pytest.raises(HeadgameError, match=r"layer\(s\) 0,1 "):
        HeadTap(pruned, layout, outputs=True)


def test_per_layer_taps_read_each_layers_own_heads(pair):
    model, pruned, rec, _, layout = pair
    ids, mask = random_batch(layout.n_heads, batch=2, seq=9, pad_last=2)
    twin = zeroed_twin(model, layout, REMOVED)
    with HeadTap(twin, layout, outputs=True) as ref, torch.no_grad():
        twin(input_ids=ids, attention_mask=mask)
    with HeadTap(pruned, layout, outputs=True, per_layer_heads=True) as tap, torch.no_grad():
        pruned(input_ids=ids, attention_mask=mask)
    assert tap.n_heads == {0: 3, 1: 1}
    for layer in (0, 1):
        kept = rec.kept(layer)
        assert tap.outputs[layer].shape == (2, 9, len(kept), layout.head_dim)
        torch.testing.assert_close(tap.outputs[layer], ref.outputs[layer][:, :, kept], atol=1e-5, rtol=0)
        torch.testing.assert_close(layout.head_slices(pruned, layer), layout.head_slices(twin, layer)[kept])
        assert layout.heads_in(pruned, layer) == len(kept) and layout.heads_in(twin, layer) == layout.n_heads


def test_a_gate_must_match_the_layers_own_head_count(pair):
    _, pruned, _, _, layout = pair
    with pytest.raises(HeadgameError, match="layer 1 has 4 entries but the layer has 1 heads"):
        HeadTap(pruned, layout, gates={1: torch.ones(4)}, per_layer_heads=True)


def collect_g(model, layout, tok, ids, mask) -> dict[int, torch.Tensor]:
    obj = Objective(model, layout, tok, seed=0)
    with CouplingCollector(model, layout, obj, [0, 1], redundancy=False) as col:
        col.step(ids, mask)
    return {r["layer"]: (torch.tensor(r["G"]), r) for r in col.layer_results()}


def test_g_of_a_pruned_layer_is_the_kept_heads_block_of_the_equivalent_model(pair):
    model, pruned, rec, tok, layout = pair
    ids, mask = random_batch(layout.n_heads, batch=3, seq=10, seed=3)
    full = collect_g(zeroed_twin(model, layout, REMOVED), layout, tok, ids, mask)
    cut = collect_g(pruned, layout, tok, ids, mask)
    for layer in (0, 1):
        kept = rec.kept(layer)
        g, res = cut[layer]
        assert g.shape == (len(kept), len(kept)) and res["heads"] == kept
        torch.testing.assert_close(g, full[layer][0][kept][:, kept], atol=1e-6, rtol=1e-5)
    assert cut[1][1]["gamma"] == 0.0  # one head: no off-diagonal mass


def test_analyze_runs_on_an_unevenly_pruned_folder(pair, tmp_path):
    import headgame
    from headgame.models.surgery import save_pruned

    _, pruned, rec, tok, _ = pair
    save_pruned(pruned, tok, tmp_path / "m", extra={"criterion": "test", "fraction": 0.5})
    (tmp_path / "c.txt").write_text("The heads of a transformer read the same residual stream. " * 40)
    res = headgame.analyze(model=str(tmp_path / "m"), data=str(tmp_path / "c.txt"), max_tokens=128, seq_len=32,
                           batch_size=2, device="cpu", out=str(tmp_path / "a"))
    layers = {l["layer"]: l for l in res.data["layers"]}
    assert [len(layers[l]["G"]) for l in (0, 1)] == [3, 1]
    assert layers[0]["heads"] == rec.kept(0) and len(layers[0]["redundancy"]["mean_abs_corr"]) == 3
