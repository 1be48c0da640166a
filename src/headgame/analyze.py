"""``headgame analyze``: the head interaction matrix G of every layer of a real model.

Pipeline (plain functions, DESIGN.md): load the model → pack the corpus into blocks → for each
batch, one forward and one activation-only backward with a :class:`HeadTap` feeding streaming
accumulators (gradient Gram for ρ, output moments for the redundancy statistics) → per layer
ω, ρ, G = ω ⊙ ρ, Γ variants, L_LDB, coalitions, Mann–Whitney, redundancy → JSON + report.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from headgame import __version__
from headgame.config import AnalyzeConfig
from headgame.errors import HeadgameError
from headgame.game.coalitions import find_coalitions, selective_coordination
from headgame.game.coupling import GradientGram, gamma, interaction_matrix, poa_proxy, weight_coupling
from headgame.game.losses import log_det_barrier
from headgame.game.redundancy import OutputMoments, cross_correlation, redundancy_stats
from headgame.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from headgame.models.layout import HeadLayout
from headgame.models.objective import Objective, activation_gradients
from headgame.models.tap import HeadTap
from headgame.system import package_versions  # noqa: F401  (re-exported for callers)

STATE_FILE = ".analyze-state.pt"


class CouplingCollector:
    """The per-batch work of analyze: forward + backward with taps, streaming accumulation.

    Use as a context manager (it freezes the weights and makes activations the only gradient
    target), then call :meth:`step` per batch and :meth:`layer_results` at the end.
    """

    def __init__(self, model, layout: HeadLayout, objective: Objective, layers: list[int], *, redundancy: bool) -> None:
        self.model, self.layout, self.objective, self.layers = model, layout, objective, layers
        self.grams = {l: GradientGram(layout.n_heads, layout.head_dim) for l in layers}
        self.moments = {l: OutputMoments(layout.n_heads, layout.head_dim) for l in layers} if redundancy else {}
        self.n_batches = 0
        self.n_targets = 0
        self._omega: dict[int, torch.Tensor] | None = None
        self.loss_sum = 0.0
        self._scope = activation_gradients(model)
        self._tap = HeadTap(
            model, layout, layers,
            on_grad=lambda l, g: self.grams[l].update(g),
            on_output=(lambda l, o: self.moments[l].update(o)) if redundancy else None,
        )

    def __enter__(self) -> "CouplingCollector":
        self._scope.__enter__()
        try:
            self._tap.__enter__()
        except BaseException:
            self._scope.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._tap.__exit__(*exc)
        self._scope.__exit__(*exc)
        return False

    def step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> float:
        """One batch: forward, loss, backward (the hooks accumulate). Returns the mean loss."""
        self._tap.set_mask(attention_mask)
        out = self.objective(input_ids, attention_mask)
        if not torch.isfinite(out.loss):
            raise HeadgameError(
                f"non-finite activations at batch {self.n_batches} (loss = {out.loss.item()}); "
                "run in --dtype float32 or check the model weights"
            )
        out.loss.backward()
        self.n_batches += 1
        self.n_targets += out.n_targets
        loss = out.loss.item()
        self.loss_sum += loss
        return loss / max(out.n_targets, 1)

    def running_gamma(self) -> float:
        """Mean Γ over layers from the statistics so far (for the progress bar)."""
        if self._omega is None:  # the weights are frozen during analyze: ω is computed once
            with torch.no_grad():
                self._omega = {l: weight_coupling(self.layout.head_slices(self.model, l).detach().double()) for l in self.layers}
        vals = [gamma(interaction_matrix(self._omega[l], self.grams[l].rho()))["gamma"] for l in self.layers if self.grams[l].n_tokens]
        return sum(vals) / len(vals) if vals else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_batches": self.n_batches, "n_targets": self.n_targets, "loss_sum": self.loss_sum,
            "grams": {l: g.state_dict() for l, g in self.grams.items()},
            "moments": {l: m.state_dict() for l, m in self.moments.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_batches, self.n_targets, self.loss_sum = state["n_batches"], state["n_targets"], state["loss_sum"]
        for l, s in state["grams"].items():
            self.grams[l].load_state_dict(s)
        for l, s in state["moments"].items():
            self.moments[l].load_state_dict(s)

    def layer_results(self, seed: int = 0) -> list[dict[str, Any]]:
        return [
            analyse_layer(
                layer=l,
                w_o=self.layout.head_slices(self.model, l).detach(),
                gram=self.grams[l],
                moments=self.moments.get(l),
                seed=seed,
            )
            for l in self.layers
        ]


def analyse_layer(*, layer: int, w_o: torch.Tensor, gram: GradientGram, moments: OutputMoments | None, seed: int = 0) -> dict[str, Any]:
    """All per-layer statistics from ω's weights and the accumulated ρ / moments (pure)."""
    omega = weight_coupling(w_o.double())  # spec game-lora §3.1
    rho = gram.rho()  # §3.2
    g = interaction_matrix(omega, rho)  # §3.3
    if not torch.isfinite(g).all():
        raise HeadgameError(f"non-finite activations or gradients in layer {layer}; run in --dtype float32 or check the model weights")
    n_heads = g.shape[0]
    gam = gamma(g)  # §3.4
    res: dict[str, Any] = {
        "layer": layer,
        "n_tokens": gram.n_tokens,
        "G": g.tolist(),
        "omega": omega.tolist(),
        "rho": rho.tolist(),
        **gam,
        "ldb": float(log_det_barrier(g)),  # §4.1, the barrier's value at this G
        "poa_proxy": poa_proxy(gam["gamma"], n_heads),  # §3.5: a proxy, not the bound
    }
    coal = find_coalitions(g.numpy(), seed=seed)  # §9.2
    res["coalitions"] = coal
    res["selective_coordination"] = selective_coordination(g.numpy(), coal["labels"])
    if moments is not None and moments.n >= 2:
        stats = redundancy_stats(cross_correlation(moments), g)  # §4.2
        res["redundancy"] = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in stats.items()}
    return res


