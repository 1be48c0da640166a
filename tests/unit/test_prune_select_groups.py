"""Group-level (GQA) head selection, checked against brute force; and the KV-bytes helper of
benchmarks/prune_kv_decode.py against a real cache."""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from headgame.errors import HeadgameError
from headgame.measure.select import SELECTIONS, select, select_groups, select_heads

L, H = 3, 6

# (fraction, group size) -> groups pruned globally on 3 x 6 heads, worked out by hand:
# heads k = round_half_up(f * 18), groups = max(1, round_half_up(k / g))
GLOBAL_GROUPS = {
    (0.05, 2): 1, (0.05, 3): 1,  # k = 1 -> 0.5 -> 1 ; 0.33 -> 0, at least one
    (0.2, 2): 2, (0.2, 3): 1,  # k = 4 -> 2 ; 1.33 -> 1
    (0.35, 2): 3, (0.35, 3): 2,  # k = 6
    (0.5, 2): 5, (0.5, 3): 3,  # k = 9 -> 4.5 -> 5 (half up) ; 3
    (0.6, 2): 6,  # k = 11 -> 5.5 -> 6, all 3 layers keep one of their 3 groups
}
# (fraction, group size, rounding) -> groups pruned in each layer of 6 heads
PER_LAYER_GROUPS = {
    (0.35, 2, "nearest"): 1, (0.35, 3, "nearest"): 1,  # k = 2 -> 1 ; 0.67 -> 1
    (0.5, 2, "nearest"): 2, (0.5, 3, "nearest"): 1,  # k = 3 -> 1.5 -> 2 ; 1
    (0.7, 2, "nearest"): 2, (0.7, 3, "nearest"): 1,  # k = 4 -> 2 ; 1.33 -> 1
    (0.2, 2, "ceil"): 1, (0.2, 3, "ceil"): 1,  # k = ceil(1.2) = 2
}


def group_sum(key: np.ndarray, g: int, groups) -> float:
    return sum(sum(float(key[l, h]) for h in range(q * g, (q + 1) * g)) / g for l, q in groups)


