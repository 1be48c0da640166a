"""``headgame analyze``: head coupling (ω, ρ, G, Γ), coalitions and redundancy of every layer.

``config`` (AnalyzeConfig) · ``command`` (CLI) · ``run`` (the pipeline) · ``collect`` (the
per-batch accumulation, shared with prune's coupling criterion) · ``compare`` (``--compare``).
"""

from headgame.runs import make_callable

make_callable(__name__)  # headgame.analyze(...) runs the command (headgame.api)
