"""Pruning curves (--fractions), iterative pruning, GQA-group selection and healing through
``headgame prune`` on tiny models, and the pure planning functions (prune/plan.py) by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from headgame.cli import main
from headgame.errors import HeadgameError
from headgame.prune import plan
from tests.unit.test_prune_cli import FAST, files, run  # noqa: F401  (fixture)


class _Layout:  # the two fields the planning functions read
    def __init__(self, n_layers: int, n_heads: int) -> None:
        self.n_layers, self.n_heads = n_layers, n_heads


def _lowest_keep_one(key: np.ndarray, k: int) -> dict[int, list[int]]:
    """Independent selection: walk heads by ascending key, skip a head that would empty its layer."""
    order = sorted((float(key[l, h]), l, h) for l in range(key.shape[0]) for h in range(key.shape[1]))
    left = [key.shape[1]] * key.shape[0]
    out: dict[int, list[int]] = {}
    for _, l, h in order:
        if k == 0:
            break
        if left[l] > 1:
            out.setdefault(l, []).append(h)
            left[l] -= 1
            k -= 1
    return {l: sorted(v) for l, v in sorted(out.items())}


def _count_calls(monkeypatch, module: str, name: str) -> list[int]:
    import importlib

    mod = importlib.import_module(module)
    real = getattr(mod, name)
    calls: list[int] = []

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(mod, name, counted)
    return calls


# ------------------------------------------------------------------ pure planning
def test_iterative_counts_land_on_every_budget():
    # 270 heads: steps of round(0.05 * 270) = 14 heads, shortened to land on 27 (10 %) and 54 (20 %)
    assert plan.iterative_counts([0.1, 0.2], 270, 30, 0.05) == [14, 27, 41, 54]
    assert plan.iterative_counts([0.25], 8, 2, 0.5) == [2]  # one step larger than the budget: one step to it


def test_extend_skips_removed_and_keeps_one_per_layer():
    key = np.array([[0.0, 1.0, 2.0], [0.5, 0.6, 0.7]])
    # head (0, 0) already gone; (1, 0) and (1, 1) go, (1, 2) is layer 1's last head, so (0, 1) is next
    assert plan.extend(key, {0: [0]}, 3) == {0: [0, 1], 1: [0, 1]}
    with pytest.raises(HeadgameError, match="not enough heads"):
        plan.extend(key, {}, 5)


def test_iterative_rescores_with_the_removed_heads_known():
    base = np.array([[1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 3.5, 4.5]])
    seen: list[dict] = []

    def score(removed):
        seen.append({l: list(h) for l, h in removed.items()})
        s = base.copy()
        if removed:  # once anything is gone, layer 1's heads look indispensable
            s[1] += 10.0
        return s

    snaps, history = plan.iterative(score, lambda s: s, [0.25, 0.5], _Layout(2, 4), 0.25)
    # step 1 (2 heads) by the first scores: (0,0) and (1,0); step 2 re-scored: layer 0 heads 1, 2
    assert snaps[0.25] == {0: [0], 1: [0]}
    assert snaps[0.5] == {0: [0, 1, 2], 1: [0]}
    assert seen == [{}, {0: [0], 1: [0]}] and len(history) == 2
    # one-shot on the first scores would have taken (0,1) and (1,1) next
    assert _lowest_keep_one(base, 4) == {0: [0, 1], 1: [0, 1]}


# ------------------------------------------------------------------ the command
def test_fractions_write_curves_and_score_once(tmp_path, files, monkeypatch):  # noqa: F811
    calls = _count_calls(monkeypatch, "headgame.measure.importance", "ablation_delta_nll")
    code, out = run(tmp_path, files, "--criterion", "ablation", "--fractions", "0.25,0.5", "--fraction", "0.25",
                    "--compare-criteria", "--criteria", "ablation,random,fep", "--random-seeds", "2")
    assert code == 0
    assert len(calls) == 1  # scored once for both fractions
    res = json.loads((out / "pruning.json").read_text())
    assert res["budget"]["fractions"] == [0.25, 0.5]
    assert set(res["results_by_fraction"]) == {"0.25", "0.5"} and res["results"] == res["results_by_fraction"]["0.25"]
    with open(out / "head_scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    key = np.zeros((2, 4))
    for r in rows:
        key[int(r["layer"]), int(r["head"])] = float(r["ablation"])
    for f, k in (("0.25", 2), ("0.5", 4)):
        got = {int(l): h for l, h in res["results_by_fraction"][f]["ablation"]["pruned_heads"].items()}
        assert got == _lowest_keep_one(key, k)
    c = json.loads((out / "curves.json").read_text())
    assert c["fractions"] == [0.25, 0.5] and set(c["criteria"]) == {"ablation", "random", "fep"}
    abl = c["criteria"]["ablation"]
    assert abl["n_pruned"] == [2, 4]
    for i, f in enumerate(("0.25", "0.5")):
        assert abl["ppl_gsm8k"][i] == res["results_by_fraction"][f]["ablation"]["perplexity"]["gsm8k"]["ppl"]
    rnd = c["criteria"]["random"]["ppl_wikitext2"]
    runs = [r["perplexity"]["wikitext2"]["ppl"] for r in res["results_by_fraction"]["0.5"]["random"]["runs"]]
    assert rnd[1]["n"] == 2 and rnd[1]["mean"] == pytest.approx(np.mean(runs)) and rnd[1]["min"] == min(runs)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["saved_model"] and json.loads((out / "model" / "headgame_pruning.json").read_text())


def test_iterative_pruning_rescores_each_step(tmp_path, files, monkeypatch):  # noqa: F811
    calls = _count_calls(monkeypatch, "headgame.measure.importance", "ablation_delta_nll")
    code, out = run(tmp_path, files, "--criterion", "ablation", "--fractions", "0.25,0.5", "--iterative-step", "0.25",
                    "--no-save-model")
    assert code == 0 and len(calls) == 2  # one scoring per step: 2 then 4 heads
    res = json.loads((out / "pruning.json").read_text())
    assert res["budget"]["iterative_step"] == 0.25
    small = res["results_by_fraction"]["0.25"]["ablation"]["pruned_heads"]
    large = res["results_by_fraction"]["0.5"]["ablation"]["pruned_heads"]
    assert all(set(h) <= set(large.get(l, [])) for l, h in small.items())  # one path: snapshots nest
    assert res["results_by_fraction"]["0.5"]["ablation"]["n_pruned"] == 4


def test_group_selection_removes_whole_kv_groups(tmp_path, files):  # noqa: F811
    code, out = run(tmp_path, files, "--criterion", "ablation", "--fraction", "0.5", "--selection", "group", "--no-save-model")
    assert code == 0
    r = json.loads((out / "pruning.json").read_text())["results"]["ablation"]
    # tiny-llama: 4 query heads over 2 KV heads per layer; 4 heads = 2 groups, one per layer (each keeps one)
    assert r["n_pruned"] == 4 and r["kv_heads_removed"] == 2 and r["kv_heads_per_layer"] == [1, 1]
    for heads in r["pruned_heads"].values():
        assert heads in ([0, 1], [2, 3])


@pytest.mark.parametrize("args, message", [
    (["--selection", "group", "--fraction", "0.25"], "grouped-query"),
    (["--fractions", "0.2,x"], "--fractions"),
    (["--iterative-step", "0.1", "--per-layer"], "--iterative-step"),
    (["--heal-tokens", "100"], "encoder"),
])
def test_curve_and_selection_errors(tmp_path, files, capsys, args, message):  # noqa: F811
    code, out = run(tmp_path, files, "--criterion", "random", *args, model="tiny-bert")
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_heal_tokens_heal_the_pruned_model_and_the_control(tmp_path, files):  # noqa: F811
    from headgame.models.load import load_model

    code, out = run(tmp_path, files, "--criterion", "random", "--fraction", "0.25", "--random-seeds", "1",
                    "--heal-tokens", "256", "--heal-data", str(files[1]))
    assert code == 0
    res = json.loads((out / "pruning.json").read_text())
    healed = res["healed"]
    assert healed["tokens"] == 256 and healed["method"] == "ce"
    for label in ("pruned", "unpruned"):
        assert healed[label]["summary"]["tokens"] >= 1
        loaded = load_model(healed[label]["model"])
        assert loaded.layout.n_layers == 2
    pruned = load_model(str(out / "heal" / "pruned" / "model"))
    assert pruned.info["kind"] == "pruned"
    for name in ("gsm8k", "wikitext2"):
        rec = healed["recovery"][name]
        assert rec["pruned_before"] == res["results"]["random"]["runs"][0]["perplexity"][name]["ppl"]
        assert rec["healed_pruned_over_healed_unpruned"] == pytest.approx(rec["pruned_healed"] / rec["unpruned_healed"] - 1)


def test_fep_layer_z_scores_by_hand():
    from headgame.prune.criteria import ScoreContext, get_criterion
    from headgame.prune.state import SavedInfo

    m = {0: np.array([-3.0, -1.0, -2.0]), 1: np.array([0.5, np.nan, 2.5])}  # layer 1's head 1 already removed
    ctx = ScoreContext(None, None, _Layout(2, 3), info_provider=lambda est: {l: SavedInfo({"fep": v}, 3) for l, v in m.items()})
    z = get_criterion("fep-layer").compute(ctx)
    # layer 0: mean −2, population sd sqrt(2/3); layer 1: mean 1.5, sd 1
    np.testing.assert_allclose(z[0], [-1 / np.sqrt(2 / 3), 1 / np.sqrt(2 / 3), 0.0])
    np.testing.assert_allclose(z[1, [0, 2]], [-1.0, 1.0])
    assert np.isnan(z[1, 1])


def test_item6_information_criteria_run_side_by_side(tmp_path, files):  # noqa: F811
    code, out = run(tmp_path, files, "--criterion", "fep", "--fraction", "0.25", "--compare-criteria",
                    "--criteria", "fep-mm,fep-cs,fep-layer,shapley-exact,gtfep-authors", "--no-save-model")
    assert code == 0
    res = json.loads((out / "pruning.json").read_text())
    assert set(res["results"]) == {"fep", "fep-mm", "fep-cs", "fep-layer", "shapley-exact", "gtfep-authors"}
    with open(out / "head_scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    for layer in ("0", "1"):  # efficiency: a layer's exact Shapley values sum to its joint entropy, ≥ 0
        total = sum(float(r["shapley-exact"]) for r in rows if r["layer"] == layer)
        assert total >= 0
    # Chao–Shen entropies are ≥ plug-in ones, so the two rankings need not agree, but both are finite
    assert all(np.isfinite(float(r["fep-cs"])) and np.isfinite(float(r["fep-mm"])) for r in rows)


def test_mlm_proxy_pseudo_perplexity_by_hand():
    """An encoder without an MLM head: --mlm-proxy scores masked tokens through h·Eᵀ."""
    import math

    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertModel

    from headgame.data.texts import Sequences
    from headgame.measure.perplexity import EvalSet, perplexity
    from headgame.models.layout import HeadLayout
    from headgame.models.tiny import byte_tokenizer

    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=64, pad_token_id=tok.pad_token_id)).eval()
    layout = HeadLayout.from_model(model)
    ids = torch.randint(10, len(tok) - 10, (2, 12))
    mask = torch.ones_like(ids)
    es = EvalSet("wikitext2", "test", Sequences(ids, mask, int(mask.sum()), 2, "t"))
    assert perplexity(model, layout, tok, es, seeds=1)["available"] is False
    got = perplexity(model, layout, tok, es, seeds=1, batch_size=2, mlm_proxy=True)
    assert got["available"] and "tied-embedding proxy" in got["kind"]
    # by hand: the first seed's draw of the one batch (seed 1000·0 + 0), 15 % of the non-special tokens
    special = set(tok.all_special_ids)
    valid = torch.ones_like(ids, dtype=torch.bool)
    for sid in special:
        valid &= ids != sid
    chosen = valid & (torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.15)
    if not chosen.any():
        first = valid.nonzero()[:1]
        chosen[first[:, 0], first[:, 1]] = True
    with torch.no_grad():
        hidden = model(input_ids=ids.masked_fill(chosen, tok.mask_token_id), attention_mask=mask).last_hidden_state
        logits = hidden @ model.embeddings.word_embeddings.weight.t()
    nll = F.cross_entropy(logits[chosen], ids[chosen], reduction="mean")
    assert got["ppl"] == pytest.approx(math.exp(float(nll)), rel=1e-5)