def as_groups(chosen: dict[int, list[int]], g: int) -> set[tuple[int, int]]:
    out = set()
    for l, heads in chosen.items():
        for q in {h // g for h in heads}:
            assert set(range(q * g, (q + 1) * g)) <= set(heads), "a removed head set is not a union of whole groups"
            out.add((l, q))
        assert len(heads) == g * len({h // g for h in heads})
    return out


@pytest.mark.parametrize("fraction,g", sorted(GLOBAL_GROUPS))
@pytest.mark.parametrize("seed", range(4))
def test_global_matches_brute_force(fraction, g, seed):
    key = np.random.default_rng(seed).normal(size=(L, H))
    chosen = select_groups(key, fraction, g)
    got = as_groups(chosen, g)
    n_groups = H // g
    k = GLOBAL_GROUPS[(fraction, g)]
    assert len(got) == k
    cells = [(l, q) for l in range(L) for q in range(n_groups)]
    valid = [c for c in itertools.combinations(cells, k)
             if all(sum(1 for l, _ in c if l == layer) < n_groups for layer in range(L))]
    best = min(valid, key=lambda c: group_sum(key, g, c))
    assert got == set(best)
    assert math.isclose(group_sum(key, g, got), group_sum(key, g, best))
    assert all(heads == sorted(heads) for heads in chosen.values()) and list(chosen) == sorted(chosen)


@pytest.mark.parametrize("fraction,g,rounding", sorted(PER_LAYER_GROUPS))
@pytest.mark.parametrize("seed", range(3))
def test_per_layer_matches_brute_force(fraction, g, rounding, seed):
    key = np.random.default_rng(100 + seed).normal(size=(L, H))
    chosen = select_groups(key, fraction, g, per_layer=True, rounding=rounding)
    got = as_groups(chosen, g)
    k = PER_LAYER_GROUPS[(fraction, g, rounding)]
    for layer in range(L):
        mine = {q for l, q in got if l == layer}
        best = min(itertools.combinations(range(H // g), k), key=lambda c: group_sum(key, g, [(layer, q) for q in c]))
        assert mine == set(best)


def test_per_layer_all_rounding_to_zero_prunes_the_weakest_group():
    # 0.2 x 6 = 1.2 -> 1 head per layer -> round(1 / 3) = 0 groups everywhere: the one smallest group goes
    key = np.array([[5.0, 5, 5, 4, 4, 4], [3, 3, 3, 9, 9, 9], [1, 2, 9, 0, 0, 0]])  # group means 5 4 | 3 9 | 4 0
    assert select_groups(key, 0.2, 3, per_layer=True) == {2: [3, 4, 5]}


def test_keeps_one_group_per_layer():
    # layer 0 holds the six smallest keys; without the rule all its groups would go
    key = np.array([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5], [5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    chosen = select_groups(key, 0.5, 2)  # 5 groups: 2 of layer 0, then the 3 smallest elsewhere
    assert chosen == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3], 2: [0, 1]}


def test_group_key_is_the_mean_not_the_minimum():
    # group 0 has the smallest single head but the larger mean
    key = np.array([[-10.0, 30.0, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0]])  # means 10, 1 | 5, 5
    assert select_groups(key, 0.25, 2) == {0: [2, 3]}  # 2 heads -> 1 group


def test_ties_break_by_layer_then_group():
    zeros = np.zeros((2, 6))
    assert select_groups(zeros, 0.5, 2) == {0: [0, 1, 2, 3], 1: [0, 1]}  # 6 heads -> 3 groups
    assert select_groups(zeros, 0.5, 2, per_layer=True) == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}
    # equal group means from unequal heads: layer 0 group 0 first
    key = np.array([[1.0, 3.0, 2.0, 2.0, 5.0, 5.0], [2.0, 2.0, 4.0, 0.0, 7.0, 7.0]])
    assert select_groups(key, 0.2, 2) == {0: [0, 1]}  # round(2.4) = 2 heads -> 1 group


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("per_layer,rounding", [(False, "nearest"), (True, "nearest"), (True, "ceil")])
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.35, 0.5])
def test_group_size_one_is_select_heads(seed, per_layer, rounding, fraction):
    rng = np.random.default_rng(seed)
    key = rng.integers(0, 4, size=(4, 5)).astype(float) if seed % 2 else rng.normal(size=(4, 5))  # odd seeds: ties
    assert select_groups(key, fraction, 1, per_layer=per_layer, rounding=rounding) == \
        select_heads(key, fraction, per_layer=per_layer, rounding=rounding)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_errors():
    key = np.random.default_rng(0).normal(size=(L, H))
    with pytest.raises(HeadgameError) as e:
        select_groups(key, 0.2, 4)
    assert "do not split into groups of 4" in one_line(e)
    with pytest.raises(HeadgameError) as e:
        select_groups(key, 0.6, 3)  # 11 heads -> 4 groups, only 3 spare
    assert "emptying a layer" in one_line(e) and "at most 0.500" in one_line(e)
    assert len(as_groups(select_groups(key, 0.5, 3), 3)) == 3  # the suggested fraction works
    with pytest.raises(HeadgameError) as e:
        select_groups(key, 0.75, 2, per_layer=True)  # 4.5 -> 5 heads -> 2.5 -> 3 = all groups
    assert "would prune all 3 groups" in one_line(e) and "layer 0" in one_line(e) and "at most 0.667" in one_line(e)
    assert select_groups(key, 0.667, 2, per_layer=True)  # the suggested fraction works
    with pytest.raises(HeadgameError) as e:
        select_groups(key, 0.75, 3, per_layer=True)  # 5 heads -> 1.67 -> 2 = both groups
    assert "would prune all 2 groups" in one_line(e)
    with pytest.raises(HeadgameError):
        select_groups(key, 1.5, 3)
    bad = key.copy()
    bad[1, 2] = np.nan
    with pytest.raises(HeadgameError) as e:
        select_groups(bad, 0.2, 3)
    assert "NaN" in one_line(e)


def test_dispatcher():
    key = np.random.default_rng(1).normal(size=(L, H))
    assert SELECTIONS == ("head", "group")
    assert select(key, 0.35) == select_heads(key, 0.35)
    assert select(key, 0.35, selection="group", group_size=3) == select_groups(key, 0.35, 3)
    assert select(key, 0.5, selection="group", group_size=2, per_layer=True) == select_groups(key, 0.5, 2, per_layer=True)
    with pytest.raises(HeadgameError) as e:
        select(key, 0.2, selection="kv")
    assert "--selection kv" in one_line(e) and "head, group" in one_line(e)
    with pytest.raises(HeadgameError) as e:
        select(key, 0.2, selection="group", group_size=1)
    assert "grouped-query attention" in one_line(e) and "--selection head" in one_line(e)


# --------------------------------------------------------------------------- the benchmark's KV bytes


def _bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "prune_kv_decode.py"
    spec = importlib.util.spec_from_file_location("prune_kv_decode", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_kv_bytes_analytic_equals_measured():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from headgame.models.layout import HeadLayout
    from headgame.models.surgery import pruned_copy
    from headgame.models.tiny import VOCAB_SIZE

    bench = _bench()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                                         max_position_embeddings=64)).eval()
    layout = HeadLayout.from_model(model)
    per_head = 8 * 2 * 4  # head_dim x (K and V) x float32 bytes
    base = bench.kv_bytes(model, layout, None, batch=2, tokens=5)
    assert base["analytic_kept_kv"] == base["analytic_as_stored"] == base["measured"] == 4 * per_head
    # a whole group of layer 0 goes: 1 + 2 KV heads remain
    pruned, rec = pruned_copy(model, layout, {0: [0, 1, 2]})
    got = bench.kv_bytes(pruned, layout, rec, batch=2, tokens=5)
    assert got["analytic_kept_kv"] == got["measured"] == 3 * per_head and got["agree"]
    # one head of a group: both KV heads stay; the uneven layer caches its 2 KV heads, not one
    # copy per kept query head (the query heads get their KV head after the cache)
    pruned, rec = pruned_copy(model, layout, {0: [0]})
    got = bench.kv_bytes(pruned, layout, rec, batch=2, tokens=5)
    assert got["analytic_kept_kv"] == got["analytic_as_stored"] == got["measured"] == 4 * per_head and got["agree"]
