"""The configuration of ``headgame eval``: one dataclass, validated with fix-it messages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from headgame.config import (check_device, ConfigMixin, check_choice, check_dtype, check_field_types, check_seed, in_range, nonempty,
                             nonneg_int, positive_int, warn)
from headgame.errors import HeadgameError

_DEFAULTS = {"n_items": 1024, "batch_tokens": 2048, "gen_batch": 16}
_DOLA_LIST = re.compile(r"\s*\d+\s*(,\s*\d+\s*)*")


@dataclass
class EvalConfig(ConfigMixin):
    """Configuration of ``headgame eval`` (saved beside every eval.json)."""

    model: str = "smollm2-135m"
    """Model spec: packaged name, .gguf file, local folder (also a pruned model), hub id, tiny-*."""
    adapter: str | None = None
    """A peft adapter folder (adapter_config.json + weights) applied to the model."""
    merge_adapter: bool = False
    """Merge the adapter into the weights before evaluating (else it runs unmerged)."""
    tasks: str = "all"
    """Comma-separated task names, or 'all'."""
    limit: int | None = None
    """Evaluate at most this many items per task (a prefix of the seeded draw)."""
    n_items: int = 1024
    """Items per task drawn with the seed (docs/formulas.md#sampling: N = 1024)."""
    seed: int = 42
    """Seed of the item draw, HaluEval's right/hallucinated choice and the few-shot pick."""
    data_dir: str | None = None
    """Folder of the public benchmark files (else $HEADGAME_DATA_DIR)."""
    decoding: str = "greedy"
    """Decoding method: greedy, cad, dola or actdec (docs/formulas.md#decoding)."""
    cad_alpha: float = 0.5
    """CAD's contrast weight α."""
    dola_layers: str = "low"
    """DoLa's candidate premature layers: low, high or a list of hidden-state indices."""
    relative_top: float = 0.1
    """Adaptive plausibility threshold of DoLa and ActDec (0 disables)."""
    actdec_alpha: float = 0.5
    """ActDec's entropy weight α."""
    actdec_layer: int | None = None
    """ActDec's info layer (hidden-state index; default round(0.8125 · n_layers))."""
    mmlu_shots: int = 5
    """MMLU few-shot examples from the dev split (0 for zero-shot)."""
    truthfulqa_version: str = "v0"
    """TruthfulQA files: v0 (default, lm-eval's), v1 or 2025."""
    truthfulqa_mc2_rule: str = "lm-eval"
    """Which MC2 answers count as true: lm-eval (default, what the paper ran: those before the
    first false one in the mc2_targets list) or labels (every answer labelled true)."""
    max_length: int | None = None
    """Longest model input in tokens (default: the model's maximum, at most 2048)."""
    batch_tokens: int = 2048
    """Token budget of one scoring batch."""
    gen_batch: int = 16
    """Prompts generated together."""
    max_new_tokens: int | None = None
    """Override of the generation budget of every generation task."""
    chat_template: bool = False
    """Wrap prompts in the model's chat template (default: plain prompts, as for base models)."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16."""
    device: str = "auto"
    """Device to run on: auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N."""
    compile: bool = False
    """torch.compile the model (inductor) before scoring; the first batches of each shape compile."""
    trust_remote_code: bool = False
    """Allow custom modelling code from a hub repository."""
    out: str = "eval-out"
    """Output folder (eval.json, config.yaml)."""
    export_lm_eval: str | None = None
    """Write headgame's own tasks of --tasks (HaluEval, MemoTrap, PopQA, GSM8K ppl) with their sampled
    items as lm-evaluation-harness task configs into this folder (run them with lm_eval --include_path), then exit without scoring."""

    def __post_init__(self) -> None:
        from headgame.evaluate.decoding import DECODING

        check_field_types(self)
        for name, example in (("model", "smollm2-135m"), ("out", "eval-out")):
            nonempty(getattr(self, name), f"--{name}", example)
        nonempty(self.adapter, "--adapter", "DIR", optional=True)
        nonempty(self.data_dir, "--data-dir", "DIR", optional=True)
        nonempty(self.export_lm_eval, "--export-lm-eval", "DIR", optional=True)
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit <= 0):
            raise HeadgameError(f"--limit must be a positive number of items, got {self.limit}; pass e.g. --limit 50, or leave it out for N = {self.n_items}")
        for name, flag in (("n_items", "--n-items"), ("batch_tokens", "--batch-tokens"), ("gen_batch", "--gen-batch")):
            positive_int(getattr(self, name), flag, _DEFAULTS[name])
        if self.limit is not None and self.limit > self.n_items:
            warn(f"--limit {self.limit} is above --n-items {self.n_items}: at most {self.n_items} items per task are evaluated")
        check_seed(self.seed)
        if self.max_length is not None and self.max_length < 8:
            raise HeadgameError(f"--max-length {self.max_length} is too short; pass at least 8 tokens (default: the model's maximum, at most 2048)")
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise HeadgameError(f"--max-new-tokens must be positive, got {self.max_new_tokens}; pass e.g. --max-new-tokens 32")
        if self.mmlu_shots < 0 or self.mmlu_shots > 5:
            raise HeadgameError(f"--mmlu-shots must be 0..5 (the dev split has five questions per subject), got {self.mmlu_shots}; pass e.g. --mmlu-shots 5")
        check_dtype(self.dtype)
        check_device(self.device)
        check_choice(self.truthfulqa_version, "--truthfulqa-version", ("v0", "v1", "2025"))
        if self.merge_adapter and not self.adapter:
            raise HeadgameError("--merge-adapter needs --adapter DIR; pass the adapter folder to merge")
        if self.truthfulqa_mc2_rule not in ("lm-eval", "labels"):
            raise HeadgameError(f"--truthfulqa-mc2-rule {self.truthfulqa_mc2_rule} is unknown; use lm-eval (the default) or labels")
        DECODING.get(self.decoding)  # unknown method: one line with the valid ones
        in_range(self.cad_alpha, "--cad-alpha", 0, example=0.5, why="CAD's contrast weight; 0 is plain greedy")
        in_range(self.actdec_alpha, "--actdec-alpha", 0, example=0.5, why="ActDec's entropy weight; 0 is plain greedy")
        in_range(self.relative_top, "--relative-top", 0, 1, hi_open=True, example=0.1, why="a share of the top probability; 0 disables, the papers use 0.1")
        if self.dola_layers not in ("low", "high") and not _DOLA_LIST.fullmatch(self.dola_layers):
            raise HeadgameError(f"--dola-layers '{self.dola_layers}' is not understood; use low, high or a list like 2,4,6")
        if self.actdec_layer is not None:
            nonneg_int(self.actdec_layer, "--actdec-layer", 24)  # its range is checked once the model is loaded
        self.task_names()  # unknown or empty --tasks: one line with the valid names, before any model is loaded

    def task_names(self) -> list[str]:
        from headgame.evaluate.tasks import TASKS

        items = [t.strip() for t in self.tasks.split(",") if t.strip()]
        if not items:
            raise HeadgameError(f"--tasks is empty; pass 'all' or some of: {', '.join(TASKS.names())}")
        if items == ["all"]:
            return TASKS.names()
        for name in items:
            TASKS.get(name)  # raises with the valid names
        return list(dict.fromkeys(items))
