"""Checkpoints of ``headgame fep`` (and the state-file scaffold ``headgame prune`` shares).

A run's state is one file in its output folder, written atomically by :func:`headgame.io.save_state`
(safetensors + JSON, never a pickle) and tagged with the run identity and the model hash, which
``--resume`` checks (:func:`headgame.runs.check_identity`). fep saves it every
``--checkpoint-every`` batches of the symbol collection, when the collection ends, after each
analysed layer and after each layer of the ablation ΔNLL. Every unit is computed from the
symbols and the seed alone (the bootstrap and the MCMC of layer ℓ are seeded with seed + ℓ), so
a resumed run writes the numbers of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headgame.dist import all_gather, merge_indexed, shard, world
from headgame.info import dividends as dv
from headgame.info.analysis import InfoOptions, LayerInfo, analyse_layer
from headgame.info.entropy import LowOrderEntropies
from headgame.info.gibbs import PartitionChain
from headgame.measure.symbols import HeadSymbols, collect_symbols, concat_symbols
from headgame.runs import StateFile, announce_resume

STATE_FILE = ".fep-state.safetensors"


# --- LayerInfo and HeadSymbols as run state --------------------------------------------------


def _np(t: Any) -> np.ndarray:
    return t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def pack_info(info: LayerInfo) -> dict[str, Any]:
    """What the report reads of a LayerInfo (the bootstrap resamples are spent once its CIs exist)."""
    e = info.ent
    return {
        "layer": info.layer, "n_obs": info.n_obs, "n_heads": info.n_heads, "log2_k": info.log2_k,
        "ent": {"h1": e.h1, "h2": e.h2, "h3": e.h3, "n": e.n}, "d2": info.d2, "d3": info.d3, "h_full": info.h_full,
        "h_minus": info.h_minus, "scores": dict(info.scores), "summary": info.summary.to_dict(),
        "table": info.table, "dividends": info.dividends, "pair_ci": info.pair_ci, "triple_ci": info.triple_ci,
        "summary_ci": info.summary_ci, "chain": None if info.chain is None else dataclasses.asdict(info.chain),
        "max_entropy_by_order": info.max_entropy_by_order,
    }


def unpack_info(d: dict[str, Any]) -> LayerInfo:
    ci = lambda pair: None if pair is None else (_np(pair[0]), _np(pair[1]))  # noqa: E731
    chain = d["chain"]
    if chain is not None:
        chain = PartitionChain(**{**chain, "co_membership": _np(chain["co_membership"])})
    return LayerInfo(
        layer=d["layer"], n_obs=d["n_obs"], n_heads=d["n_heads"], log2_k=d["log2_k"], ent=LowOrderEntropies(**d["ent"]),
        d2=d["d2"], d3=d["d3"], h_full=d["h_full"], h_minus=d["h_minus"], scores={k: _np(v) for k, v in d["scores"].items()},
        summary=dv.TripleSummary(**d["summary"]), table=d["table"], dividends=d["dividends"], pair_ci=ci(d["pair_ci"]),
        triple_ci=ci(d["triple_ci"]), summary_ci=d["summary_ci"], chain=chain, max_entropy_by_order=d["max_entropy_by_order"],
    )


def _small(t: torch.Tensor) -> torch.Tensor:
    # symbols and positions are below 2^31: stored as int32 (half the bytes), read back as int64
    return t.to(torch.int32) if t.numel() and int(t.max()) < 2**31 else t


def pack_symbols(s: HeadSymbols) -> dict[str, Any]:
    return {"layers": s.layers, "x": {l: _small(v) for l, v in s.x.items()}, "seq": _small(s.seq), "pos": _small(s.pos),
            "alphabet": s.alphabet, "alphabet_size": s.alphabet_size, "n_sequences": s.n_sequences}


def unpack_symbols(d: dict[str, Any]) -> HeadSymbols:
    return HeadSymbols(d["layers"], {l: v.to(torch.int64) for l, v in d["x"].items()}, d["seq"].to(torch.int64),
                       d["pos"].to(torch.int64), d["alphabet"], d["alphabet_size"], d["n_sequences"])


# --- the stages of a fep run ------------------------------------------------------------------


class FepState:
    """Where a fep run is: symbols of the first ``batches_done`` batches, the finished layers'
    analyses, the ablation ΔNLL of its first layers. Each stage saves after every unit."""

    def __init__(self, out: Path, cfg: Any, model_hash: str | None) -> None:
        self.file = StateFile(Path(out) / STATE_FILE, cfg, model_hash)
        self.cfg = cfg
        self.symbols: HeadSymbols | None = None
        self.batches_done = 0
        self.infos: dict[int, LayerInfo] = {}
        self.ablation: tuple[np.ndarray, float, int] | None = None  # (ΔNLL [L, H], base NLL, layers done)
        self.rank, self.n_proc = world()  # several processes (headgame.dist) share each stage and save nothing

    def restore(self) -> None:
        run = self.file.load()
        self.batches_done = int(run["batches_done"])
        self.symbols = None if run["symbols"] is None else unpack_symbols(run["symbols"])
        self.infos = {int(l): unpack_info(d) for l, d in run["infos"].items()}
        abl = run["ablation"]
        self.ablation = None if abl is None else (_np(abl["delta"]).astype(np.float64), float(abl["base"]), int(abl["layers_done"]))

    def save(self) -> None:
        if self.n_proc > 1:
            return
        abl = self.ablation
        self.file.save({
            "batches_done": self.batches_done, "symbols": None if self.symbols is None else pack_symbols(self.symbols),
            "infos": {l: pack_info(i) for l, i in self.infos.items()},
            "ablation": None if abl is None else {"delta": abl[0], "base": abl[1], "layers_done": abl[2]},
        })

    def clear(self) -> None:
        self.file.clear()

    def announce(self, n_batches: int, layers: list[int], ablation_layers: int) -> str:
        """Print (stderr) and return the stage this run continues at."""
        if self.batches_done < n_batches:
            stage, done, total = "discretise", self.batches_done, n_batches
        elif len(self.infos) < len(layers):
            stage, done, total = "dividends", len(self.infos), len(layers)
        elif ablation_layers:
            stage, done, total = "ablation", 0 if self.ablation is None else self.ablation[2], ablation_layers
        else:
            stage, done, total = "report", 0, 1
        announce_resume(stage, done, total)
        return f"{stage} {done}/{total}"

    # ------------------------------------------------------------------ stages
    def collect(self, model: Any, layout: Any, seqs: Any, layers: list[int], on_batch: Any) -> HeadSymbols:
        """Argmax-key symbols of every sequence, ``--checkpoint-every`` batches at a time."""
        bs = self.cfg.batch_size
        n_batches = math.ceil(seqs.n_sequences / bs)
        if self.n_proc > 1:
            return self._collect_shared(model, layout, seqs, layers, on_batch, n_batches)
        every = self.cfg.checkpoint_every or n_batches
        if self.batches_done:
            on_batch(min(self.batches_done * bs, seqs.n_sequences), seqs.n_sequences)
        while self.batches_done < n_batches:
            stop = min(self.batches_done + every, n_batches)
            part = collect_symbols(model, layout, seqs.input_ids, seqs.attention_mask, layers=layers, alphabet=self.cfg.alphabet,
                                   batch_size=bs, on_batch=on_batch, start=self.batches_done * bs, stop=stop * bs)
            self.symbols = part if self.symbols is None else concat_symbols([self.symbols, part])
            self.batches_done = stop
            self.save()
        assert self.symbols is not None
        return self.symbols

    def _collect_shared(self, model: Any, layout: Any, seqs: Any, layers: list[int], on_batch: Any, n_batches: int) -> HeadSymbols:
        """Each process collects a contiguous block of batches; the blocks join in rank order, so
        the symbols are those of one process."""
        bs, mine = self.cfg.batch_size, shard(n_batches, self.rank, self.n_proc)
        part = None
        if len(mine):
            part = pack_symbols(collect_symbols(model, layout, seqs.input_ids, seqs.attention_mask, layers=layers,
                                                alphabet=self.cfg.alphabet, batch_size=bs, on_batch=on_batch,
                                                start=mine.start * bs, stop=mine.stop * bs))
        self.symbols = concat_symbols([unpack_symbols(p) for p in all_gather(part) if p is not None])
        self.batches_done = n_batches
        return self.symbols

    def analyse(self, symbols: HeadSymbols, opts: InfoOptions, on_layer: Any) -> dict[int, LayerInfo]:
        """The information analysis of every layer, saved after each (several processes: each
        analyses a block of layers; every layer's numbers depend on its symbols and seed alone)."""
        if self.n_proc > 1:
            mine = [symbols.layers[i] for i in shard(len(symbols.layers), self.rank, self.n_proc)]
            local = {l: pack_info(analyse_layer(l, symbols.x[l], symbols.seq, symbols.alphabet_size, opts)) for l in mine}
            self.infos = {l: unpack_info(d) for l, d in merge_indexed(local).items()}
            for layer in symbols.layers:
                on_layer(layer)
            return {l: self.infos[l] for l in symbols.layers}
        for layer in symbols.layers:
            if layer not in self.infos:
                self.infos[layer] = analyse_layer(layer, symbols.x[layer], symbols.seq, symbols.alphabet_size, opts)
                self.save()
            on_layer(layer)
        return {l: self.infos[l] for l in symbols.layers}

    def ablation_done(self, delta: np.ndarray, base: float, layers_done: int) -> None:
        self.ablation = (delta.copy(), base, layers_done)
        self.save()
