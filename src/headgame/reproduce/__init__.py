"""``headgame reproduce PAPER``: both papers' experiments as resumable stages, and their reports.

``config`` (ReproduceConfig) · ``presets`` (tiny, cpu, cpu-full, gpu) · ``stages`` (the
resumable stage store) · ``command`` (CLI) · ``run`` (hold OUT, dispatch) · ``gamelora`` /
``gamelora_report`` / ``gamelora_sections`` · ``gtfep`` / ``gtfep_report`` · ``tables`` (the
statistics) · ``views`` (G against mutual information).
"""

from headgame.runs import make_callable

make_callable(__name__)  # headgame.reproduce(...) runs the command (headgame.api)
