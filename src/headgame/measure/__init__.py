"""Measurements that run a model on its heads and that several commands share.

``fep`` and ``prune`` both import from here, never from each other's internals:

* :mod:`~headgame.measure.symbols`: each head's argmax key index per query position (the
  discretised outputs of GT-FEP), through HeadTap;
* :mod:`~headgame.measure.importance`: ablation ΔNLL, Michel et al. gradient importance and
  attention entropy per head;
* :mod:`~headgame.measure.select`: a pruning budget (share of heads, global or per layer) →
  the heads to prune;
* :mod:`~headgame.measure.perplexity`: perplexity sets (GSM8K, WikiText-2) and (pseudo-)
  perplexity of a model;
* :mod:`~headgame.measure.curvature`: the Hessian spectrum of the loss in a layer's head outputs
  (L and α of the PoA bound), by Hessian-vector products.

Layering: commands (fep, prune, …) → measure → models, data, info. Submodules are imported
on use.
"""
