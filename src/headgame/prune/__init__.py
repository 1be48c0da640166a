"""Head pruning: criteria registry, surgery-backed pruning, cost and the before/after report.

``headgame prune`` ranks heads by a criterion (:mod:`headgame.prune.criteria`), selects a budget
(:mod:`headgame.measure.select`), removes them physically (:mod:`headgame.models.surgery`) and
measures perplexity (:mod:`headgame.measure.perplexity`), FLOPs and throughput
(:mod:`headgame.prune.cost`) before and after (:mod:`headgame.prune.run`). prune sits above fep
(the information criteria run the GT-FEP analysis) and above ``analyze.collect`` (coupling).
"""

from headgame.runs import make_callable

make_callable(__name__)  # headgame.prune(...) runs the command (headgame.api)
