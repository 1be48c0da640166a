"""Head pruning: criteria registry, selection, surgery-backed pruning, cost and perplexity.

``headgame prune`` ranks heads by a criterion (:mod:`headgame.prune.criteria`), selects a budget
(:mod:`headgame.prune.select`), removes them physically (:mod:`headgame.models.surgery`) and
measures perplexity (:mod:`headgame.prune.perplexity`), FLOPs and throughput
(:mod:`headgame.prune.cost`) before and after (:mod:`headgame.prune.run`).
"""
