"""The presets of ``headgame reproduce``: how much of each paper's protocol a run affords.

* ``tiny``: a tiny random model and a few steps, about a minute; the tests run it.
* ``cpu``: the main table (3 seeds of both methods) sized for about 3 hours on 2 CPU cores.
* ``cpu-full``: ``cpu`` plus the ablations and intermediate checkpoints as Γ-regression points.
* ``gpu``: the paper's protocol (the GAME-LoRA specification §5-6: 20M tokens, seq 1024, batch 16, N = 1024,
  seeds 42-44) for a machine with an accelerator.

Every number here is a default of ours ([D]) unless the spec names it; the report prints the
preset it ran with, so a reader sees the budget beside the results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from headgame.errors import HeadgameError

PAPER_TASKS = ("halueval_dialogue", "halueval_qa", "halueval_summarization", "memotrap", "truthfulqa_mc1",
               "truthfulqa_mc2", "mmlu", "nq_open", "popqa", "wikitext", "winogrande")
"""The eleven columns of the paper's Table 1 (the GAME-LoRA specification §6.2), in its order."""

ABLATIONS = ("no-ldb", "no-abt", "uniform-weights", "inverse-weights", "zero-target", "misaligned-layers",
             "multi-layer", "sum-arbitration", "constant-schedule")
"""The ablations of the GAME-LoRA specification §8 (and the issue's misaligned-layers variant)."""


@dataclass(frozen=True)
class GameLoraPreset:
    name: str
    model: str | None  # None: the --model given (tiny forces its tiny model)
    seeds: tuple[int, ...]
    train_tokens: int
    seq_len: int
    batch_size: int
    grad_accum: int
    lr: float
    n_items: int  # per task, the same seeded draw for every model
    mmlu_shots: int
    analyze_tokens: int  # the fixed held-out set of the design layer's analysis
    analyze_seq_len: int
    ablations: tuple[str, ...]
    checkpoints: int  # intermediate checkpoints per model evaluated as extra Γ-regression points
    why: str
    tasks: tuple[str, ...] = PAPER_TASKS
    gen_batch: int = 8
    train_data: str = "gutenberg"  # the public-domain training corpus of the data directory
    analyze_data: str = "default"  # the packaged corpus: held out from training, the same for every model
    pretrained: bool = True  # also evaluate and analyse the model before any training
    wikitext_docs: int = 62  # WikiText-2 documents (the first of the seeded draw; 62 = the whole test set)
    poa_batches: int = 1  # held-out batches of the PoA curvature measurement (Hessian-vector products)
    poa_batch_size: int = 2
    poa_seq_len: int = 128
    poa_lanczos_steps: int = 10

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GtFepPreset:
    name: str
    models: tuple[str, ...]
    fractions: tuple[float, ...]
    criteria: tuple[str, ...]
    random_seeds: int
    fep_tokens: int
    seq_len: int
    ppl_tokens: int
    heal_tokens: int  # 0: no healing stage
    why: str
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


GAME_LORA: dict[str, GameLoraPreset] = {
    "tiny": GameLoraPreset(
        "tiny", "tiny-llama", (42, 43), train_tokens=1024, seq_len=32, batch_size=4, grad_accum=1, lr=3e-3, n_items=4,
        mmlu_shots=0, analyze_tokens=256, analyze_seq_len=32, ablations=("no-ldb", "misaligned-layers", "multi-layer"),
        checkpoints=1, gen_batch=4, train_data="default", wikitext_docs=2, poa_seq_len=16,
        why="a tiny random model and a few steps: every stage and every table of the report in about a minute (the tests); "
            "three ablations, those whose layer settings differ from the main runs"),
    "cpu": GameLoraPreset(
        "cpu", None, (42, 43, 44), train_tokens=120_000, seq_len=256, batch_size=4, grad_accum=2, lr=3e-4, n_items=100,
        mmlu_shots=0, analyze_tokens=16_384, analyze_seq_len=256, ablations=(), checkpoints=0, pretrained=False,
        wikitext_docs=16,
        why="6 models (ce and game-lora × 3 seeds) of SmolLM2-135M on 2 CPU cores in about 2.5 hours (measured: "
            "2.46 h for the six stages, 20.7-24.2 min each on a quiet machine: 8-11.5 to train, 11.5 to evaluate, 1 to "
            "analyse, 0.3 for the PoA constants). Training: 120k tokens each "
            "(55 steps of 4 × 256 × 2 tokens; ~11 min for game-lora at the measured 5.5 s per 1,024-token step against "
            "4.1 s for ce). Evaluation: the first 100 items of the spec's seeded "
            "N = 1024 draw per task, so the items are a subset of the gpu preset's; one accuracy near 0.5 then has a 95 % "
            "interval of about ±10 points, but every model answers the same items and the paired tests pool 3 seeds "
            "(300 pairs a task); WikiText-2 on the first 16 of its 62 documents (~70k tokens); MMLU 0-shot (5-shot "
            "prompts are 6× longer). G at the design layer on 16k held-out tokens of the packaged corpus"),
    "cpu-full": GameLoraPreset(
        "cpu-full", None, (42, 43, 44), train_tokens=120_000, seq_len=256, batch_size=4, grad_accum=2, lr=3e-4, n_items=100,
        mmlu_shots=0, analyze_tokens=16_384, analyze_seq_len=256, ablations=ABLATIONS, checkpoints=2, wikitext_docs=16,
        why="the cpu preset plus the pretrained model, the 9 ablations (1 seed each) and 2 intermediate checkpoints per "
            "model as extra points of the Γ-vs-hallucination regression: about 5 × the cpu preset's time"),
    "gpu": GameLoraPreset(
        "gpu", None, (42, 43, 44), train_tokens=20_000_000, seq_len=1024, batch_size=16, grad_accum=1, lr=3e-4,
        n_items=1024, mmlu_shots=5, analyze_tokens=65_536, analyze_seq_len=1024, ablations=ABLATIONS, checkpoints=2,
        gen_batch=32, poa_batches=4, poa_batch_size=4, poa_seq_len=512, poa_lanczos_steps=20,
        why="the paper's protocol: 20M tokens, seq 1024, batch 16, lr 3e-4, N = 1024 items per task with "
            "seed 42, MMLU 5-shot, the Γ set 64 × 1024 tokens"),
}

