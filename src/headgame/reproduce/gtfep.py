"""``headgame reproduce gt-fep``: the GT-FEP paper's analysis and pruning claims on every model of
a preset, each model × stage group one resumable stage of :mod:`headgame.reproduce.stages`.

* ``fep``: ``headgame fep`` of every layer; the sign of the triple dividends per layer and pooled
  (share below 0 with Wilson and bootstrap 95 % intervals, mean, median, Wilcoxon signed-rank).
* ``curves``: ``headgame prune`` at the preset's fractions for every criterion (random over its
  seeds), no saved model: perplexity, FLOPs and measured speed-up per point.
* ``heal``: the fep-pruned model at 20 % and the unpruned control, each LoRA-healed on the same
  tokens (skipped, with the reason recorded, for encoders or a preset without healing tokens).
* ``beyond``: two views of the same heads, GAME-LoRA's coupling G (``headgame analyze``) against
  GT-FEP's pairwise mutual information (views.py); it needs the fep stage and runs it first.
* ``report``: report.md / .html / .json and figures in OUT from the finished stages (gtfep_report.py).

Groups run one after the other (the cheap dividends of every model first). A stage's config holds
what its result depends on but the device and where the data folder lies (whether one was given,
and the text it resolved to, are in it), so a run continues on another machine.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headgame.errors import HeadgameError
from headgame.reproduce.presets import GtFepPreset, preset
from headgame.reproduce.stages import StageStore, stage_key
from headgame.reproduce.views import fep_summary, heal_summary, prune_points, two_views

if TYPE_CHECKING:
    from headgame.reproduce.config import ReproduceConfig

STAGE_GROUPS = ("fep", "curves", "heal", "beyond", "report")
"""What ``--stages`` picks from for gt-fep (default: all)."""
MODEL_GROUPS = STAGE_GROUPS[:-1]
PAPER_FRACTION = 0.2
"""The paper's budget: 20 % of the heads (healing and the two-views overlap use it too)."""
SMALL = 1_000_000
"""Bytes: a command's JSON above this is copied without its bulky fields."""
BULKY = ("coalitions", "omega", "rho", "redundancy", "co_membership")
FEP_DEFAULTS = {"bootstrap": 200, "mcmc_steps": 0}  # the coalition chain is not part of any claim
PRUNE_DEFAULTS = {"mlm_proxy": True}  # an encoder without an MLM head gets the labelled proxy, not nothing
FEP_FILES = ("head_scores.csv", "layer_summary.csv", "triples_by_layer.png", "dividends_hist.png", "config.yaml")
PRUNE_FILES = ("curves.json", "curves.png", "pruning_table.md", "head_scores.csv", "config.yaml")


@dataclass(frozen=True)
class ModelInfo:
    """One model of the study: its spec, folder name, weights hash and shape."""

    spec: str
    slug: str
    hash: str | None
    causal: bool
    n_heads: int


@dataclass
class Context:
    cfg: Any  # ReproduceConfig
    preset: GtFepPreset
    source: str  # the text fep and prune resolve 'auto' to: gsm8k or default
    progress: bool = False
    say: Callable[[str], None] = print


def slug(spec: str) -> str:
    """A model spec as one folder name: tiny-llama, org_name for a hub id or a path."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("._")
    if not s:
        raise HeadgameError(f"model {spec!r} gives no usable folder name; pass a model name such as smollm2-135m")
    return s


def model_specs(cfg: Any, p: GtFepPreset) -> list[str]:
    """--models, else the preset's models; duplicates and empty names refused."""
    specs = [m.strip() for m in cfg.models.split(",")] if cfg.models else list(p.models)
    if not specs or any(not m for m in specs):
        raise HeadgameError(f"--models {cfg.models!r} has an empty name; pass comma-separated models, e.g. smollm2-135m,minilm-l6")
    slugs = [slug(m) for m in specs]
    dup = sorted({s for s in slugs if slugs.count(s) > 1})
    if dup:
        raise HeadgameError(f"--models names {', '.join(dup)} more than once; list each model once")
    return specs


