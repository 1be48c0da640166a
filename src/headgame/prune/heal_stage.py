"""The healing stage of ``headgame prune --heal-tokens N``: LoRA fine-tuning of the saved pruned
model and, as the control that separates recovery from domain shift, of the unpruned model on
the same tokens (prune/heal.py), then the perplexity of both on the run's perplexity sets.

Each healed model lands in ``OUT/heal/{pruned,unpruned}/model`` as a plain model folder (the
adapter merged), which every command loads. Both runs resume and skip what they finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def heal_and_measure(cfg: Any, out: Path, pruned_dir: str, pruned_key: str, evalsets: list, ppl: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"pruned": {...}, "unpruned": {...}, "recovery": {...}}`` with each run's summary and perplexity;
    ``pruned_key`` names the pruned model's entry in ``ppl`` (its perplexity before healing)."""
    from headgame.measure.perplexity import perplexity
    from headgame.models.device import place
    from headgame.models.load import load_model
    from headgame.config import resolve_device
    from headgame.prune.heal import heal

    runs = {"pruned": pruned_dir, "unpruned": cfg.model}
    result: dict[str, Any] = {"tokens": cfg.heal_tokens, "method": cfg.heal_method, "data": cfg.heal_data}
    for label, source in runs.items():
        where = out / "heal" / label
        summary = heal(source, where, tokens=cfg.heal_tokens, method=cfg.heal_method, seed=cfg.seed,
                       data=None if cfg.heal_data == "auto" else cfg.heal_data, data_dir=cfg.data_dir,
                       seq_len=cfg.seq_len, batch_size=cfg.batch_size, device=cfg.device)
        loaded = place(load_model(str(where / "model"), dtype=cfg.dtype), resolve_device(cfg.device))
        measured = {es.name: perplexity(loaded.model, loaded.layout, loaded.tokenizer, es, batch_size=cfg.batch_size,
                                        seeds=cfg.pseudo_ppl_seeds, mlm_proxy=cfg.mlm_proxy) for es in evalsets}
        result[label] = {"summary": summary, "model": str(where / "model"), "perplexity": measured}
    recovery: dict[str, Any] = {}
    for es in evalsets:
        hp, hu = result["pruned"]["perplexity"][es.name], result["unpruned"]["perplexity"][es.name]
        if not (hp.get("available") and hu.get("available")):
            continue
        recovery[es.name] = {
            "pruned_before": ppl[pruned_key][es.name].get("ppl"), "pruned_healed": hp["ppl"],
            "unpruned_before": ppl["base"][es.name].get("ppl"), "unpruned_healed": hu["ppl"],
            "healed_pruned_over_healed_unpruned": hp["ppl"] / hu["ppl"] - 1.0,
        }
    result["recovery"] = recovery
    result["notes"] = ("the pruned model of the primary criterion at --fraction and the unpruned model, each LoRA-tuned on the "
                       "same tokens and seed and merged; healed_pruned_over_healed_unpruned = ppl(healed pruned) / ppl(healed "
                       "unpruned) − 1, the cost of pruning once both saw the same data")
    return result