def attach_adapter(loaded, adapter: str, *, merge: bool = False):
    """Put a peft adapter (e.g. from headgame train) on the loaded base model."""
    from headgame.models.hashing import files_sha256
    from headgame.models.layout import HeadLayout
    from headgame.models.load import LoadedModel

    path = Path(adapter)
    if not (path / "adapter_config.json").exists():
        raise HeadgameError(f"{path} is not a peft adapter folder (no adapter_config.json); pass the adapter/ folder written by headgame train")
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(loaded.model, str(path))
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise HeadgameError(f"adapter {path} does not fit model {loaded.info.get('spec')} ({first}); pass the base model it was trained on") from None
    if merge:
        model = model.merge_and_unload()
    model.eval()
    info = {**loaded.info, "adapter_hash": "sha256:" + files_sha256(sorted(path.glob("*.safetensors")))}
    return LoadedModel(model, loaded.tokenizer, HeadLayout.from_model(model), info)


def summarise(layers: list[dict[str, Any]]) -> dict[str, Any]:
    gammas = [l["gamma"] for l in layers]
    i_max = max(range(len(gammas)), key=gammas.__getitem__)
    i_min = min(range(len(gammas)), key=gammas.__getitem__)
    return {
        "gamma_mean": sum(gammas) / len(gammas),
        "gamma_max": gammas[i_max], "gamma_max_layer": layers[i_max]["layer"],
        "gamma_min": gammas[i_min], "gamma_min_layer": layers[i_min]["layer"],
    }


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".headgame-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise HeadgameError(f"output folder {out} is not writable ({exc.strerror or exc}); choose another --out") from None


def _save_state(out: Path, cfg: AnalyzeConfig, model_hash: str, collector: CouplingCollector) -> None:
    buf = io.BytesIO()
    torch.save({"config": cfg.run_identity(), "model_hash": model_hash, "collector": collector.state_dict()}, buf)
    write_bytes_atomic(out / STATE_FILE, buf.getvalue())


def _load_state(out: Path, cfg: AnalyzeConfig, model_hash: str) -> dict[str, Any] | None:
    path = out / STATE_FILE
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    mine = cfg.run_identity()
    diff = sorted(k for k in set(mine) | set(state["config"]) if mine.get(k) != state["config"].get(k))
    if state.get("model_hash") != model_hash:
        diff.append("model weights")
    if diff:
        raise HeadgameError(
            f"cannot resume from {path}: the run differs in {', '.join(diff)}; rerun with the same settings, "
            "or drop --resume to start over"
        )
    return state["collector"]


