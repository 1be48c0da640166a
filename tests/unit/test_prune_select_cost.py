"""Head selection rules, the criteria registry, analytic and measured FLOPs, timing helpers."""

from __future__ import annotations

import numpy as np
import pytest

from headgame.errors import HeadgameError
from headgame.models.load import load_model
from headgame.models.surgery import pruned_copy
from headgame.prune import cost
from headgame.prune.criteria import CRITERIA, Criterion, get_criterion, parse_criteria, register
from headgame.measure.select import budget, round_half_up, select_heads


def test_budget_rounding_and_errors():
    assert round_half_up(0.2 * 144) == 29 and round_half_up(0.2 * 270) == 54 and round_half_up(2.5) == 3
    assert budget([12] * 12, 0.2, per_layer=False) == 29
    assert budget([12] * 12, 0.2, per_layer=True) == [2] * 12
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(HeadgameError, match=r"outside \(0, 1\)"):
            budget([4, 4], bad, per_layer=False)
    with pytest.raises(HeadgameError, match="would prune all 4 heads of layer 0"):
        budget([4, 4], 0.9, per_layer=True)
    with pytest.raises(HeadgameError, match="emptying a layer"):
        budget([4, 4], 0.9, per_layer=False)  # 7 of 8 heads, but 2 layers must keep one each
    with pytest.raises(HeadgameError, match="prunes no head"):
        budget([4, 4], 0.01, per_layer=False)


def test_select_keeps_one_head_per_layer_and_ranks_globally():
    key = np.array([[0.0, 0.1, 0.2, 0.3], [5.0, 6.0, 7.0, 8.0]])
    # 0.75 of 8 = 6 heads; layer 0 can give at most 3, so the next 3 come from layer 1
    assert select_heads(key, 0.75) == {0: [0, 1, 2], 1: [0, 1, 2]}
    assert select_heads(key, 0.25) == {0: [0, 1]}
    assert select_heads(key, 0.5, per_layer=True) == {0: [0, 1], 1: [0, 1]}
    ties = np.zeros((2, 4))
    assert select_heads(ties, 0.25) == {0: [0, 1]}  # ties break by (layer, head)
    with pytest.raises(HeadgameError, match="NaN"):
        select_heads(np.array([[np.nan, 1.0], [1.0, 2.0]]), 0.25)


def test_registry():
    assert {"fep", "fep-exact", "shapley", "gibbs", "ablation", "michel", "attention-entropy", "random", "coupling"} <= set(CRITERIA)
    with pytest.raises(HeadgameError, match="unknown criterion 'nope'"):
        get_criterion("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register(Criterion("fep", "", "information", "lowest", lambda ctx: None))
    assert parse_criteria("fep, random,fep") == ["fep", "random"]
    s = np.array([[1.0, 2.0]])
    assert get_criterion("coupling").pruning_key(s).tolist() == [[-1.0, -2.0]]  # most coupled first
    assert get_criterion("fep").pruning_key(s).tolist() == [[1.0, 2.0]]


def test_analytic_flops_manual_count():
    # tiny-llama: d=64, 4 query heads, 2 KV heads, dh=16, MLP 128 (gated: 3 matrices), vocab 262, 2 layers
    model, _, layout = load_model("tiny-llama")
    t = 10
    per_layer = 2 * t * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 2 * 2 * t * t * 4 * 16
    manual = 2 * per_layer + 2 * t * 64 * 262
    got = cost.analytic_flops(model, layout, t)
    assert got["total"] == manual
    assert got["attention"] == 2 * (2 * t * (64 * 64 + 2 * 64 * 32 + 64 * 64) + 2 * 2 * t * t * 4 * 16)
    # pruning head 1 of layer 0 (its KV head stays: head 0 still uses it)
    pruned, _ = pruned_copy(model, layout, {0: [1]})
    saved = 2 * t * (64 * 16 + 16 * 64) + 2 * 2 * t * t * 16
    assert cost.analytic_flops(pruned, layout, t)["total"] == manual - saved


@pytest.mark.parametrize("removed", [{}, {0: [1], 1: [0, 2]}])
def test_analytic_flops_equal_flop_counter(tiny, removed):
    model, _, layout = tiny
    m = pruned_copy(model, layout, removed)[0] if removed else model
    a = cost.analytic_flops(m, layout, 24)
    b = cost.measured_flops(m, layout, 24)
    assert b["total"] == a["total"]
    assert b["attention"] == a["attention"]
    assert model.config._attn_implementation == "sdpa"  # the eager switch is undone


def test_round_robin_rotates_and_times_everything():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    times = cost.round_robin(fns, warmup=1, repeats=3)
    assert calls[:3] == ["a", "b", "c"] and calls[3:6] == ["b", "c", "a"]
    assert all(len(v) == 3 for v in times.values())


def test_paired_rounds_alternate_order():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "ab"}
    timed = cost.paired_rounds(lambda: calls.append("base"), fns, warmup=1, repeats=2)
    # round 0 (warm-up): base,a  b,base ; round 1: a,base  base,b ; round 2: base,a  b,base
    assert calls == ["base", "a", "b", "base", "a", "base", "base", "b", "base", "a", "b", "base"]
    assert all(len(v["base"]) == 2 and len(v["model"]) == 2 for v in timed.values())


def test_forward_and_generation_throughput():
    model, tok, layout = load_model("tiny-llama")
    pruned, _ = pruned_copy(model, layout, {0: [1]})
    fw = cost.forward_throughput({"base": model, "p": pruned}, layout, batch_size=2, seq_len=8, warmup=1, repeats=5, vocab_size=262)
    assert set(fw) == {"base", "p"} and len(fw["p"]["times_s"]) == 5 and fw["p"]["tokens_per_s"] > 0
    assert fw["p"]["measured_speedup"] == pytest.approx(fw["p"]["base_median_s"] / fw["p"]["median_s"])
    assert fw["base"]["measured_speedup"] == 1.0 and len(fw["base"]["times_s"]) == 5
    gen = cost.generation_throughput({"base": model, "p": pruned}, tok, prompt_len=4, new_tokens=3, repeats=1, vocab_size=262)
    assert gen["p"]["new_tokens"] == 3 and gen["p"]["median_s"] > 0 and gen["p"]["measured_speedup"] > 0


def test_per_layer_ceil_rounding_is_the_authors_budget():
    from headgame.measure.select import budget, select_heads

    # 20 % of 12 heads: 2.4 -> 2 (nearest) or 3 (ceil, the GT-FEP authors' code); 25 % of 12 = 3 either way
    assert budget([12] * 3, 0.2, per_layer=True) == [2, 2, 2]
    assert budget([12] * 3, 0.2, per_layer=True, rounding="ceil") == [3, 3, 3]
    assert budget([12] * 3, 0.25, per_layer=True, rounding="ceil") == [3, 3, 3]
    key = np.arange(24, dtype=float).reshape(2, 12)[:, ::-1]  # head 11 lowest in each layer
    assert select_heads(key, 0.2, per_layer=True, rounding="ceil") == {0: [9, 10, 11], 1: [9, 10, 11]}
    with pytest.raises(HeadgameError, match="choose one of nearest, ceil"):
        budget([12], 0.2, per_layer=True, rounding="floor")
