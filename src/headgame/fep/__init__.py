"""``headgame fep``: GT-FEP analysis of attention heads: discretised head outputs, joint entropies,
Harsanyi dividends, Gibbs distributions over coalitions and head marginal contributions.

The command only: :mod:`config`, :mod:`command`, :mod:`run` (the pipeline) and :mod:`report`
(its outputs). The pure maths lives in :mod:`headgame.info`; the argmax-key symbols and the
ablation ΔNLL are measurements of :mod:`headgame.measure`. fep imports nothing of prune.
Submodules are imported on use.
"""

from headgame.runs import make_callable

make_callable(__name__)  # headgame.fep(...) runs the command (headgame.api)
