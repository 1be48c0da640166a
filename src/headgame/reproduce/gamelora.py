"""``headgame reproduce game-lora``: the stages behind the paper's Table 1, its ablations and its
analyses, each a resumable stage of :mod:`headgame.reproduce.stages`.

One model stage = train it (``headgame train``), evaluate it on the eleven tasks with the same
items as every other model (``headgame eval``), and analyse it at the design layer on one fixed
held-out text (``headgame analyze``); with ``checkpoints`` > 0 the intermediate checkpoints are
evaluated and analysed too (extra points of the Γ regression). The adapters live in the work
folder and are deleted once the stage's small JSON results exist.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from headgame.errors import HeadgameError
from headgame.reproduce.presets import GameLoraPreset
from headgame.reproduce.stages import StageStore

STAGE_GROUPS = ("pretrained", "main", "ablations", "report")
"""What ``--stages`` picks from for game-lora (default: all)."""


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study: its stage name, role and the train settings that differ."""

    name: str
    role: str  # "pretrained", "main" or "ablation"
    method: str | None  # None: the pretrained model, no training
    seed: int
    ablation: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return f"models/{self.name}"


def ablation_overrides(name: str, design: int, n_layers: int) -> dict[str, Any]:
    """The TrainConfig fields of each ablation (the GAME-LoRA specification §8; ours where it is silent)."""
    step = max(1, round(3 * n_layers / 24))  # the spec's {16, 19, 22} around 19 of 24 layers
    ring = sorted({min(n_layers - 1, max(0, design + d)) for d in (-step, 0, step)})
    other = design - step if design - step >= 0 else min(n_layers - 1, design + step)
    table = {
        "no-ldb": {"no_ldb": True},
        "no-abt": {"no_abt": True},
        "uniform-weights": {"pair_weights": "uniform"},
        "inverse-weights": {"pair_weights": "inverse"},
        "zero-target": {"bt_target": "zero"},
        # Barlow-Twins at the design layer, the barrier one step below it: G and the tax disagree
        "misaligned-layers": {"design_layers": [design], "abt_layers": [design], "ldb_layers": [other]},
        "multi-layer": {"design_layers": ring},
        "sum-arbitration": {"arbitration": "sum"},
        "constant-schedule": {"schedule": "constant"},
    }
    if name not in table:
        raise HeadgameError(f"unknown ablation {name!r}; valid: {', '.join(table)}")
    return table[name]


def plan(p: GameLoraPreset, groups: tuple[str, ...], design: int, n_layers: int, pretrained: bool) -> list[ModelSpec]:
    """Every model the chosen stage groups need, in the order they run (seed-major main table)."""
    specs: list[ModelSpec] = []
    if pretrained and "pretrained" in groups:
        specs.append(ModelSpec("pretrained", "pretrained", None, p.seeds[0]))
    if "main" in groups:
        for seed in p.seeds:
            for method in ("ce", "game-lora"):
                specs.append(ModelSpec(f"{method}-seed{seed}", "main", method, seed))
    if "ablations" in groups:
        for ab in p.ablations:
            specs.append(ModelSpec(f"ablation-{ab}-seed{p.seeds[0]}", "ablation", "game-lora", p.seeds[0], ab,
                                   ablation_overrides(ab, design, n_layers)))
    return specs


