"""Physical head removal: slice the projections so that pruned heads cost no compute.

Spec gt-fep §4.3. transformers 5 dropped ``model.prune_heads``, so every family is sliced here:

* **llama** family (GQA): the pruned query heads' rows of ``q_proj`` and columns of ``o_proj``
  go; a KV head (its ``k_proj``/``v_proj`` rows) goes only when its whole query group is gone.
  When the kept query heads are spread evenly over the kept KV heads, the layer stays a plain
  GQA layer (``num_key_value_groups`` = heads kept per group). When they are not (e.g. 3/2/2),
  ``k_proj``/``v_proj`` become :class:`HeadGatherLinear`: the projection still runs once per
  kept KV head and each query head then receives its KV head's slice (a gather, no FLOPs), with
  ``num_key_value_groups = 1``. Layers may keep different numbers of heads.
* **gpt2**: the q, k and v column blocks of ``c_attn`` (Conv1D, weight [in, 3E]) and the rows of
  ``c_proj`` (weight [H·dh, E]); ``split_size`` follows.
* **bert**: rows of ``query``/``key``/``value`` and columns of ``attention.output.dense``.

The biases of the output projections are kept, so a pruned model computes exactly what the
unpruned model computes with the heads' outputs gated to zero (:func:`zero_gates`, HeadTap's
``gates``); ``tests/unit/test_surgery.py`` checks this to 1e-5.

A pruned model is saved with :func:`save_pruned` (safetensors, tokenizer, the record of removed
heads in ``headgame_pruning.json`` and in ``config.json``) and reloaded with :func:`load_pruned`,
which rebuilds the architecture, re-applies the surgery and loads the weights. When every layer
of a llama-family model keeps the same number of query heads per KV group and the same KV
heads count, the saved ``config.json`` carries the new head counts and plain
``transformers.AutoModelForCausalLM.from_pretrained`` loads it too.
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
import torch.nn.functional as F
from torch import nn

from headgame.errors import HeadgameError
from headgame.models.layout import HeadLayout, _get_path

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
        """KV heads still serving a kept query head (llama GQA; else one KV per query head)."""
        if self.family != "llama":
            return self.kept(layer)
        return sorted({h // self.group_size for h in self.kept(layer)})

    @property
    def n_removed(self) -> int:
        return sum(len(v) for v in self.removed.values())

    def heads_per_layer(self) -> list[int]:
        return [len(self.kept(l)) for l in range(self.n_layers)]

    def is_uniform(self) -> bool:
        """Every layer keeps the same query heads per KV group and the same number of KV heads."""
        shapes = set()
        for l in range(self.n_layers):
            kept = self.kept(l)
            if self.family == "llama":
                per_group = {g: 0 for g in self.kept_kv(l)}
                for h in kept:
                    per_group[h // self.group_size] += 1
                if len(set(per_group.values())) != 1:
                    return False
                shapes.add((len(kept), len(per_group)))
            else:
                shapes.add((len(kept), len(kept)))
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
    if layout.family == "llama" and layout.n_heads % layout.n_kv_heads:
        raise HeadgameError(
            f"{layout.n_heads} query heads do not split into {layout.n_kv_heads} KV groups; this checkpoint cannot be pruned"
        )
    return PruningRecord(
        family=layout.family, model_type=layout.model_type, n_layers=layout.n_layers, n_heads=layout.n_heads,
        n_kv_heads=layout.n_kv_heads, head_dim=layout.head_dim, removed=clean,
    )


# --------------------------------------------------------------------------- modules


class HeadGatherLinear(nn.Linear):
    """A K or V projection whose kept KV heads are handed to query heads by index.

    Used where the kept query heads are unevenly spread over the KV groups: the matmul runs
    over the kept KV heads only; ``head_index[j]`` names the KV head of kept query head j.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, head_dim: int, head_index: list[int]) -> None:
        super().__init__(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        self.weight = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=bias.requires_grad)
        self.head_dim = head_dim
        self.register_buffer("head_index", torch.tensor(head_index, dtype=torch.long, device=weight.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # [..., KV*dh]
        y = y.view(*y.shape[:-1], -1, self.head_dim)  # [..., KV, dh]
        return y.index_select(-2, self.head_index).flatten(-2)  # [..., Hq, dh] -> [..., Hq*dh]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", head_index={self.head_index.tolist()}"


def _rows(n_heads_idx: list[int], head_dim: int, offset: int = 0) -> torch.Tensor:
    """Row (or column) indices of whole heads: head h covers [offset + h*dh, offset + (h+1)*dh)."""
    return torch.tensor([offset + h * head_dim + i for h in n_heads_idx for i in range(head_dim)], dtype=torch.long)


def _keep(param: torch.Tensor, idx: torch.Tensor, dim: int) -> nn.Parameter:
    # A fresh contiguous tensor: the pruned GEMMs then run on dense weights.
    return nn.Parameter(param.detach().index_select(dim, idx.to(param.device)).clone().contiguous(), requires_grad=param.requires_grad)


def _slice_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> None:
    """Keep rows (dim 0, outputs) or columns (dim 1, inputs) of an ``nn.Linear`` in place."""
    lin.weight = _keep(lin.weight, idx, dim)
    if dim == 0:
        if lin.bias is not None:
            lin.bias = _keep(lin.bias, idx, 0)
        lin.out_features = lin.weight.shape[0]
    else:
        lin.in_features = lin.weight.shape[1]


def _prune_llama(attn: nn.Module, rec: PruningRecord, layer: int) -> None:
    dh = rec.head_dim
    kept, kept_kv = rec.kept(layer), rec.kept_kv(layer)
    _slice_linear(attn.q_proj, _rows(kept, dh), 0)
    _slice_linear(attn.o_proj, _rows(kept, dh), 1)
    _slice_linear(attn.k_proj, _rows(kept_kv, dh), 0)
    _slice_linear(attn.v_proj, _rows(kept_kv, dh), 0)
    counts = [sum(1 for h in kept if h // rec.group_size == g) for g in kept_kv]
    if len(set(counts)) == 1:
        # kept query heads are sorted by group, so new head j belongs to kept KV head j // c
        attn.num_key_value_groups = counts[0]
    else:
        index = [kept_kv.index(h // rec.group_size) for h in kept]
        for name in ("k_proj", "v_proj"):
            old = getattr(attn, name)
            setattr(attn, name, HeadGatherLinear(old.weight, old.bias, dh, index))
        attn.num_key_value_groups = 1


def _prune_gpt2(attn: nn.Module, rec: PruningRecord, layer: int) -> None:
    dh, kept = rec.head_dim, rec.kept(layer)
    width = rec.n_heads * dh
    cols = torch.cat([_rows(kept, dh, offset=b * width) for b in range(3)])  # q, k, v blocks of c_attn
    c_attn, c_proj = attn.c_attn, attn.c_proj
    c_attn.weight = _keep(c_attn.weight, cols, 1)  # Conv1D weight is [in, out]
    c_attn.bias = _keep(c_attn.bias, cols, 0)
    c_attn.nf = c_attn.weight.shape[1]
    c_proj.weight = _keep(c_proj.weight, _rows(kept, dh), 0)
    c_proj.nx = c_proj.weight.shape[0]
    attn.split_size = len(kept) * dh
    attn.num_heads = len(kept)


def _prune_bert(self_attn: nn.Module, o_proj: nn.Module, rec: PruningRecord, layer: int) -> None:
    idx = _rows(rec.kept(layer), rec.head_dim)
    for name in ("query", "key", "value"):
        _slice_linear(getattr(self_attn, name), idx, 0)
    _slice_linear(o_proj, idx, 1)
    self_attn.num_attention_heads = len(rec.kept(layer))
    self_attn.all_head_size = len(idx)


def is_pruned(model: nn.Module) -> bool:
    return getattr(model, "_headgame_pruning", None) is not None


def pruning_record(model: nn.Module) -> PruningRecord | None:
    """The record of a model pruned in this process or loaded by :func:`load_pruned`."""
    return getattr(model, "_headgame_pruning", None)


def _apply(model: nn.Module, layout: HeadLayout, rec: PruningRecord) -> None:
    blocks = layout.blocks(model)
    for layer in sorted(rec.removed):
        block = blocks[layer]
        attn = _get_path(block, layout.attn_path)
        if rec.family == "llama":
            _prune_llama(attn, rec, layer)
        elif rec.family == "gpt2":
            _prune_gpt2(attn, rec, layer)
        elif rec.family == "bert":
            _prune_bert(attn, _get_path(block, layout.o_proj_path), rec, layer)
        else:  # pragma: no cover - layouts only produce these families
            raise HeadgameError(f"head surgery is not implemented for the {rec.family} family")
    model._headgame_pruning = rec
    if rec.family == "llama" and rec.is_uniform() and rec.n_removed:
        # Every layer has the same shape: the config can say so, and HeadLayout/HeadTap and
        # plain transformers then see an ordinary (smaller) model.
        text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        text_cfg.num_attention_heads = len(rec.kept(0))
        text_cfg.num_key_value_heads = len(rec.kept_kv(0))
        text_cfg.head_dim = rec.head_dim


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
            ids.update(id(p) for p in _get_path(block, path).parameters())
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
    dh = layout.head_dim
    out = []
    for block in layout.blocks(model):
        attn = _get_path(block, layout.attn_path)
        if layout.family == "llama":
            out.append((attn.q_proj.weight.shape[0] // dh, attn.k_proj.weight.shape[0] // dh))
        elif layout.family == "gpt2":
            n = attn.c_attn.weight.shape[1] // (3 * dh)
            out.append((n, n))
        else:
            n = attn.query.weight.shape[0] // dh
            out.append((n, n))
    return out


# --------------------------------------------------------------------------- save / load


def save_pruned(model: nn.Module, tokenizer: Any, out_dir: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Save a pruned model (safetensors + tokenizer + record) atomically into ``out_dir``."""
    from headgame.io import AtomicDir, write_json_atomic

    rec = pruning_record(model)
    if rec is None:
        raise HeadgameError("the model has no pruning record; prune it with headgame.models.surgery.prune_heads first")
    data = rec.to_dict()
    if extra:
        data["extra"] = dict(extra)
    data["plain_transformers_loadable"] = bool(rec.family == "llama" and rec.is_uniform())
    out_dir = Path(out_dir)
    setattr(model.config, CONFIG_KEY, data)
    try:
        with AtomicDir(out_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
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


def _model_class(config: Any):
    import transformers

    archs = getattr(config, "architectures", None) or []
    if getattr(config, "model_type", "") in ("bert", "roberta", "xlm-roberta"):
        if any(a.endswith("ForMaskedLM") for a in archs):
            return transformers.AutoModelForMaskedLM
        return transformers.AutoModel
    return transformers.AutoModelForCausalLM


def load_pruned(path: str | Path, *, dtype: "str | torch.dtype" = "float32", attn_implementation: str = "sdpa"):
    """Load a model folder written by :func:`save_pruned`; returns a ``LoadedModel``.

    The architecture is rebuilt unpruned from ``config.json`` (no weight initialisation), the
    recorded surgery is applied, and the safetensors weights are loaded strictly.
    """
    import transformers
    from safetensors.torch import load_file

    from headgame.models.hashing import files_sha256
    from headgame.models.load import LoadedModel

    t0 = time.perf_counter()
    path = Path(path)
    rec = read_record(path)
    if rec is None:
        raise HeadgameError(f"{path} holds no {PRUNING_FILE}; load it with headgame.load_model instead")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise HeadgameError(f"no .safetensors weights in {path}; re-save the pruned model with headgame prune")
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else {
        "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise HeadgameError(f"unknown dtype '{dtype}'; use float32, bfloat16 or float16")
    config = transformers.AutoConfig.from_pretrained(path)
    data = getattr(config, CONFIG_KEY, None) or {}
    if hasattr(config, CONFIG_KEY):
        delattr(config, CONFIG_KEY)
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    if data.get("uniform") and rec.family == "llama" and rec.n_removed:
        # the saved config holds the pruned head counts: rebuild the original shape first
        text_cfg.num_attention_heads, text_cfg.num_key_value_heads = rec.n_heads, rec.n_kv_heads
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = _model_class(config).from_config(config, attn_implementation=attn_implementation)
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


def load_any(spec: str, *, dtype: str = "float32", attn_implementation: str = "sdpa", trust_remote_code: bool = False):
    """``load_model`` that also understands folders written by :func:`save_pruned`."""
    from headgame.models.load import load_model

    p = Path(spec).expanduser()
    if p.is_dir() and (p / PRUNING_FILE).is_file():
        return load_pruned(p, dtype=dtype, attn_implementation=attn_implementation)
    return load_model(spec, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
