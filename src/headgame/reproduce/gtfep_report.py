"""The report of ``headgame reproduce gt-fep``: ``report.json``, ``report.md``, ``report.html`` (one
self-contained page) and PNG figures in OUT, built only from the stages that finished with this
run's settings. Every number of a table is read from a stage file in OUT; report.json names, for
each table, the files it read (``sources``), so each number can be traced.

Per model: the sign of the triple dividends per layer (Wilson and bootstrap intervals, Wilcoxon),
the pruning curves, the healing table and the two views of the heads; then the paper's claims
beside ours, each row saying which FLOPs it counts. Stages not finished are listed, not fatal.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from headgame.reproduce.stages import RECORD, StageStore
from headgame.report.doc import Doc

FORMAT = "headgame-reproduce-gt-fep/1"
CLAIMS = {  # the paper's abstract (arXiv 2605.09515), GPT-2 with 20 % of the heads pruned
    "triples": "consistently negative (BERT, GPT-2, Llama on GSM8K)",
    "flops": "−18 %, i.e. a reduction of 0.18 (accounting not stated)",
    "throughput": "+22 %, i.e. a speed-up of 1.22× (equals 1/(1 − 0.18), the FLOP-implied value)",
    "ppl": "28.4 → 33.4 (+17.6 %) on GSM8K",
}
TEXT = ("layer", "criterion", "set", "redundant_by", "claim", "model", "paper", "what", "source")
WHOLE = "whole model: analytic forward FLOPs (QKV/O projections, QKᵀ, AV, MLP, LM head; 2 per multiply-add) of one sequence"


def _table(tid: str, title: str, sources: list[str], columns: list[str], rows: list[list[Any]], note: str = "") -> dict[str, Any]:
    return {"id": tid, "title": title, "sources": sources, "columns": columns,
            "text_columns": [c for c in columns if c in TEXT], "rows": rows, "note": note}


def _mean(v: Any, key: str = "mean") -> Any:
    return v.get(key) if isinstance(v, dict) else (v if key == "mean" else None)


def triple_table(slug: str, src: str, r: dict[str, Any]) -> dict[str, Any]:
    cols = ["layer", "n", "mean", "bootstrap_mean_low", "bootstrap_mean_high", "median", "frac_negative", "wilson_low",
            "wilson_high", "bootstrap_frac_negative_low", "bootstrap_frac_negative_high", "n_near_zero", "wilcoxon_p_less",
            "wilcoxon_p_two_sided"]
    rows = [[str(x["layer"]), *(x.get(c) for c in cols[1:])] for x in r["layers"]]
    rows.append(["all", *(r["pooled"].get(c) for c in cols[1:])])
    return _table(f"triples/{slug}", f"{r['model']}: sign of the triple dividends (bits)", [src], cols, rows,
                  f"{r['data']['n_observations']} observations per layer from {r['data']['n_sequences']} sequences of "
                  f"{r['data']['source']}. Wilson: 95 % interval treating triples as independent (they share heads); bootstrap: "
                  "95 % over sequences (fep.json), basic (reflected) intervals that undo the shift resampling gives plug-in "
                  "entropies, so where that shift exceeds the spread they lie beyond the estimate (docs/formulas.md#bootstrap). "
                  "Wilcoxon signed-rank against 0, one-sided (H1: median < 0) and two-sided; "
                  "n_near_zero: |D| < 1e-9 bits, whose sign is rounding noise.")


def curve_table(slug: str, src: str, r: dict[str, Any], model: str) -> dict[str, Any]:
    sets = r["sets"]
    cos = [s for s in sets if any(f"cos_{s}" in pt for pt in r["points"])]  # encoders
    cols = ["criterion", "fraction", "n_pruned", *[f"{k}{s}{e}" for s in sets for k, e in (("ppl_", ""), ("ppl_", "_sd"),
                                                                                          ("ppl_", "_change"))],
            *[f"cos_{s}" for s in cos], "measured_speedup", "speedup_paired_min", "speedup_paired_max", "flop_implied_speedup",
            "flops_whole_analytic", "flops_attention_analytic"]
    rows = [["unpruned", None, None, *[v for s in sets for v in (r["base"]["perplexity"].get(s, {}).get("ppl"), None, None)],
             *[(r["base"]["perplexity"].get(s, {}).get("embedding") or {}).get("cosine_mean") for s in cos],
             None, None, None, None, None, None]]
    for pt in r["points"]:
        rnd = pt["criterion"] == "random"
        vals = []
        for c in cols[1:]:
            if c.endswith("_sd") and c.startswith("ppl_"):
                vals.append(_mean(pt.get(c[:-3]), "sd"))
            elif rnd and c in ("speedup_paired_min", "speedup_paired_max"):
                vals.append(_mean(pt.get(c), "min" if c.endswith("min") else "max"))
            else:
                vals.append(_mean(pt.get(c)))
        rows.append([pt["criterion"] + (f" (mean of {len(pt.get('seeds') or [])} seeds)" if rnd else ""), *vals])
    kinds = "; ".join(f"{s}: {r['base']['perplexity'].get(s, {}).get('kind')}" for s in sets)
    return _table(f"curves/{slug}", f"{model}: pruning curves", [src], cols, rows,
                  f"{kinds}. Random: mean, sd over its seeds. measured_speedup: median paired base time / pruned time of the "
                  f"forward pass on {(r.get('device') or {}).get('device')}, with the range of the paired rounds; flops_*: "
                  f"reduction of the {WHOLE} of {r['base'].get('flops_seq_len')} tokens, and of the attention blocks alone."
                  + (" cos_*: mean cosine of each sequence's mean-pooled sentence embedding with the unpruned model's "
                     "(1 = unchanged; the measure that fits a sentence encoder)." if cos else ""))


def heal_table(slug: str, src: str, r: dict[str, Any], model: str) -> dict[str, Any]:
    cols = ["set", "pruned_before", "pruned_healed", "unpruned_before", "unpruned_healed", "gap_before", "gap_healed", "tokens"]
    rows = [[x["set"], *(x.get(c) for c in cols[1:-1]), r.get("tokens")] for x in r["recovery"]]
    return _table(f"heal/{slug}", f"{model}: healing the {r['criterion']}-pruned model", [src], cols, rows,
                  f"LoRA ({r.get('method')}) on the same tokens for the pruned model and the unpruned control, then merged. "
                  "gap = ppl(pruned) / ppl(unpruned) − 1, before and after both were healed: the cost of pruning once both saw "
                  "the same data.")


def view_tables(slug: str, src: str, r: dict[str, Any], model: str) -> list[dict[str, Any]]:
    v = r["views"]
    cols = ["layer", "n", "rho", "p"]
    rows = [[str(x["layer"]), x["n"], x["rho"], x["p"]] for x in v["layers"]] + [["all", v["pooled"]["n"], v["pooled"]["rho"], v["pooled"]["p"]]]
    ocols = ["redundant_by", "k_a", "k_b", "n_heads", "overlap", "expected_overlap", "jaccard", "p_hypergeom"]
    orows = [[o["redundant_by"], *(o.get(c) for c in ocols[1:])] for o in v["overlaps"]]
    return [_table(f"views/{slug}", f"{model}: two views — Spearman ρ of |G_ij| against I(X_i; X_j)", [src], cols, rows, v["notes"]),
            _table(f"overlap/{slug}", f"{model}: redundant (GT-FEP) against coupled (G) heads", [src], ocols, orows,
                   f"k = {v['k']} of {v['n_heads']} heads ({v['fraction']:g} of the model); coupled = top k by Σ|G_ij|.")]


def _point(done: dict[str, Any], slug: str) -> tuple[dict | None, dict | None, dict | None, str | None]:
    """The fep and random points at the paper's 20 %: curves if it has that fraction, else the heal
    stage's run at 20 %, else the curves' nearest fraction. (fep point, random point, base, source)."""
    curves, heal = done.get("curves"), done.get("heal")
    if curves:
        pts = curves["result"]["points"]
        primary = curves["result"]["primary"]
        at = [p for p in pts if abs(p["fraction"] - 0.2) < 1e-9]
        if at or not (heal and "at_fraction" in heal["result"]):
            f = 0.2 if at else min({p["fraction"] for p in pts}, key=lambda x: abs(x - 0.2))
            fep = next((p for p in pts if p["criterion"] == primary and p["fraction"] == f), None)
            rnd = next((p for p in pts if p["criterion"] == "random" and p["fraction"] == f), None)
            return fep and {**fep, "criterion": primary}, rnd, curves["result"]["base"], curves["src"]
    if heal and "at_fraction" in heal["result"]:
        h = heal["result"]
        return {**h["at_fraction"], "fraction": h["fraction"], "criterion": h["criterion"]}, None, h["base"], heal["src"]
    return None, None, None, None


def claims_table(entries: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    cols = ["claim", "model", "paper", "ours", "low", "high", "sd", "n", "fraction", "what", "source"]
    rows, sources = [], []
    for e in entries:
        done, model = e["done"], e["model"]
        if "fep" in done:
            f, src = done["fep"]["result"], done["fep"]["src"]
            sources.append(src)
            pooled = f["pooled"]
            rows += [["triples < 0", model, CLAIMS["triples"], pooled["frac_negative"], pooled["wilson_low"], pooled["wilson_high"],
                      None, pooled["n"], None, "share of triple dividends < 0, pooled over layers (Wilson 95 %)", src],
                     ["triples < 0", model, CLAIMS["triples"], f["layers_majority_negative_and_median_below_0"], None, None, None,
                      f["n_layers"], None, "layers with most triples < 0 and the median < 0 (of n layers)", src],
                     ["triples < 0", model, CLAIMS["triples"], pooled["wilcoxon_p_less"], None, None, None, pooled["n"], None,
                      "Wilcoxon signed-rank p, pooled, one-sided (H1: median < 0)", src]]
        fep, rnd, base, src = _point(done, e["slug"])
        if fep is None:
            continue
        sources.append(src)
        fr, crit = fep["fraction"], fep["criterion"]
        seq = base.get("flops_seq_len")
        rows += [["FLOPs", model, CLAIMS["flops"], fep.get("flops_whole_analytic"), None, None, None, None, fr,
                  f"reduction, {WHOLE} of {seq} tokens; {crit} pruning", src],
                 ["FLOPs", model, CLAIMS["flops"], fep.get("flops_attention_analytic"), None, None, None, None, fr,
                  f"reduction, attention blocks only (QKV/O, QKᵀ, AV), analytic, {seq} tokens; {crit} pruning", src],
                 ["FLOPs", model, CLAIMS["flops"], fep.get("flops_whole_measured"), None, None, None, None, fr,
                  f"reduction, whole model counted by FlopCounterMode on 1 × {seq} tokens; {crit} pruning", src],
                 ["throughput", model, CLAIMS["throughput"], fep.get("measured_speedup"), fep.get("speedup_paired_min"),
                  fep.get("speedup_paired_max"), None, None, fr, "measured forward speed-up (×), range of the paired rounds", src],
                 ["throughput", model, CLAIMS["throughput"], fep.get("flop_implied_speedup"), None, None, None, None, fr,
                  "FLOP-implied speed-up (×): whole-model analytic FLOPs before / after", src]]
        ppl_set = next((s for s in ("gsm8k", "wikitext2") if fep.get(f"ppl_{s}") is not None), None)
        if ppl_set:
            kind = base["perplexity"].get(ppl_set, {}).get("kind")
            r_ppl = (rnd or {}).get(f"ppl_{ppl_set}") or {}
            rows += [["perplexity", model, CLAIMS["ppl"], base["perplexity"][ppl_set].get("ppl"), None, None, None, None, None,
                      f"unpruned, {ppl_set} {kind}", src],
                     ["perplexity", model, CLAIMS["ppl"], fep.get(f"ppl_{ppl_set}"), None, None, None, None, fr,
                      f"{crit}-pruned, {ppl_set} {kind}", src],
                     ["perplexity", model, CLAIMS["ppl"], fep.get(f"ppl_{ppl_set}_change"), None, None, None, None, fr,
                      "relative change against the unpruned model", src]]
            if r_ppl.get("mean") is not None:
                rows.append(["perplexity", model, CLAIMS["ppl"], r_ppl["mean"], r_ppl.get("min"), r_ppl.get("max"), r_ppl.get("sd"),
                             r_ppl.get("n"), fr, "random pruning at the same budget: mean (min–max, sd over seeds)", src])
    return _table("claims", "The paper's claims beside ours", sorted(set(sources)), cols, rows,
                  f"The paper reports GPT-2 only; ours are the models of this run, at the fraction shown (20 % where a stage "
                  f"measured it, else the nearest). FLOPs rows say what they count: the paper does not say, and −18 % matches "
                  f"neither the whole-model nor the attention-only count of GPT-2 (about −5 % and −20 %). The fep rows come from "
                  f"one draw of the text (seed {seed}); random shows its spread over seeds, the speed-up the range of its paired rounds.")


# ------------------------------------------------------------------ figures
def _plot_views(pairs: dict[str, Any], model: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
    for i, (layer, d) in enumerate(sorted(pairs["layers"].items(), key=lambda kv: int(kv[0]))):
        ax.scatter(d["abs_G"], d["mi_bits"], s=12, color=plt.get_cmap("viridis")(i / max(1, len(pairs["layers"]) - 1)),
                   label=f"layer {layer}" if len(pairs["layers"]) <= 8 else None)
    ax.set_xlabel("|G_ij| (analyze: ω ⊙ ρ)")
    ax.set_ylabel("I(X_i; X_j), bits (fep pair dividend)")
    ax.set_title(f"{model}: two views of the same head pairs", fontsize=10)
    if len(pairs["layers"]) <= 8:
        ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def _finished(store: StageStore, e: dict[str, Any]) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    done, missing, skipped = {}, [], {}
    for group, st in e["stages"].items():
        res = store.done(st["name"], st["config"])
        if res is None:
            missing.append(st["name"])
        elif "skipped" in res:
            skipped[st["name"]] = res["skipped"]
        else:
            folder = store.folder(st["name"])
            done[group] = {"result": res, "folder": folder, "src": str((folder / RECORD).relative_to(store.root))}
    return done, missing, skipped


def write_report(store: StageStore, entries: list[dict[str, Any]], cfg: Any, preset: Any) -> dict[str, Any]:
    """Build every table from the finished stages; write report.{json,md,html} and the figures into OUT."""
    from headgame.io import write_json_atomic

    root = store.root
    tables, figures, missing, skipped = [], [], [], {}
    doc = Doc(f"GT-FEP reproduction ({preset.name} preset)")
    for e in entries:
        done, miss, skip = _finished(store, e)
        e["done"] = done
        missing += miss
        skipped.update(skip)
        slug, model = e["slug"], e["model"]
        mine = []
        if "fep" in done:
            mine.append(triple_table(slug, done["fep"]["src"], done["fep"]["result"]))
            if (done["fep"]["folder"] / "triples_by_layer.png").is_file():
                figures.append((f"{slug}_triples_by_layer.png", done["fep"]["folder"] / "triples_by_layer.png",
                                f"{model}: share of triple dividends < 0 per layer (95 % bootstrap interval) and their mean"))
        if "curves" in done:
            mine.append(curve_table(slug, done["curves"]["src"], done["curves"]["result"], model))
            if (done["curves"]["folder"] / "curves.png").is_file():
                figures.append((f"{slug}_curves.png", done["curves"]["folder"] / "curves.png",
                                f"{model}: perplexity against the share of heads pruned and against the measured speed-up"))
        if "heal" in done:
            mine.append(heal_table(slug, done["heal"]["src"], done["heal"]["result"], model))
        if "beyond" in done:
            mine += view_tables(slug, done["beyond"]["src"], done["beyond"]["result"], model)
            pairs = done["beyond"]["folder"] / "pairs.json"
            if pairs.is_file():
                figures.append((f"{slug}_views.png", _plot_views(json.loads(pairs.read_text()), model),
                                f"{model}: |G_ij| against I(X_i; X_j) for every head pair i < j, coloured by layer"))
        tables += [{**t, "model": model} for t in mine]
    tables.append({**claims_table(entries, cfg.seed), "model": None})
    report = {
        "format": FORMAT, "preset": preset.describe(), "config": cfg.to_dict(), "models": [e["model"] for e in entries],
        "slugs": {e["model"]: e["slug"] for e in entries},
        "finished": sorted(t for e in entries for t in (e["stages"][g]["name"] for g in e["done"])),
        "missing": missing, "skipped": skipped, "paper_claims": CLAIMS, "tables": tables,
        "figures": [{"file": name, "caption": cap, "source": str(src.relative_to(root)) if isinstance(src, Path) else
                     f"drawn from {name.rsplit('_', 1)[0]}'s beyond stage pairs.json"} for name, src, cap in figures],
    }
    write_json_atomic(root / "report.json", report)
    _document(doc, report, figures)
    doc.write(root)
    return report


def _document(doc: Doc, r: dict[str, Any], figures: list) -> None:
    p = r["preset"]
    doc.p(f"Models: {', '.join(r['models'])}. Preset {p['name']}: fractions {', '.join(f'{f:g}' for f in p['fractions'])}; criteria "
          f"{', '.join(p['criteria'])}; random over {p['random_seeds']} seeds; {p['fep_tokens']:,} symbol tokens at seq "
          f"{p['seq_len']}; {p['ppl_tokens']:,} perplexity tokens per set; {p['heal_tokens']:,} healing tokens; seed "
          f"{r['config']['seed']}. Why this budget: {p['why']}.")
    if r["missing"]:
        doc.p(f"Not finished (or not run) with these settings: {', '.join(r['missing'])}. Rerun with --stages naming their "
              "groups (or all) to fill them in.")
    for name, reason in r["skipped"].items():
        doc.p(f"{name}: skipped, {reason}.")
    figs = {name: (src, cap) for name, src, cap in figures}
    by_model: dict[Any, list[dict]] = {m: [] for m in r["models"]}
    for t in r["tables"]:
        by_model.setdefault(t["model"], []).append(t)
    for model, ts in by_model.items():
        doc.h(model if model else "Claims")
        for t in ts:
            doc.h(t["title"], 3)
            doc.table(t["columns"], t["rows"], f"{t['note']} Source: {', '.join(t['sources'])}.")
        slug = r["slugs"].get(model, "")
        for name in (f"{slug}_triples_by_layer.png", f"{slug}_curves.png", f"{slug}_views.png"):
            if name in figs:
                src, cap = figs[name]
                doc.figure(name, src.read_bytes() if isinstance(src, Path) else src, cap)
    doc.h("Sources")
    doc.p("Every number in a table is read from the stage files named under it (report.json: tables[].sources); "
          "the paper's values are quoted from its abstract.")
