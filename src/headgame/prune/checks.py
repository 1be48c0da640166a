"""Every input of ``headgame prune`` checked before --out is claimed: the files it names, the text
it scores on, and, once the model is loaded (which writes nothing), the settings that depend on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headgame.errors import HeadgameError
from headgame.prune.config import PruneConfig


def prepare(cfg: PruneConfig) -> Any:
    """The loaded model of a prune run whose inputs all passed their checks (nothing is written)."""
    from headgame.config import check_out_path, resolve_device
    from headgame.models.device import place
    from headgame.data.texts import check_sequence_source, resolve_source
    from headgame.measure.select import budget
    from headgame.models.load import load_model

    check_out_path(cfg.out)
    device = resolve_device(cfg.device)  # a GPU asked for and absent fails before the model loads
    for flag, path in (("--analysis", cfg.analysis), ("--gsm8k-file", cfg.gsm8k_file), ("--wikitext-file", cfg.wikitext_file)):
        if path is not None and not Path(path).is_file():
            raise HeadgameError(f"{flag} {path} not found; check the path")
    check_sequence_source(resolve_source(cfg.score_data, cfg.data_dir), text_field=cfg.text_field, data_dir=cfg.data_dir)
    loaded = place(load_model(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code), device)
    layout = loaded.layout
    if loaded.info.get("kind") == "pruned":
        raise HeadgameError(f"{cfg.model} is already pruned; prune the original model")
    if cfg.analysis and "coupling" in cfg.criteria_list():  # fail before any work on another model's G
        from headgame.io import read_analysis
        from headgame.prune.coupling import check_analysis_model

        check_analysis_model(read_analysis(cfg.analysis), cfg.analysis, cfg.model, loaded.info.get("hash"))
    import numpy as np

    from headgame.measure.select import select
    from headgame.prune.plan import group_size

    for f in cfg.fraction_list:  # every budget and selection error before any work
        budget([layout.n_heads] * layout.n_layers, f, per_layer=cfg.per_layer, rounding=cfg.per_layer_rounding)
        select(np.zeros((layout.n_layers, layout.n_heads)), f, selection=cfg.selection, group_size=group_size(layout),
               per_layer=cfg.per_layer, rounding=cfg.per_layer_rounding)
    if cfg.heal_tokens and not layout.causal:
        raise HeadgameError(f"--heal-tokens fine-tunes with the causal LM loss; {cfg.model} is an encoder, so pass --heal-tokens 0")
    return loaded