def describe_model(spec: str, cfg: Any) -> ModelInfo:
    """Load ``spec`` once for its weights hash (part of every stage's key) and shape."""
    from headgame.models.load import load_model

    loaded = load_model(spec, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    if loaded.info.get("kind") == "pruned":
        raise HeadgameError(f"{spec} is a pruned model; reproduce gt-fep on the original model (the dividends need every head)")
    lay = loaded.layout
    return ModelInfo(spec, slug(spec), loaded.info.get("hash"), bool(lay.causal), lay.n_heads)


# ------------------------------------------------------------------ what each stage runs with
def _common(ctx: Context) -> dict[str, Any]:
    c = ctx.cfg
    return {"data_dir": c.data_dir, "seed": c.seed, "dtype": c.dtype, "trust_remote_code": c.trust_remote_code}


def fep_fields(ctx: Context) -> dict[str, Any]:
    p = ctx.preset
    return {**_common(ctx), "data": "auto", "max_tokens": p.fep_tokens, "seq_len": p.seq_len, **FEP_DEFAULTS, **p.extra.get("fep", {})}


def _prune_common(ctx: Context) -> dict[str, Any]:
    p = ctx.preset
    return {**_common(ctx), "score_data": "auto", "score_tokens": p.fep_tokens, "seq_len": p.seq_len,
            "ppl_max_tokens": p.ppl_tokens, "save_model": False, **PRUNE_DEFAULTS, **p.extra.get("prune", {})}


def curve_fields(ctx: Context) -> dict[str, Any]:
    p = ctx.preset
    fractions = sorted(p.fractions)
    primary = PAPER_FRACTION if PAPER_FRACTION in fractions else fractions[0]
    return {**_prune_common(ctx), "criterion": p.criteria[0], "criteria": ",".join(p.criteria), "compare_criteria": True,
            "fraction": primary, "fractions": ",".join(f"{f:g}" for f in fractions), "random_seeds": p.random_seeds}


def heal_fields(ctx: Context) -> dict[str, Any]:
    p = ctx.preset
    return {**_prune_common(ctx), "criterion": p.criteria[0], "fraction": PAPER_FRACTION, "heal_tokens": p.heal_tokens,
            "compare_criteria": False}


def analyze_fields(ctx: Context) -> dict[str, Any]:
    p = ctx.preset
    return {**_common(ctx), "max_tokens": p.fep_tokens, "seq_len": p.seq_len, "layers": "all", "redundancy": False,
            **p.extra.get("analyze", {})}


def stage_config(ctx: Context, m: ModelInfo, group: str, fields: dict[str, Any], **more: Any) -> dict[str, Any]:
    """The key of a stage: the model and its hash, the text and every setting of the command."""
    given = {k: v for k, v in fields.items() if k not in ("data_dir", "data")}
    return {"kind": f"gt-fep/{group}", "model": m.spec, "model_hash": m.hash, "data_source": ctx.source,
            "data_dir_given": ctx.cfg.data_dir is not None, "fields": given, **more}


def stage_name(m: ModelInfo, group: str) -> str:
    return f"gt-fep/{m.slug}/{group}"


def heal_skip(ctx: Context, m: ModelInfo) -> str | None:
    if ctx.preset.heal_tokens == 0:
        return f"the {ctx.preset.name} preset heals on 0 tokens"
    if not m.causal:
        return f"{m.spec} is an encoder: healing fine-tunes with the causal LM loss, which it does not have"
    return None


def plan(ctx: Context, m: ModelInfo) -> dict[str, dict[str, Any]]:
    """Every stage of model ``m``: group -> {name, config} (whether asked for or not, so that the
    report finds the stages of earlier runs with these settings)."""
    fep_cfg = stage_config(ctx, m, "fep", fep_fields(ctx))
    out = {"fep": fep_cfg,
           "curves": stage_config(ctx, m, "curves", curve_fields(ctx)),
           "heal": stage_config(ctx, m, "heal", heal_fields(ctx), skipped=heal_skip(ctx, m)),
           "beyond": stage_config(ctx, m, "beyond", analyze_fields(ctx), fep_stage=stage_key(fep_cfg), fraction=PAPER_FRACTION)}
    return {g: {"name": stage_name(m, g), "config": c} for g, c in out.items()}


# ------------------------------------------------------------------ files
def _shrunk(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _shrunk(v) for k, v in obj.items() if k not in BULKY}
    if isinstance(obj, list):
        return [_shrunk(v) for v in obj]
    return obj


def copy_json(src: Path, dst: Path) -> dict[str, Any]:
    """Copy a command's JSON into a stage folder, without its bulky fields when it is large."""
    from headgame.io import write_json_atomic

    data = json.loads(src.read_text())
    if src.stat().st_size > SMALL:
        data = {**_shrunk(data), "reduced": f"copied without {', '.join(BULKY)} (the original was {src.stat().st_size:,} bytes)"}
    write_json_atomic(dst, data)
    return data


def copy_files(src: Path, dst: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def write_low_orders(fep_out: Path, dst: Path) -> None:
    """dividends.csv's pair and triple dividends (with their intervals) and head_scores.csv's fep
    score m_i, one small JSON per layer (the full 2^H table stays behind)."""
    from headgame.io import write_json_atomic

    layers: dict[str, dict[str, list]] = {}
    with open(fep_out / "dividends.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["order"] in ("2", "3"):
                row = [*map(int, r["heads"].split("-")), *(float(r[k]) if r[k] else None for k in ("value", "ci_low", "ci_high"))]
                layers.setdefault(r["layer"], {"pairs": [], "triples": [], "fep": []})["pairs" if r["order"] == "2" else "triples"].append(row)
    with open(fep_out / "head_scores.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            layers.setdefault(r["layer"], {"pairs": [], "triples": [], "fep": []})["fep"].append(float(r["fep"]))
    write_json_atomic(dst, {"columns": "pairs/triples: heads..., value (bits), ci_low, ci_high; fep: m_i per head (bits)",
                            "layers": layers})


def _resume(out: Path, state: str) -> str | None:
    return str(out) if (out / state).exists() else None


# ------------------------------------------------------------------ the stages
def run_fep_stage(store: StageStore, ctx: Context, m: ModelInfo, st: dict[str, Any]) -> dict[str, Any]:
    def fn(folder: Path, work: Path) -> dict[str, Any]:
        import headgame
        from headgame.fep.state import STATE_FILE

        if not (folder / "fep.json").exists():  # fep.json is copied last: its presence means the run finished
            out = work / "fep"
            headgame.fep(model=m.spec, out=str(out), device=ctx.cfg.device, progress=ctx.progress,
                         resume=_resume(out, STATE_FILE), **fep_fields(ctx))
            copy_files(out, folder, FEP_FILES)
            write_low_orders(out, folder / "dividends23.json")
            copy_json(out / "fep.json", folder / "fep.json")
        return fep_result(folder)

    return store.run(st["name"], st["config"], fn)


def fep_result(folder: Path) -> dict[str, Any]:
    fj, low = (json.loads((folder / n).read_text()) for n in ("fep.json", "dividends23.json"))
    return {**fep_summary(fj, low), "files": _files(folder)}


def _prune_stage(store: StageStore, ctx: Context, st: dict[str, Any], m: ModelInfo, fields: dict[str, Any],
                 result: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    def fn(folder: Path, work: Path) -> dict[str, Any]:
        import headgame
        from headgame.prune.state import STATE_FILE

        if not (folder / "pruning.json").exists():
            out = work / "prune"
            headgame.prune(model=m.spec, out=str(out), device=ctx.cfg.device, progress=ctx.progress,
                           resume=_resume(out, STATE_FILE), **fields)
            copy_files(out, folder, PRUNE_FILES)
            copy_json(out / "pruning.json", folder / "pruning.json")
        return result(folder)

    return store.run(st["name"], st["config"], fn)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "stage.json")))


def curves_result(folder: Path) -> dict[str, Any]:
    return {**prune_points(json.loads((folder / "pruning.json").read_text())), "files": _files(folder)}


def heal_result(folder: Path) -> dict[str, Any]:
    return {**heal_summary(json.loads((folder / "pruning.json").read_text())), "files": _files(folder)}


def run_curves_stage(store: StageStore, ctx: Context, m: ModelInfo, st: dict[str, Any]) -> dict[str, Any]:
    return _prune_stage(store, ctx, st, m, curve_fields(ctx), curves_result)


def run_heal_stage(store: StageStore, ctx: Context, m: ModelInfo, st: dict[str, Any]) -> dict[str, Any]:
    reason = st["config"]["skipped"]
    if reason is not None:
        return store.run(st["name"], st["config"], lambda folder, work: {"skipped": reason})
    return _prune_stage(store, ctx, st, m, heal_fields(ctx), heal_result)


def analyze_text(ctx: Context, work: Path) -> str:
    """The text of analyze: the fep run's GSM8K problems (same format and shuffle) as a JSONL, or
    the packaged corpus that fep falls back to."""
    if ctx.source != "gsm8k":
        return ctx.source
    from headgame.data.datadir import data_file
    from headgame.data.texts import GSM8K_TEST, gsm8k_texts, shuffled
    from headgame.io import write_text_atomic

    texts = shuffled(gsm8k_texts(data_file(GSM8K_TEST, ctx.cfg.data_dir), "qa"), ctx.cfg.seed)
    path = work / "gsm8k_qa.jsonl"
    write_text_atomic(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def run_beyond_stage(store: StageStore, ctx: Context, m: ModelInfo, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    st = stages["beyond"]
    if store.done(st["name"], st["config"]) is None and store.done(stages["fep"]["name"], stages["fep"]["config"]) is None:
        ctx.say(f"{st['name']} needs the dividends: running {stages['fep']['name']} first")
        run_fep_stage(store, ctx, m, stages["fep"])
    fep_folder = store.folder(stages["fep"]["name"])

    def fn(folder: Path, work: Path) -> dict[str, Any]:
        import headgame
        from headgame.io import write_json_atomic

        if not (folder / "analysis.json").exists():
            out = work / "analyze"
            resume = (out / ".analyze-state.safetensors").exists()
            res = headgame.analyze(model=m.spec, out=str(out), device=ctx.cfg.device, progress=ctx.progress, resume=resume,
                                   data=analyze_text(ctx, work), **analyze_fields(ctx))
            data = res.data
            keep = {"model": data.get("model"), "data": data.get("data"),
                    "layers": [{k: l.get(k) for k in ("layer", "n_tokens", "G", "gamma")} for l in data["layers"]]}
            write_json_atomic(folder / "analysis.json", keep)
        an = json.loads((folder / "analysis.json").read_text())
        low = json.loads((fep_folder / "dividends23.json").read_text())["layers"]
        g = {str(l["layer"]): l["G"] for l in an["layers"]}
        mi = {}
        for layer, d in low.items():
            mi[layer] = [[0.0] * m.n_heads for _ in range(m.n_heads)]
            for i, j, v, *_ in d["pairs"]:
                mi[layer][i][j] = mi[layer][j][i] = v
        views = two_views(g, mi, {layer: d["fep"] for layer, d in low.items()}, fraction=PAPER_FRACTION)
        tri = [(i, j) for i in range(m.n_heads) for j in range(i + 1, m.n_heads)]
        write_json_atomic(folder / "pairs.json", {"note": "pairs i < j in row-major order", "layers": {
            layer: {"abs_G": [abs(g[layer][i][j]) for i, j in tri], "mi_bits": [mi[layer][i][j] for i, j in tri]} for layer in g if layer in mi}})
        return {"model": m.spec, "views": views, "gamma_by_layer": {str(l["layer"]): l["gamma"] for l in an["layers"]},
                "analyze_tokens": an["layers"][0].get("n_tokens") if an["layers"] else None,
                "fep_stage": stages["fep"]["name"], "files": ["analysis.json", "pairs.json"],
                "notes": "G from headgame analyze on the same text as fep (packed into blocks, where fep scores one problem per "
                         "sequence); I(X_i; X_j) and m_i from the fep stage"}

    return store.run(st["name"], st["config"], fn)


RUNNERS = {"fep": lambda store, ctx, m, stages: run_fep_stage(store, ctx, m, stages["fep"]),
           "curves": lambda store, ctx, m, stages: run_curves_stage(store, ctx, m, stages["curves"]),
           "heal": lambda store, ctx, m, stages: run_heal_stage(store, ctx, m, stages["heal"]),
           "beyond": run_beyond_stage}


def run_gtfep(cfg: ReproduceConfig, store: StageStore, *, progress: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the chosen stage groups for every model (group by group), then the report.

    Returns report.json's dict (only ``run`` without the report group) with ``run``: ``{"out",
    "report" (report.md or None), "stages": [{name, status, seconds}] of this call}``. A stage that
    finished earlier with the same settings is reused; an interrupted one runs again."""
    from headgame.data.texts import resolve_source
    from headgame.reproduce.gtfep_report import write_report

    if getattr(cfg, "paper", None) != "gt-fep":
        raise HeadgameError(f"run_gtfep reproduces gt-fep, not {getattr(cfg, 'paper', None)!r}; pass ReproduceConfig(paper='gt-fep', ...)")
    if cfg.data_dir is not None and not Path(cfg.data_dir).expanduser().is_dir():
        raise HeadgameError(f"--data-dir {cfg.data_dir} is not a folder; pass the shared data folder (it holds gsm8k/test.jsonl)")
    p = preset("gt-fep", cfg.preset)
    groups = cfg.stage_list()
    ctx = Context(cfg, p, resolve_source("auto", cfg.data_dir), progress, say)
    if ctx.source != "gsm8k":
        say("note: no gsm8k/test.jsonl in the data directory; the dividends use the packaged corpus (the paper used GSM8K)")
    models = [describe_model(spec, cfg) for spec in model_specs(cfg, p)]
    plans = {m.spec: plan(ctx, m) for m in models}
    start = len(store.runs)
    for group in MODEL_GROUPS:
        if group not in groups:
            continue
        for m in models:
            name = plans[m.spec][group]["name"]
            reused = store.done(name, plans[m.spec][group]["config"]) is not None
            say(f"{name}: {'finished earlier, reused' if reused else 'running'}")
            RUNNERS[group](store, ctx, m, plans[m.spec])
    run = {"out": str(store.root), "report": None,
           "stages": [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 3)} for r in store.runs[start:]]}
    if "report" not in groups:
        return {"run": run}
    entries = [{"model": m.spec, "slug": m.slug, "stages": plans[m.spec]} for m in models]
    rep = write_report(store, entries, cfg, p)
    run["report"] = str(store.root / "report.md")
    say(f"report: {run['report']} (and report.html, report.json)" + (f"; not finished: {', '.join(rep['missing'])}" if rep["missing"] else ""))
    return {**rep, "run": run}
