"""GT-FEP analysis of attention heads (spec gt-fep): discretised head outputs, joint entropies,
Harsanyi dividends, Gibbs distributions over coalitions and head marginal contributions.

The maths modules (:mod:`entropy`, :mod:`dividends`, :mod:`gibbs`, :mod:`scores`, :mod:`info`)
are pure; :mod:`symbols` runs the model through HeadTap; :mod:`run` is the ``headgame fep``
pipeline and :mod:`report` writes its outputs. Submodules are imported on use.
"""
