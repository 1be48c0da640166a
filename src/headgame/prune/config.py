"""Configuration of ``headgame prune``: one validated dataclass, saved beside the results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headgame.errors import HeadgameError
from headgame.config import check_device, ConfigMixin, check_dtype, check_field_types, check_seed, nonempty, nonneg_int, positive_int

PPL_SETS = ("gsm8k", "wikitext2")
DEFAULT_COMPARE = "fep,random,attention-entropy,michel,ablation"


@dataclass
class PruneConfig(ConfigMixin):
    """Configuration of ``headgame prune`` (docs/formulas.md#pruning)."""

    model: str = "smollm2-135m"
    """Model spec: packaged name, .gguf file, local folder or hub id."""
    criterion: str = "fep"
    """Head-scoring criterion (the registry in headgame.prune.criteria)."""
    fraction: float = 0.2
    """Share of heads to prune, in (0, 1): ⌊fraction · H_total⌉ heads (the saved model's and the table's fraction)."""
    fractions: str | None = None
    """Comma-separated fractions for pruning curves (e.g. 0.1,0.2,0.3); --fraction is added if absent. Scores are computed once."""
    selection: str = "head"
    """head (rank single query heads) or group (GQA: remove whole KV groups, a group scored by its heads' mean key)."""
    iterative_step: float = 0.0
    """Iterative pruning: remove this share of the heads, re-score the rest with those heads gated off, repeat (0 = one-shot)."""
    per_layer: bool = False
    """Prune ⌊fraction · H_ℓ⌉ heads in every layer instead of ranking globally."""
    per_layer_rounding: str = "nearest"
    """With --per-layer: nearest (half up) or ceil (⌈fraction · H_ℓ⌉, as the GT-FEP authors' code: 3 of 12 at 20 %)."""
    compare_criteria: bool = False
    """Also prune by every criterion in ``criteria`` at the same budget and compare."""
    criteria: str = DEFAULT_COMPARE
    """Comma-separated criteria for --compare-criteria."""
    random_seeds: int = 5
    """Seeds of the random criterion (mean ± sd reported)."""
    score_data: str = "auto"
    """Text for scoring heads: gsm8k, auto (gsm8k if the data directory has it, else the packaged corpus) or any analyze source."""
    text_field: str = "text"
    """Field holding the text in JSON/JSONL records."""
    data_dir: str | None = None
    """Folder of the public data files (else $HEADGAME_DATA_DIR)."""
    gsm8k_format: str = "qa"
    """GSM8K text format: qa, answer or question (docs/formulas.md#perplexity)."""
    score_tokens: int = 16384
    """Token budget of the GT-FEP analysis behind the information criteria."""
    loss_tokens: int = 512
    """Token budget of the loss-based criteria (ablation, michel) and attention-entropy / coupling."""
    seq_len: int = 256
    """Tokens per scoring sequence."""
    batch_size: int = 4
    """Sequences per forward pass while scoring and evaluating."""
    analysis: str | None = None
    """analysis.json of headgame analyze for the coupling criterion (else G is computed on the loss text)."""
    alphabet: str = "absolute"
    """Argmax-key alphabet of the GT-FEP analysis."""
    miller_madow: bool = False
    """Miller–Madow correction of the entropies."""
    ppl_sets: str = "gsm8k,wikitext2"
    """Perplexity sets: gsm8k (test, docs/formulas.md#perplexity format) and/or wikitext2 (raw test), from the data directory."""
    gsm8k_file: str | None = None
    """GSM8K JSONL to score instead of DATA_DIR/gsm8k/test.jsonl."""
    wikitext_file: str | None = None
    """WikiText text file instead of DATA_DIR/wikitext2/wiki.test.raw.xz."""
    ppl_max_tokens: int = 8192
    """Token budget per perplexity set (0 = the whole set: 1,319 GSM8K problems, all of WikiText-2 test)."""
    ppl_max_len: int = 1024
    """Maximum tokens of one GSM8K text."""
    wikitext_window: int = 512
    """Non-overlapping WikiText window length."""
    mlm_proxy: bool = False
    """Encoders without an MLM head (MiniLM): pseudo-perplexity through the tied word embeddings h·Eᵀ, labelled a proxy (else none)."""
    pseudo_ppl_seeds: int = 5
    """Maskings of the BERT pseudo-perplexity."""
    flops_seq_len: int = 256
    """Sequence length of the FLOPs counts (analytic and measured)."""
    throughput_batch: int = 8
    """Sequences per timed forward pass."""
    throughput_seq_len: int = 256
    """Tokens per timed sequence."""
    warmup: int = 1
    """Untimed warm-up rounds."""
    repeats: int = 5
    """Timed rounds (medians; at least 5)."""
    compile: bool = False
    """Time the forward pass with torch.compile (inductor) for every model instead of eager mode."""
    generation: bool = True
    """Also time greedy generation (causal models)."""
    gen_prompt: int = 128
    """Prompt tokens for generation timing."""
    gen_new_tokens: int = 128
    """New tokens per generation."""
    gen_repeats: int = 3
    """Timed generation rounds."""
    heal_tokens: int = 0
    """LoRA fine-tuning tokens for the pruned model of the primary criterion (merged back) and, as the control, the unpruned model (0 = none)."""
    heal_method: str = "ce"
    """Training method of the healing run: ce or game-lora."""
    heal_data: str = "auto"
    """Training text of the healing run (a headgame train --data source; auto: its default)."""
    save_model: bool = True
    """Save the pruned model of the primary criterion to OUT/model (safetensors + record)."""
    out: str = "prune-out"
    """Output folder."""
    seed: int = 42
    """Seed of sampling, random pruning (seeds seed..seed+random_seeds−1) and timing batches."""
    dtype: str = "float32"
    """Model dtype (perplexity, FLOPs and timing)."""
    device: str = "auto"
    """Device to run on: auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N."""
    trust_remote_code: bool = False
    """Allow custom modelling code from a hub repository."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded with the config."""

    def __post_init__(self) -> None:
        from headgame.prune.criteria import get_criterion, parse_criteria
        from headgame.measure.select import ROUNDINGS, check_fraction

        check_field_types(self)
        for name, example in (("model", "smollm2-135m"), ("score_data", "auto"), ("text_field", "text"), ("out", "prune-out")):
            nonempty(getattr(self, name), f"--{name.replace('_', '-')}", example)
        nonempty(self.ppl_sets, "--ppl-sets", "none")  # 'none' says no perplexity set; an empty value is not meant
        nonempty(self.fractions, "--fractions", "0.1,0.2,0.3", optional=True)
        for name in ("data_dir", "analysis", "gsm8k_file", "wikitext_file"):
            nonempty(getattr(self, name), f"--{name.replace('_', '-')}", "PATH", optional=True)
        check_seed(self.seed)
        check_fraction(self.fraction)
        for f in self.fraction_list:
            check_fraction(f)
        if self.selection not in ("head", "group"):
            raise HeadgameError(f"--selection {self.selection} is not valid; choose head or group")
        if not isinstance(self.iterative_step, (int, float)) or not 0.0 <= self.iterative_step < 1.0:
            raise HeadgameError(f"--iterative-step {self.iterative_step} is outside [0, 1); pass e.g. 0.05 (0 = one-shot)")
        if self.iterative_step and (self.per_layer or self.selection != "head"):
            raise HeadgameError("--iterative-step works with global head selection; drop --per-layer / --selection group, or pass --iterative-step 0")
        nonneg_int(self.heal_tokens, "--heal-tokens", 200000, "0 = no healing")
        if self.heal_method not in ("ce", "game-lora"):
            raise HeadgameError(f"--heal-method {self.heal_method} is not valid; choose ce or game-lora")
        nonempty(self.heal_data, "--heal-data", "auto")
        if self.per_layer_rounding not in ROUNDINGS:
            raise HeadgameError(f"--per-layer-rounding {self.per_layer_rounding} is not valid; choose one of {', '.join(ROUNDINGS)}")
        get_criterion(self.criterion)
        parse_criteria(self.criteria)  # a typo is reported even without --compare-criteria
        positive_int(self.random_seeds, "--random-seeds", 5)
        positive_int(self.score_tokens, "--score-tokens", 16384)
        positive_int(self.loss_tokens, "--loss-tokens", 512)
        positive_int(self.seq_len, "--seq-len", 256)
        positive_int(self.batch_size, "--batch-size", 4)
        nonneg_int(self.ppl_max_tokens, "--ppl-max-tokens", 8192, "0 = the whole set")
        positive_int(self.ppl_max_len, "--ppl-max-len", 1024)
        positive_int(self.wikitext_window, "--wikitext-window", 512)
        positive_int(self.pseudo_ppl_seeds, "--pseudo-ppl-seeds", 5)
        positive_int(self.flops_seq_len, "--flops-seq-len", 256)
        positive_int(self.throughput_batch, "--throughput-batch", 8)
        positive_int(self.throughput_seq_len, "--throughput-seq-len", 256)
        nonneg_int(self.warmup, "--warmup", 2)
        positive_int(self.gen_prompt, "--gen-prompt", 128)
        positive_int(self.gen_new_tokens, "--gen-new-tokens", 128)
        positive_int(self.gen_repeats, "--gen-repeats", 3)
        if self.compile and self.warmup < 1:
            raise HeadgameError("--compile needs at least one --warmup round (compilation happens there); pass --warmup 1")
        if not isinstance(self.repeats, int) or self.repeats < 5:
            raise HeadgameError(f"--repeats {self.repeats} is too few for a stable median; use at least 5")
        bad = [s for s in self.ppl_set_list if s not in PPL_SETS]
        if bad:
            raise HeadgameError(f"--ppl-sets {','.join(bad)} is not known; use gsm8k and/or wikitext2 (or 'none')")
        if self.alphabet not in ("absolute", "relative"):
            raise HeadgameError(f"--alphabet {self.alphabet} is not known; use absolute or relative")
        if self.gsm8k_format not in ("qa", "answer", "question"):
            raise HeadgameError(f"--gsm8k-format {self.gsm8k_format} is not known; use qa, answer or question")
        check_dtype(self.dtype)
        check_device(self.device)

    NOT_IDENTITY = frozenset({"device", "out", "extra"})

    @property
    def fraction_list(self) -> list[float]:
        """The fractions measured, ascending: --fractions plus --fraction."""
        try:
            given = [float(x) for x in self.fractions.split(",") if x.strip()] if self.fractions else []
        except ValueError:
            raise HeadgameError(f"--fractions {self.fractions} is not a comma-separated list of numbers; pass e.g. 0.1,0.2,0.3") from None
        return sorted({round(f, 6) for f in given + [self.fraction]})

    @property
    def ppl_set_list(self) -> list[str]:
        if not self.ppl_sets or self.ppl_sets.strip().lower() == "none":
            return []
        return [s.strip() for s in self.ppl_sets.split(",") if s.strip()]

    def criteria_list(self) -> list[str]:
        """The primary criterion first, then the comparison criteria."""
        from headgame.prune.criteria import parse_criteria

        names = [self.criterion]
        if self.compare_criteria:
            names += [n for n in parse_criteria(self.criteria) if n != self.criterion]
        return names