@dataclass
class Context:
    """What every model stage shares: the model, preset, data and where the stages go."""

    model: str
    model_hash: str | None
    preset: GameLoraPreset
    design: int
    n_layers: int
    seed: int
    data_dir: str | None
    device: str
    dtype: str
    train_data: str
    analyze_data: str
    progress: bool = False
    say: Callable[[str], None] = print

    def steps(self) -> int:
        """Optimizer steps the train budget gives (as headgame train packs it: 5 % held out)."""
        p = self.preset
        blocks = p.train_tokens // p.seq_len
        return max(1, int(blocks * 0.95) // (p.batch_size * p.grad_accum))


def train_fields(ctx: Context, spec: ModelSpec) -> dict[str, Any]:
    p = ctx.preset
    fields: dict[str, Any] = dict(
        model=ctx.model, method=spec.method, seed=spec.seed, data=ctx.train_data, data_dir=ctx.data_dir,
        max_tokens=p.train_tokens, seq_len=p.seq_len, batch_size=p.batch_size, grad_accum=p.grad_accum, lr=p.lr,
        design_layers=[ctx.design], dtype=ctx.dtype,
    )
    fields.update(spec.overrides)
    return fields


def eval_calls(ctx: Context) -> list[dict[str, Any]]:
    """The eval runs of one model: the tasks at the preset's items (a prefix of the spec's seeded
    N = 1024 draw, so every preset's items are a subset of the gpu preset's) and WikiText-2, whose
    documents are long, at its own count."""
    p = ctx.preset
    common = dict(n_items=1024, seed=ctx.seed, data_dir=ctx.data_dir, mmlu_shots=p.mmlu_shots, gen_batch=p.gen_batch, dtype=ctx.dtype)
    rest = [t for t in p.tasks if t != "wikitext"]
    calls = [dict(tasks=",".join(rest), limit=p.n_items, **common)] if rest else []
    if "wikitext" in p.tasks:
        calls.append(dict(tasks="wikitext", limit=p.wikitext_docs, **common))
    return calls


def poa_fields(ctx: Context) -> dict[str, Any]:
    p = ctx.preset
    return dict(data=ctx.analyze_data, batches=p.poa_batches, batch_size=p.poa_batch_size, seq_len=p.poa_seq_len,
                lanczos_steps=p.poa_lanczos_steps, probes=1, iters=20, seed=ctx.seed, layer=ctx.design)


def measure_poa(ctx: Context, adapter: Path | None, gamma: float) -> dict[str, Any]:
    """L and α of the design layer (Hessian of the mean CE loss in its head outputs, on the first
    held-out blocks) and the PoA bound they give with the measured Γ (docs/formulas.md#poa-bound)."""
    import torch

    from headgame.data import iter_batches, load_blocks
    from headgame.game.poa import poa_bound
    from headgame.measure.curvature import layer_curvature
    from headgame.models.adapters import attach_adapter
    from headgame.models.load import load_model
    from headgame.models.objective import Objective

    f = poa_fields(ctx)
    t0 = time.perf_counter()
    loaded = load_model(ctx.model, dtype=ctx.dtype)
    if adapter is not None:
        loaded = attach_adapter(loaded, str(adapter), merge=True)
    model, tok, layout = loaded
    blocks = load_blocks(f["data"], tok, seq_len=f["seq_len"], max_tokens=f["batches"] * f["batch_size"] * f["seq_len"],
                         data_dir=ctx.data_dir, encoder=not layout.causal)
    batches = list(iter_batches(blocks, f["batch_size"]))[: f["batches"]]
    with torch.enable_grad():
        curv = layer_curvature(model, layout, Objective(model, layout, tok, seed=ctx.seed), batches, [f["layer"]],
                               iters=f["iters"], lanczos_steps=f["lanczos_steps"], probes=f["probes"], seed=f["seed"])[f["layer"]]
    alpha = min(curv["alpha_q05"], curv["L"])
    bound = poa_bound(gamma, curv["L"], alpha)
    keep = ("L", "L_converged", "lambda_min", "lambda_min_converged", "alpha_q05", "n_variables", "n_targets", "hvps")
    return {"gamma": gamma, **{k: curv[k] for k in keep}, "alpha": alpha,
            **{k: bound[k] for k in ("kappa", "kappa_gamma2", "finite", "bound", "denominator_factor", "reason")},
            "seconds": round(time.perf_counter() - t0, 3)}


def analyze_fields(ctx: Context) -> dict[str, Any]:
    p = ctx.preset
    return dict(data=ctx.analyze_data, data_dir=ctx.data_dir, max_tokens=p.analyze_tokens, seq_len=p.analyze_seq_len,
                layers=str(ctx.design), seed=ctx.seed, dtype=ctx.dtype)


def stage_config(ctx: Context, spec: ModelSpec) -> dict[str, Any]:
    """Everything a model stage's results depend on (its key)."""
    return {
        "kind": "game-lora-model", "model": ctx.model, "model_hash": ctx.model_hash, "role": spec.role,
        "ablation": spec.ablation, "train": train_fields(ctx, spec) if spec.method else None,
        "eval": eval_calls(ctx), "analyze": analyze_fields(ctx), "poa": poa_fields(ctx), "checkpoints": ctx.preset.checkpoints if spec.method else 0,
    }


def _compact_eval(data: dict[str, Any]) -> dict[str, Any]:
    """eval.json without the prompts: per item only what the statistics read (id, num, den, and
    the model's answer where the task has one), so the committed file stays small."""
    keep = ("id", "num", "den", "pred", "verdict", "gold")
    out = {k: v for k, v in data.items() if k != "tasks"}
    out["tasks"] = {}
    for name, t in data["tasks"].items():
        items = []
        for it in t.get("items", []):
            small = {k: it[k] for k in keep if k in it}
            if "pred" not in small and it.get("lls"):  # TruthfulQA MC2: the most likely option is the answer
                small["answer"] = max(range(len(it["lls"])), key=lambda i: (it["lls"][i], -i))
            items.append(small)
        out["tasks"][name] = {**{k: v for k, v in t.items() if k != "items"}, "items": items}
    return out


def _eval_and_analyze(ctx: Context, adapter: Path | None, folder: Path, work: Path) -> dict[str, Any]:
    """Evaluate and analyse one model (``adapter`` merged into the base, or the base itself);
    each writes its small JSON into ``folder`` and is skipped when that file is there."""
    import headgame

    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    adapter_fields = {"adapter": str(adapter), "merge_adapter": True} if adapter else {}
    eval_json = folder / "eval.json"
    if not eval_json.exists():
        merged: dict[str, Any] | None = None
        for k, fields in enumerate(eval_calls(ctx)):
            res = headgame.evaluate(model=ctx.model, out=str(work / f"eval-{k}"), device=ctx.device, progress=ctx.progress,
                               **adapter_fields, **fields)
            data = _compact_eval(json.loads((Path(res.config.out) / "eval.json").read_text()))
            if merged is None:
                merged = data
            else:
                merged["tasks"].update(data["tasks"])
        _write(eval_json, merged or {"tasks": {}})
        out["eval_seconds"] = round(time.perf_counter() - t0, 3)
    t1 = time.perf_counter()
    analysis_json = folder / "analysis.json"
    if not analysis_json.exists():
        res = headgame.analyze(model=ctx.model, out=str(work / "analyze"), device=ctx.device, progress=ctx.progress,
                               **adapter_fields, **analyze_fields(ctx))
        _write(analysis_json, res.data)
        out["analyze_seconds"] = round(time.perf_counter() - t1, 3)
    return out


def _write(path: Path, data: dict[str, Any]) -> None:
    from headgame.io import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)