def run_analysis(
    cfg: AnalyzeConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    report: bool = True,
    console: Any = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run ``headgame analyze`` end to end; returns the analysis dict also written to JSON."""
    from headgame.data import iter_batches, load_blocks
    from headgame.models.load import load_model

    out = Path(cfg.out)
    check_writable(out)
    t_start = time.perf_counter()
    loaded = load_model(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    if cfg.adapter:
        loaded = attach_adapter(loaded, cfg.adapter, merge=cfg.merge_adapter)
    model, tok, layout = loaded
    if layout.max_positions and cfg.seq_len > layout.max_positions:
        raise HeadgameError(
            f"--seq-len {cfg.seq_len} exceeds the model's maximum of {layout.max_positions} positions; "
            f"use --seq-len {layout.max_positions} or less"
        )
    layers = layout.parse_layers(cfg.layers)
    blocks = load_blocks(cfg.data, tok, seq_len=cfg.seq_len, max_tokens=cfg.max_tokens, text_field=cfg.text_field,
                         data_dir=cfg.data_dir, encoder=not layout.causal)
    objective = Objective(model, layout, tok, seed=cfg.seed)
    n_batches = math.ceil(blocks.input_ids.shape[0] / cfg.batch_size)
    collector = CouplingCollector(model, layout, objective, layers, redundancy=cfg.redundancy)
    model_hash = loaded.info["hash"]
    start_batch = 0
    if resume:
        state = _load_state(out, cfg, model_hash)
        if state is not None:
            collector.load_state_dict(state)
            start_batch = collector.n_batches

    bar = _progress(progress, console)
    t_loop = time.perf_counter()
    with collector, bar:
        task = bar.add_task("analyze", total=n_batches, completed=start_batch, gamma=float("nan"), tps=0.0)
        for i, (ids, mask) in enumerate(iter_batches(blocks, cfg.batch_size)):
            if i < start_batch:
                continue
            full = bool(mask.all())
            collector.step(ids, None if (full and layout.causal) else mask)
            done_tokens = int(blocks.attention_mask[: (i + 1) * cfg.batch_size].sum())
            skipped = int(blocks.attention_mask[: start_batch * cfg.batch_size].sum())
            tps = (done_tokens - skipped) / max(time.perf_counter() - t_loop, 1e-9)
            bar.update(task, advance=1, gamma=collector.running_gamma(), tps=tps)
            if cfg.checkpoint_every and (i + 1) % cfg.checkpoint_every == 0 and i + 1 < n_batches:
                _save_state(out, cfg, model_hash, collector)
            if on_batch is not None:
                on_batch(i)
    loop_seconds = time.perf_counter() - t_loop

    layer_results = collector.layer_results(seed=cfg.seed)
    analysis: dict[str, Any] = {
        "headgame_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "versions": package_versions(),
        "model": {"spec": cfg.model, **layout.describe(), "objective": objective.name,
                  "hash": model_hash, "source": loaded.info.get("source"),
                  **({"adapter": cfg.adapter, "adapter_hash": loaded.info.get("adapter_hash"),
                      "adapter_merged": cfg.merge_adapter} if cfg.adapter else {})},
        "data": {"source": cfg.data, "n_blocks": int(blocks.input_ids.shape[0]), "n_tokens": blocks.n_tokens,
                 "seq_len": cfg.seq_len, "n_documents": blocks.n_documents,
                 "mean_loss": collector.loss_sum / max(collector.n_targets, 1)},
        "timing": {"seconds": round(time.perf_counter() - t_start, 2), "loop_seconds": round(loop_seconds, 2),
                   "tokens_per_s": round(blocks.n_tokens / max(loop_seconds, 1e-9), 1) if start_batch == 0 else None},
        "layers": layer_results,
        "summary": summarise(layer_results),
        "notes": {
            "G": "G = omega ⊙ rho (spec game-lora §3.3); omega = cosine of W_O slices, rho = cosine of exact per-head CE gradients",
            "poa_proxy": "1/(1 - c·Γ²) with c = 1/(H(H-1)): a proxy, not the paper's bound (spec §3.5)",
        },
    }
    write_json_atomic(out / "analysis.json", analysis)
    write_text_atomic(out / "config.yaml", cfg.to_yaml())
    if report:
        from headgame.report import write_report

        heat = layout.parse_layers(cfg.heatmap_layers) if cfg.heatmap_layers else None
        paths = write_report(analysis, out, heatmap_layers=heat)
        analysis["summary"]["files"] = sorted(p.name for p in paths.values())
    (out / STATE_FILE).unlink(missing_ok=True)
    return analysis


def _progress(enabled: bool, console: Any):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("batches · {task.fields[tps]:.0f} tok/s · mean Γ {task.fields[gamma]:.3f}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, disable=not enabled, transient=False,
    )
