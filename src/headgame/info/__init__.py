"""The pure maths of GT-FEP: entropies, Harsanyi dividends, Gibbs distributions, head scores.

Functions on integer symbol arrays and entropy tables; no model, no hooks, no I/O, and nothing
of headgame imported but :mod:`headgame.errors`, so every formula can be checked against a
brute-force count.

* :mod:`~headgame.info.entropy`: plug-in joint entropies (bits), mutual and interaction
  information, the bootstrap over sequences, all 2^H subset entropies;
* :mod:`~headgame.info.dividends`: the Möbius transform of the coalition free energy (Harsanyi
  dividends), orders 2 and 3, triple summaries;
* :mod:`~headgame.info.gibbs`: P_β over subsets and over coalition structures (MCMC);
* :mod:`~headgame.info.scores`: the head scores m_i (order 3, exact), Shapley, ε-Nash;
* :mod:`~headgame.info.analysis`: everything of one layer, from its symbols [N, H].

Submodules are imported on use.
"""
