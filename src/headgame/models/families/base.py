"""The Family type: everything headgame knows about one architecture family.

A family says where the heads live inside a Hugging Face model (the paths HeadLayout follows
to each layer's attention and its output projection, whose input is the concatenation of the
head outputs: docs/formulas.md#head-slices), how to slice the projections of removed heads
(docs/formulas.md#surgery), which modules LoRA adapts (docs/formulas.md#lora), the pieces of the
analytic FLOP count (docs/formulas.md#flops), the auto class that loads it, and its tiny random
test models. Each family is one module of this package holding one instance of a
:class:`Family` subclass; ``families/__init__.py`` registers them.

This module imports nothing of headgame, so ``models.layout`` can build on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from torch import nn


def get_path(obj: object, path: str) -> Any:
    """Follow a dotted attribute path (``"model.layers"``) from ``obj``."""
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class HeadDims(NamedTuple):
    """Head geometry read from a (text) config."""

    n_heads: int  # query heads: the players (docs/formulas.md#head-slices)
    n_kv_heads: int
    head_dim: int
    d_model: int


@dataclass(frozen=True)
class TinyTokens:
    """Vocabulary size and special-token ids of the byte tokenizer of ``models.tiny``."""

    vocab_size: int
    pad: int
    eos: int
    bos: int


# builds one tiny random model from the byte tokenizer's ids and config overrides
TinyBuilder = Callable[[TinyTokens, dict], "nn.Module"]


@dataclass(frozen=True)
class LayerCut:
    """The heads one layer keeps after pruning, in the original numbering (docs/formulas.md#surgery)."""

    kept: tuple[int, ...]  # query heads, sorted
    kept_kv: tuple[int, ...]  # KV heads still serving a kept query head, sorted
    n_heads: int  # query heads before pruning
    n_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head before pruning (1 without GQA)."""
        return self.n_heads // self.n_kv_heads

    def group_counts(self) -> list[int]:
        """Kept query heads per kept KV head."""
        return [sum(1 for h in self.kept if h // self.group_size == g) for g in self.kept_kv]

    def is_even(self) -> bool:
        """Every kept KV head serves the same number of kept query heads (a plain GQA layer)."""
        return len(set(self.group_counts())) == 1

    def kv_index(self) -> list[int]:
        """For each kept query head, the position of its KV head among the kept KV heads."""
        return [self.kept_kv.index(h // self.group_size) for h in self.kept]


@dataclass(frozen=True)
class Family:
    """How one architecture family is laid out, pruned, adapted and counted."""

    name: str
    description: str  # the architectures it covers, for ``headgame models``
    model_types: tuple[str, ...]
    # Candidate attribute paths from the top-level model to the list of blocks; the first
    # that resolves wins (a *ForCausalLM wraps the base model, a base model does not).
    layer_paths: tuple[str, ...]
    attn_path: str  # block -> module that returns (attn_output, attn_weights)
    o_proj_path: str  # block -> output projection whose *input* is the concatenated heads
    o_proj_kind: str = "linear"  # "linear" (weight [d, H*dh]) or "conv1d" (GPT-2: weight [H*dh, d])
    causal: bool = True
    max_pos_attrs: tuple[str, ...] = ("max_position_embeddings",)
    # KV heads are their own players' servants (GQA / multi-query): one goes only with its group
    grouped_kv: bool = False
    # a uniformly pruned model fits the config's own head-count fields, so plain transformers loads it
    config_shrinks: bool = False
    # peft target_modules of the q/k/v/o projections (docs/formulas.md#lora); None: not trainable
    lora_targets: tuple[str, ...] | str | None = None
    lora_fan_in_fan_out: bool = False  # peft's flag for Conv1D weights stored [in, out]
    mlp_matrices: int = 2  # d×ff matrices per MLP (3 for a gated MLP), docs/formulas.md#flops
    tiny: tuple[tuple[str, TinyBuilder], ...] = ()  # tiny random test models by name

    # ----------------------------------------------------------------- geometry
    def dims(self, cfg: Any) -> HeadDims:
        n_heads = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
        n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
        d_model = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
        head_dim = getattr(cfg, "head_dim", None) or d_model // n_heads
        return HeadDims(n_heads, n_kv, int(head_dim), d_model)

    # ----------------------------------------------------------------- loading
    def auto_class(self, config: Any) -> Any:
        """The transformers auto class that builds a model of this family from ``config``."""
        import transformers

        return transformers.AutoModelForCausalLM

    def set_attn_implementation(self, model: "nn.Module", impl: str) -> None:
        """Switch a loaded model's attention kernel (eager gives attention maps and countable FLOPs)."""
        from headgame.models.families.kvgather import set_implementation

        if set_implementation(model, impl):  # a pruned model with gathered KV heads keeps its gather
            return
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(impl)
        else:  # pragma: no cover - very old transformers
            model.config._attn_implementation = impl

    # ----------------------------------------------------------------- head surgery
    def prune_block(self, block: "nn.Module", cut: LayerCut) -> None:
        """Slice the projections of ``block`` in place so that only ``cut.kept`` heads remain."""
        raise NotImplementedError(f"head surgery is not implemented for the {self.name} family")

    def head_counts(self, block: "nn.Module", head_dim: int) -> tuple[int, int]:
        """(query heads, KV heads) of ``block``, read from its projection shapes."""
        raise NotImplementedError(f"head counting is not implemented for the {self.name} family")

    def shrink_config(self, cfg: Any, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
        """Write the head counts of a uniformly pruned model into its (text) config."""
        cfg.num_attention_heads = n_heads
        cfg.num_key_value_heads = n_kv_heads
        cfg.head_dim = head_dim

    def restore_config(self, cfg: Any, n_heads: int, n_kv_heads: int) -> None:
        """Undo :meth:`shrink_config` so that the unpruned architecture can be rebuilt."""
        cfg.num_attention_heads, cfg.num_key_value_heads = n_heads, n_kv_heads

    # ----------------------------------------------------------------- FLOPs (docs/formulas.md#flops)
    def ffn_width(self, cfg: Any, d_model: int) -> int:
        """Hidden width of the MLP."""
        return int(cfg.intermediate_size)

    def head_kind(self, model: "nn.Module") -> str:
        """What sits on top of the blocks: "lm", "mlm", "pooler" or "none"."""
        name = type(model).__name__
        return "lm" if hasattr(model, "lm_head") or name.endswith("LMHeadModel") or name.endswith("ForCausalLM") else "none"

    def lm_head_flops(self, model: "nn.Module", kind: str, seq_len: int, d_model: int, vocab: int) -> int:
        """FLOPs of the head on top of the blocks for one sequence, 2 per multiply-add."""
        t, d = seq_len, d_model
        if kind == "lm":
            return 2 * t * d * vocab
        if kind == "mlm":
            return 2 * t * (d * d + d * vocab)  # the MLM transform, then the decoder
        if kind == "pooler":
            return 2 * d * d  # pooler dense on the [CLS] position only
        return 0
