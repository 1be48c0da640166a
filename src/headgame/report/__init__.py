"""Reports for ``headgame analyze``: PNG figures, one self-contained HTML page, a terminal table.

Names are re-exported lazily, so ``import headgame.report`` imports neither numpy,
matplotlib nor rich; each is loaded when a function that needs it is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headgame.report.html import render_report_html, write_report
    from headgame.report.plots import (
        choose_heatmap_layers,
        plot_gamma_by_layer,
        plot_interaction_heatmaps,
        plot_matrix_delta,
        plot_redundancy_by_layer,
    )
    from headgame.report.summary import print_summary, summary_table

_EXPORTS = {
    "render_report_html": "html",
    "write_report": "html",
    "choose_heatmap_layers": "plots",
    "plot_gamma_by_layer": "plots",
    "plot_interaction_heatmaps": "plots",
    "plot_matrix_delta": "plots",
    "plot_redundancy_by_layer": "plots",
    "print_summary": "summary",
    "summary_table": "summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'headgame.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"headgame.report.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