MINILM_PROXY = {"prune": {"mlm_proxy": True, "pseudo_ppl_seeds": 2}}
"""all-MiniLM-L6-v2 ships no MLM head: its pruning curves use the tied-embedding proxy (labelled so)."""

GT_FEP: dict[str, GtFepPreset] = {
    "tiny": GtFepPreset(
        "tiny", ("tiny-llama", "tiny-bert"), (0.25, 0.5), ("fep", "gtfep-authors", "random", "ablation", "michel"),
        random_seeds=3, fep_tokens=512, seq_len=32, ppl_tokens=256, heal_tokens=512,
        why="tiny random models of both families: every stage and table in about a minute (the tests)"),
    "cpu": GtFepPreset(
        "cpu", ("smollm2-135m", "minilm-l6", "gemma3-270m"), (0.05, 0.1, 0.2, 0.3, 0.4),
        ("fep", "gtfep-authors", "random", "ablation", "michel"), random_seeds=3, fep_tokens=16_384, seq_len=128,
        ppl_tokens=4096, heal_tokens=100_000, extra=dict(MINILM_PROXY),
        why="the three packaged models; the criteria the paper and its authors' code name, with random over 3 seeds; "
            "4,096 perplexity tokens per set (MiniLM, which has no MLM head: the tied-embedding pseudo-perplexity "
            "proxy, 2 maskings); healing on 100k tokens at 20 % of the causal models (the pruned model and the "
            "unpruned control each: 200k tokens took 73 min for the pair on SmolLM2, benchmarks/prune_heal.py, and "
            "Gemma-3-270M's 262k-token vocabulary makes a step about twice as costly, so 200k would add ~4 h)"),
    "cpu-full": GtFepPreset(
        "cpu-full", ("smollm2-135m", "minilm-l6", "gemma3-270m"), (0.05, 0.1, 0.2, 0.3, 0.4),
        ("fep", "gtfep-authors", "random", "ablation", "michel", "attention-entropy", "fep-mm", "fep-cs", "fep-layer",
         "shapley-exact"), random_seeds=3, fep_tokens=16_384, seq_len=128, ppl_tokens=4096, heal_tokens=200_000,
        extra=dict(MINILM_PROXY), why="the cpu preset with every criterion headgame has"),
    "gpu": GtFepPreset(
        "gpu", ("smollm2-135m", "minilm-l6", "gemma3-270m"), (0.05, 0.1, 0.2, 0.3, 0.4),
        ("fep", "gtfep-authors", "random", "ablation", "michel", "attention-entropy", "fep-mm", "fep-cs", "fep-layer",
         "shapley-exact"), random_seeds=5, fep_tokens=65_536, seq_len=128, ppl_tokens=32_768, heal_tokens=2_000_000,
        why="larger samples on an accelerator: 64k symbol tokens, 32k perplexity tokens, 5 random seeds, 2M healing tokens"),
}

PRESETS = {"game-lora": GAME_LORA, "gt-fep": GT_FEP}
PAPERS = tuple(PRESETS)


def preset(paper: str, name: str) -> GameLoraPreset | GtFepPreset:
    if paper not in PRESETS:
        raise HeadgameError(f"unknown paper {paper!r}; choose one of {', '.join(PAPERS)} (headgame reproduce game-lora ...)")
    table = PRESETS[paper]
    if name not in table:
        raise HeadgameError(f"unknown --preset {name!r} for {paper}; choose one of {', '.join(table)}")
    return table[name]
