"""Physical head removal: slice the projections so that pruned heads cost no compute.

See docs/formulas.md#surgery. transformers 5 dropped ``model.prune_heads``, so every family slices its own
projections (``Family.prune_block`` in ``models/families/<family>.py``: which rows of a fused
QKV projection belong to which head, GQA groups, per-layer head counts). This module holds what
is common: the record of removed heads, planning and validation, applying the cuts, copies that
share the non-attention weights, and saving and loading pruned models.

A KV head goes only when its whole query group is gone (GQA; without GQA every query head is
its own group). The biases of the output projections are kept, so a pruned model computes
exactly what the unpruned model computes with the heads' outputs gated to zero
(:func:`zero_gates`, HeadTap's ``gates``); ``tests/unit/test_surgery.py`` and
``tests/unit/test_families.py`` check this to 1e-5.

A pruned model is saved with :func:`save_pruned` (safetensors, tokenizer, the record of removed
heads in ``headgame_pruning.json`` and in ``config.json``) and reloaded with :func:`load_pruned`,
which rebuilds the architecture, re-applies the surgery and loads the weights. When every layer
keeps the same number of query heads per KV group and the same KV heads count, and the family's
config can say so (``Family.config_shrinks``: Llama family, Phi-3), the saved ``config.json``
carries the new head counts and plain ``transformers.AutoModelForCausalLM.from_pretrained``
loads it too.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headgame.errors import HeadgameError
from headgame.models.families import Family, LayerCut, get_family, get_path
from headgame.models.families.slicing import HeadGatherLinear
from headgame.models.layout import HeadLayout

__all__ = [
    "CONFIG_KEY", "PRUNING_FILE", "HeadGatherLinear", "PruningRecord", "head_counts", "is_pruned",
    "load_pruned", "plan_pruning", "prune_heads", "pruned_copy", "pruning_record", "read_record", "save_pruned",
    "zero_gates",
]

PRUNING_FILE = "headgame_pruning.json"
CONFIG_KEY = "headgame_pruning"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- the record


@dataclass
class PruningRecord:
    """Which query heads (original indices) each layer lost and kept; serialisable."""

    family: str
    model_type: str
    n_layers: int
    n_heads: int  # query heads per layer before pruning
    n_kv_heads: int
    head_dim: int
    removed: dict[int, list[int]] = field(default_factory=dict)

    # ----------------------------------------------------------------- derived
    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kept(self, layer: int) -> list[int]:
        gone = set(self.removed.get(layer, ()))
        return [h for h in range(self.n_heads) if h not in gone]

    def kept_kv(self, layer: int) -> list[int]:
        """KV heads still serving a kept query head (without GQA each query head is its own group)."""
        return sorted({h // self.group_size for h in self.kept(layer)})

    def cut(self, layer: int) -> LayerCut:
        """What ``layer`` keeps, as the family's surgery reads it."""
        return LayerCut(tuple(self.kept(layer)), tuple(self.kept_kv(layer)), self.n_heads, self.n_kv_heads, self.head_dim)

    @property
    def family_def(self) -> Family:
        return get_family(self.family)

    @property
    def plain_loadable(self) -> bool:
        """The saved config carries the pruned head counts, so plain transformers loads the model."""
        return bool(self.family_def.config_shrinks and self.is_uniform())

    @property
    def n_removed(self) -> int:
        return sum(len(v) for v in self.removed.values())

    def heads_per_layer(self) -> list[int]:
        return [len(self.kept(l)) for l in range(self.n_layers)]

    def is_uniform(self) -> bool:
        """Every layer keeps the same query heads per KV group and the same number of KV heads."""
        shapes = set()
        for l in range(self.n_layers):
            cut = self.cut(l)
            if not cut.is_even():
                return False
            shapes.add((len(cut.kept), len(cut.kept_kv)))
        return len(shapes) == 1

    # ----------------------------------------------------------------- round trip
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "family": self.family,
            "model_type": self.model_type,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "removed_heads": {str(l): sorted(v) for l, v in sorted(self.removed.items()) if v},
            "kept_heads": {str(l): self.kept(l) for l in range(self.n_layers)},
            "kept_kv_heads": {str(l): self.kept_kv(l) for l in range(self.n_layers)},
            "n_removed": self.n_removed,
            "uniform": self.is_uniform(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PruningRecord":
        try:
            return cls(
                family=data["family"], model_type=data["model_type"], n_layers=int(data["n_layers"]),
                n_heads=int(data["n_heads"]), n_kv_heads=int(data["n_kv_heads"]), head_dim=int(data["head_dim"]),
                removed={int(k): [int(h) for h in v] for k, v in data.get("removed_heads", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HeadgameError(f"pruning record is malformed ({exc}); re-save the pruned model with headgame prune") from None


def plan_pruning(layout: HeadLayout, removed: Mapping[int, Iterable[int]]) -> PruningRecord:
    """Validate ``{layer: [query heads]}`` against ``layout`` and return the record."""
    clean: dict[int, list[int]] = {}
    for layer, heads in removed.items():
        layer = layout.check_layer(int(layer))
        hs = sorted({int(h) for h in heads})
        bad = [h for h in hs if not 0 <= h < layout.n_heads]
        if bad:
            raise HeadgameError(
                f"head(s) {bad} of layer {layer} are out of range ({layout.n_heads} heads, 0-based); use 0..{layout.n_heads - 1}"
            )
        if len(hs) >= layout.n_heads:
            raise HeadgameError(
                f"pruning would remove all {layout.n_heads} heads of layer {layer}; keep at least one head per layer"
            )
        if hs:
            clean[layer] = hs
    if layout.n_heads % layout.n_kv_heads:
        raise HeadgameError(
            f"{layout.n_heads} query heads do not split into {layout.n_kv_heads} KV groups; this checkpoint cannot be pruned"
        )
    return PruningRecord(
        family=layout.family, model_type=layout.model_type, n_layers=layout.n_layers, n_heads=layout.n_heads,
        n_kv_heads=layout.n_kv_heads, head_dim=layout.head_dim, removed=clean,
    )


# --------------------------------------------------------------------------- applying the cuts


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def is_pruned(model: nn.Module) -> bool:
    return getattr(model, "_headgame_pruning", None) is not None


def pruning_record(model: nn.Module) -> PruningRecord | None:
    """The record of a model pruned in this process or loaded by :func:`load_pruned`."""
    return getattr(model, "_headgame_pruning", None)


def _apply(model: nn.Module, layout: HeadLayout, rec: PruningRecord) -> None:
    blocks = layout.blocks(model)
    fam = rec.family_def
    for layer in sorted(rec.removed):
        fam.prune_block(blocks[layer], rec.cut(layer))
    model._headgame_pruning = rec
    from headgame.models.families.kvgather import route

    route(model)  # layers with gathered KV heads run under headgame's attention kernels
    if rec.plain_loadable and rec.n_removed:
        # Every layer has the same shape: the config can say so, and HeadLayout/HeadTap and
        # plain transformers then see an ordinary (smaller) model.
        fam.shrink_config(_text_config(model.config), len(rec.kept(0)), len(rec.kept_kv(0)), rec.head_dim)


def prune_heads(model: nn.Module, layout: HeadLayout, removed: Mapping[int, Iterable[int]]) -> PruningRecord:
    """Remove ``{layer: [query heads]}`` from ``model`` in place; returns the record.

    Head indices are those of the unpruned model. A model can be pruned once (prune the
    original again with the union of heads to prune more).
    """
    if is_pruned(model):
        raise HeadgameError("this model is already pruned; prune the original model with the full set of heads instead")
    rec = plan_pruning(layout, removed)
    with torch.no_grad():
        _apply(model, layout, rec)
    return rec


def _attention_param_ids(model: nn.Module, layout: HeadLayout) -> set[int]:
    ids: set[int] = set()
    for block in layout.blocks(model):
        for path in {layout.attn_path, layout.o_proj_path}:
            ids.update(id(p) for p in get_path(block, path).parameters())
    return ids


def pruned_copy(model: nn.Module, layout: HeadLayout, removed: Mapping[int, Iterable[int]]) -> tuple[nn.Module, PruningRecord]:
    """A pruned copy of ``model`` that shares every non-attention parameter with it.

    Embeddings, MLPs, norms and the LM head are the same tensors (no extra memory); only the
    attention projections are copied and sliced. Do not train one of the pair in place.
    """
    attn_ids = _attention_param_ids(model, layout)
    memo = {id(p): p for p in model.parameters() if id(p) not in attn_ids}
    clone = copy.deepcopy(model, memo)
    rec = prune_heads(clone, layout, removed)
    return clone, rec


def zero_gates(layout: HeadLayout, removed: Mapping[int, Iterable[int]]) -> dict[int, torch.Tensor]:
    """HeadTap gates that zero the given heads (the "gated" twin of a pruned model)."""
    gates = {}
    for layer, heads in removed.items():
        g = torch.ones(layout.n_heads)
        g[list(heads)] = 0.0
        gates[int(layer)] = g
    return gates


def head_counts(model: nn.Module, layout: HeadLayout) -> list[tuple[int, int]]:
    """(query heads, KV heads) per layer, read from the actual projection shapes."""
    fam = layout.family_def
    return [fam.head_counts(block, layout.head_dim) for block in layout.blocks(model)]


# --------------------------------------------------------------------------- save / load


def _own_names(model: nn.Module) -> dict[str, Any]:
    """Keep the module's own parameter names in the file: :func:`load_pruned` loads them into the
    rebuilt modules as they are, while transformers 5 would write some families' legacy names
    (GPT-NeoX: ``lm_head`` as ``embed_out``)."""
    import inspect

    if "save_original_format" in inspect.signature(model.save_pretrained).parameters:
        return {"save_original_format": False}
    return {}


def save_pruned(model: nn.Module, tokenizer: Any, out_dir: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Save a pruned model (safetensors + tokenizer + record) atomically into ``out_dir``."""
    from headgame.io import AtomicDir, write_json_atomic

    rec = pruning_record(model)
    if rec is None:
        raise HeadgameError("the model has no pruning record; prune it with headgame.models.surgery.prune_heads first")
    data = rec.to_dict()
    if extra:
        data["extra"] = dict(extra)
    data["plain_transformers_loadable"] = rec.plain_loadable
    out_dir = Path(out_dir)
    setattr(model.config, CONFIG_KEY, data)
    try:
        with AtomicDir(out_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True, **_own_names(model))
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            write_json_atomic(tmp / PRUNING_FILE, data)
    finally:
        delattr(model.config, CONFIG_KEY)
    return out_dir


def read_record(path: str | Path) -> PruningRecord | None:
    """The pruning record saved in model folder ``path``, or None for an unpruned folder."""
    f = Path(path) / PRUNING_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise HeadgameError(f"{f} cannot be read ({exc}); re-save the pruned model with headgame prune") from None
    return PruningRecord.from_dict(data)


def load_pruned(path: str | Path, *, dtype: "str | torch.dtype" = "float32", attn_implementation: str = "sdpa"):
    """Load a model folder written by :func:`save_pruned`; returns a ``LoadedModel``.

    The architecture is rebuilt unpruned from ``config.json`` (no weight initialisation), the
    recorded surgery is applied, and the safetensors weights are loaded strictly.
    """
    import transformers
    from safetensors.torch import load_file

    from headgame.models.hashing import files_sha256
    from headgame.models.loaded import LoadedModel

    t0 = time.perf_counter()
    path = Path(path)
    rec = read_record(path)
    if rec is None:
        raise HeadgameError(f"{path} holds no {PRUNING_FILE}; load it with headgame.load_model instead")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise HeadgameError(f"no .safetensors weights in {path}; re-save the pruned model with headgame prune")
    from headgame.config import torch_dtype as to_torch_dtype

    torch_dtype = dtype if isinstance(dtype, torch.dtype) else to_torch_dtype(dtype)
    config = transformers.AutoConfig.from_pretrained(path)
    data = getattr(config, CONFIG_KEY, None) or {}
    if hasattr(config, CONFIG_KEY):
        delattr(config, CONFIG_KEY)
    fam = rec.family_def
    if data.get("uniform") and fam.config_shrinks and rec.n_removed:
        # the saved config holds the pruned head counts: rebuild the original shape first
        fam.restore_config(_text_config(config), rec.n_heads, rec.n_kv_heads)
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = fam.auto_class(config).from_config(config, attn_implementation=attn_implementation)
    layout = HeadLayout.from_model(model)
    with torch.no_grad():
        _apply(model, layout, plan_pruning(layout, rec.removed))
    state: dict[str, torch.Tensor] = {}
    for w in weights:
        state.update(load_file(str(w)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    if isinstance(getattr(model, "_tied_weights_keys", None), dict):
        tied = set(model._tied_weights_keys)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise HeadgameError(
            f"the weights in {path} do not fit the recorded pruning (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "re-save the pruned model with headgame prune"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    model.to(torch_dtype).eval()
    tokenizer = None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        pass
    info = {"spec": str(path), "source": str(path), "kind": "pruned", "hash": "sha256:" + files_sha256(weights),
            "pruning": rec.to_dict(), "load_seconds": round(time.perf_counter() - t0, 3)}
    layout = HeadLayout.from_model(model)
    info["layout"] = layout.describe()
    return LoadedModel(model, tokenizer, layout, info)
