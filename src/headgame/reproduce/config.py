"""Configuration of ``headgame reproduce PAPER``: one validated dataclass, saved beside the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headgame.config import ConfigMixin, check_choice, check_device, check_dtype, check_field_types, check_seed, nonempty
from headgame.errors import HeadgameError


@dataclass
class ReproduceConfig(ConfigMixin):
    """Configuration of ``headgame reproduce``."""

    paper: str = "game-lora"
    """Which paper to reproduce: game-lora (Table 1, ablations, Γ regression, coalitions) or gt-fep (dividends, pruning curves, healing)."""
    model: str = "smollm2-135m"
    """Model spec for game-lora (packaged name, folder or hub id); the tiny preset uses its tiny model, gt-fep its preset's models."""
    models: str | None = None
    """gt-fep only: comma-separated models instead of the preset's (e.g. smollm2-135m,minilm-l6)."""
    preset: str = "cpu"
    """Budget: tiny (a tiny random model, a minute), cpu (about 3 hours on 2 cores), cpu-full (adds ablations and regression points) or gpu (the paper's protocol)."""
    out: str = "reproduce-out"
    """Output folder: one sub-folder per stage (its stage.json), report.md, report.html, report.json and figures."""
    stages: str = "all"
    """Stage groups to run, comma-separated (game-lora: pretrained, main, ablations, report; gt-fep: fep, curves, heal, beyond, report)."""
    data_dir: str | None = None
    """Folder of the public benchmark files (else $HEADGAME_DATA_DIR)."""
    seed: int = 42
    """Seed of the item draw and the analyses (the training seeds come from the preset)."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16."""
    device: str = "auto"
    """Device to run on: auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N."""
    keep_weights: bool = False
    """Keep the adapters and checkpoints of finished stages under OUT/.work (deleted by default: the small JSON results suffice)."""
    trust_remote_code: bool = False
    """Allow custom modelling code from a hub repository (off unless asked)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded with the config."""

    def __post_init__(self) -> None:
        from headgame.reproduce.presets import PAPERS, preset

        check_field_types(self)
        check_choice(self.paper, "paper", PAPERS)
        for name, example in (("model", "smollm2-135m"), ("out", "reproduce-out"), ("stages", "all")):
            nonempty(getattr(self, name), f"--{name}", example)
        nonempty(self.models, "--models", "smollm2-135m,minilm-l6", optional=True)
        nonempty(self.data_dir, "--data-dir", "DIR", optional=True)
        preset(self.paper, self.preset)
        valid = self.stage_groups_valid()
        unknown = [s for s in self.stage_list() if s not in valid]
        if unknown:
            raise HeadgameError(f"--stages {','.join(unknown)} is not a stage of {self.paper}; choose from all, {', '.join(valid)}")
        if self.models is not None and self.paper != "gt-fep":
            raise HeadgameError("--models lists the models of gt-fep; for game-lora pass one --model")
        check_seed(self.seed)
        check_dtype(self.dtype)
        check_device(self.device)

    def stage_groups_valid(self) -> tuple[str, ...]:
        if self.paper == "game-lora":
            from headgame.reproduce.gamelora import STAGE_GROUPS
        else:
            from headgame.reproduce.gtfep import STAGE_GROUPS
        return STAGE_GROUPS

    def stage_list(self) -> tuple[str, ...]:
        """The chosen stage groups (all of them for ``all``)."""
        items = [s.strip() for s in self.stages.split(",") if s.strip()]
        if items == ["all"]:
            return self.stage_groups_valid()
        return tuple(items)

    NOT_IDENTITY = frozenset({"device", "out", "stages", "keep_weights", "extra"})
