"""The GT-FEP authors' own head score, as their public code computes it (docs/formulas.md#gtfep-authors).

From ``dbouchaffra/llm-head-synergy-harsanyi`` (``prune_gpt2_harsanyi.py``), read for its facts;
the code here is ours. It differs from the specification's order-3 m_i:

* one observation per **example**, not per position: a head's symbol for one input is the whole
  tuple of its argmax key indices over the sequence (:func:`example_symbols`);
* plug-in entropies in **nats**;
* singleton dividend H(i), pair dividend H(i) + H(j) − H(i, j) (the mutual information, ≥ 0),
  and the head score s_i = H(i) + ½ Σ_{j≠i} [H(i) + H(j) − H(i, j)] over the heads j of the same
  layer, "the Shapley value up to pairs": the pairs are *added*, where m_i subtracts them. The
  lowest scores are pruned.
"""

from __future__ import annotations

import numpy as np


def example_symbols(x: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Per-example symbols [E, H] (integer codes) from per-position symbols ``x`` [N, H] and the
    example index ``seq`` [N] of each position (positions of one example in order): the symbol
    of head h for example e is the tuple of h's argmax indices over e's positions, coded so that
    equal tuples get equal codes (per head)."""
    x, seq = np.asarray(x), np.asarray(seq)
    if x.ndim != 2 or seq.shape != (x.shape[0],):
        raise ValueError(f"example_symbols needs x [N, H] and seq [N], got {x.shape} and {seq.shape}")
    order = np.argsort(seq, kind="stable")
    x, seq = x[order], seq[order]
    examples, starts = np.unique(seq, return_index=True)
    bounds = list(starts) + [len(seq)]
    codes = np.empty((len(examples), x.shape[1]), dtype=np.int64)
    for h in range(x.shape[1]):
        seen: dict[tuple, int] = {}
        for e in range(len(examples)):
            key = tuple(x[bounds[e]:bounds[e + 1], h].tolist())
            codes[e, h] = seen.setdefault(key, len(seen))
    return codes


def plugin_entropy(*columns: np.ndarray) -> float:
    """Plug-in (maximum-likelihood) entropy in nats of the joint symbol of ``columns`` ([E] each)."""
    joint = np.stack([np.asarray(c) for c in columns], axis=1)
    _, counts = np.unique(joint, axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def authors_scores(codes: np.ndarray) -> dict[str, np.ndarray]:
    """The authors' score of every head of one layer from per-example symbols ``codes`` [E, H]:
    ``score`` s_i = H(i) + ½ Σ_{j≠i} MI(i, j), with ``singleton`` H(i) and ``pair`` MI [H, H]
    (0 on the diagonal), all in nats."""
    codes = np.asarray(codes)
    n_heads = codes.shape[1]
    single = np.array([plugin_entropy(codes[:, i]) for i in range(n_heads)])
    pair = np.zeros((n_heads, n_heads))
    for i in range(n_heads):
        for j in range(i + 1, n_heads):
            pair[i, j] = pair[j, i] = single[i] + single[j] - plugin_entropy(codes[:, i], codes[:, j])
    return {"score": single + 0.5 * pair.sum(axis=1), "singleton": single, "pair": pair}