def _needs_adapter(folder: Path, checkpoints: int) -> bool:
    """Whether some measurement of a model stage still needs its adapter (or its checkpoints')."""
    if not all((folder / f).exists() for f in ("eval.json", "analysis.json", "poa.json")):
        return True
    done = list((folder / "checkpoints").glob("step-*/analysis.json")) if (folder / "checkpoints").is_dir() else []
    return len(done) < checkpoints


def summarise_model(folder: Path) -> dict[str, Any]:
    """Scores per task, Γ and the coalition test at the design layer, from a model folder's files."""
    ev = json.loads((folder / "eval.json").read_text())
    an = json.loads((folder / "analysis.json").read_text())
    layer = an["layers"][0]
    return {
        "scores": {name: t["score"] for name, t in ev["tasks"].items()},
        "gamma": layer["gamma"], "layer": layer["layer"],
        "selective_coordination": layer.get("selective_coordination"),
        "coalitions": {k: layer["coalitions"].get(k) for k in ("k", "sizes") if k in (layer.get("coalitions") or {})},
    }


def run_model(store: StageStore, ctx: Context, spec: ModelSpec) -> dict[str, Any]:
    """The stage of one model: train (resumable), evaluate, analyse, then its checkpoints."""

    def fn(folder: Path, work: Path) -> dict[str, Any]:
        import headgame

        result: dict[str, Any] = {"name": spec.name, "role": spec.role, "method": spec.method, "seed": spec.seed,
                                  "ablation": spec.ablation}
        adapter = None
        if spec.method:
            train_dir = work / "train"
            summary_file = folder / "train_summary.json"
            adapter = train_dir / "adapter"
            if summary_file.exists() and not adapter.is_dir() and _needs_adapter(folder, ctx.preset.checkpoints):
                # the stage's small files came without its work folder (another machine): train again,
                # with the same seed and data, and measure what is missing
                ctx.say(f"{spec.stage}: its adapter is not here and some measurements are missing; training it again")
                summary_file.unlink()
            if not summary_file.exists():
                t0 = time.perf_counter()
                steps = ctx.steps()
                every = max(1, steps // (ctx.preset.checkpoints + 1)) if ctx.preset.checkpoints else max(1, steps // 4)
                resume = str(train_dir) if (train_dir / "checkpoints").is_dir() and any((train_dir / "checkpoints").iterdir()) else None
                fields = train_fields(ctx, spec)
                res = headgame.train(out=str(train_dir), resume=resume, device=ctx.device, progress=ctx.progress, val_every=0,
                                     checkpoint_every=every, keep_checkpoints=ctx.preset.checkpoints + 2, **fields)
                seconds = time.perf_counter() - t0
                summary = dict(res.data)
                tokens = int(summary.get("steps") or 0) * ctx.preset.batch_size * ctx.preset.grad_accum * ctx.preset.seq_len
                summary.update({"seconds": round(seconds, 3), "tokens": tokens,
                                "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 and not resume else None})
                shutil.copy2(train_dir / "metrics.jsonl", folder / "metrics.jsonl")
                _write(summary_file, summary)
            summary = json.loads(summary_file.read_text())
            result["train"] = {k: summary.get(k) for k in ("steps", "tokens", "seconds", "tokens_per_s", "final_val_loss",
                                                          "design_layers", "abt_layers", "ldb_layers")}
        result["cost"] = _eval_and_analyze(ctx, adapter, folder, work)
        result.update(summarise_model(folder))
        poa_json = folder / "poa.json"
        if not poa_json.exists():
            _write(poa_json, measure_poa(ctx, adapter, result["gamma"]))
        result["poa"] = json.loads(poa_json.read_text())
        result["cost"]["poa_seconds"] = result["poa"]["seconds"]
        points = []
        if spec.method and ctx.preset.checkpoints:
            ckpts = sorted((work / "train" / "checkpoints").glob("step-*")) if (work / "train" / "checkpoints").is_dir() else []
            final = result["train"]["steps"]
            chosen = [c for c in ckpts if int(c.name.split("-")[1]) < final][: ctx.preset.checkpoints]
            for c in chosen:
                _eval_and_analyze(ctx, c / "adapter", folder / "checkpoints" / c.name, work / "checkpoints" / c.name)
            for sub in sorted((folder / "checkpoints").glob("step-*")) if (folder / "checkpoints").is_dir() else []:
                if (sub / "analysis.json").exists():
                    points.append({"step": int(sub.name.split("-")[1]), **summarise_model(sub)})
        result["checkpoints"] = points
        return result

    return store.run(spec.stage, stage_config(ctx, spec), fn)


def make_context(cfg: Any, p: GameLoraPreset, *, progress: bool = False, say: Callable[[str], None] = print) -> Context:
    """The model's layer count, design layer and weights hash, read once (the stages' keys hold the hash)."""
    from headgame.models.load import load_model
    from headgame.train.config import default_design_layer

    model = p.model or cfg.model
    loaded = load_model(model, trust_remote_code=cfg.trust_remote_code)
    if not loaded.layout.causal:
        raise HeadgameError(f"--model {model} is not a causal language model; game-lora's benchmarks need one such as smollm2-135m")
    n_layers = loaded.layout.n_layers
    ctx = Context(model=model, model_hash=loaded.info.get("hash"), preset=p, design=default_design_layer(n_layers),
                  n_layers=n_layers, seed=cfg.seed, data_dir=cfg.data_dir, device=cfg.device, dtype=cfg.dtype,
                  train_data=p.train_data, analyze_data=p.analyze_data, progress=progress, say=say)
    del loaded
    return ctx


def run_gamelora(cfg: Any, store: StageStore, *, progress: bool = False, say: Callable[[str], None] = print,
                 console: Any = None) -> dict[str, Any]:
    """Every chosen stage of the game-lora reproduction, then the report; returns report.json's dict."""
    from headgame.reproduce.gamelora_report import write_report
    from headgame.reproduce.presets import preset
    from headgame.runs import progress_bar

    p = preset("game-lora", cfg.preset)
    groups = cfg.stage_list()
    ctx = make_context(cfg, p, say=say)
    specs = plan(p, groups, ctx.design, ctx.n_layers, p.pretrained)
    every = plan(p, STAGE_GROUPS, ctx.design, ctx.n_layers, p.pretrained)
    say(f"game-lora on {ctx.model} ({cfg.preset} preset): {len(specs)} model stage(s) at design layer {ctx.design} of "
        f"{ctx.n_layers}; {sum(store.done(s.stage, stage_config(ctx, s)) is not None for s in specs)} already finished")
    with progress_bar(progress, console, eta=False) as bar:
        task = bar.add_task("models", total=len(specs))
        for spec in specs:
            bar.update(task, description=spec.name)
            t0 = time.perf_counter()
            reused = store.done(spec.stage, stage_config(ctx, spec)) is not None
            run_model(store, ctx, spec)
            say(f"{spec.stage}: {'reused' if reused else f'finished in {time.perf_counter() - t0:.0f} s'}")
            bar.advance(task)
    if "report" not in groups:
        return {}
    return write_report(store, ctx, finished(store, ctx, every), every, cfg)


def finished(store: StageStore, ctx: Context, specs: list[ModelSpec]) -> dict[str, dict[str, Any]]:
    """The model stages that finished with this run's settings: name -> {spec, result, folder, eval}."""
    out = {}
    for spec in specs:
        res = store.done(spec.stage, stage_config(ctx, spec))
        if res is None:
            continue
        folder = store.folder(spec.stage)
        out[spec.name] = {"spec": spec, "result": res, "folder": folder,
                          "eval": json.loads((folder / "eval.json").read_text())}
    return out
