"""The public Python API: each command as a function taking a config (or its fields as keyword
arguments) and returning a :class:`~headgame.runs.Result`.

    import headgame
    a = headgame.analyze(model="smollm2-135m", max_tokens=4096, out="A")
    a.summary["gamma_mean"], a.out / "report.html"
    t = headgame.train(model="smollm2-135m", method="game-lora", out="T")
    e = headgame.evaluate(model="smollm2-135m", adapter="T/adapter", tasks="truthfulqa_mc2", limit=20)
    f = headgame.fep(model="smollm2-135m", max_tokens=4096, out="F")
    p = headgame.prune(model="smollm2-135m", criterion="ablation", fraction=0.2, out="P")

The same settings, defaults and validation as the command line, which is generated from the same
config dataclasses. ``progress=True`` shows the progress bars; ``resume`` continues an
interrupted analyze (``True``), fep or prune (``True`` or the run folder) or train (a run folder
or checkpoint) run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from headgame.errors import HeadgameError
from headgame.runs import Result


def _config(cls: type, config: Any, fields: dict[str, Any]):
    if config is None:
        return cls(**fields)
    if not isinstance(config, cls):
        raise HeadgameError(f"expected a {cls.__name__}, got {type(config).__name__}; pass {cls.__name__}(...) or keyword arguments")
    return dataclasses.replace(config, **fields) if fields else config


def _resumable_config(cls: type, config: Any, fields: dict[str, Any], resume: Any, state_file: str):
    """The config of a run that ``resume`` may continue (``True``: the folder ``out``; a path: that
    folder). Without a config, the interrupted run's settings fill in the fields not given."""
    if resume and not isinstance(resume, bool):
        fields = {**fields, "out": str(resume)}
    if resume and config is None:
        from headgame.runs import resume_config

        return resume_config(cls, fields.get("out", cls.out), state_file, fields)
    return _config(cls, config, fields)


def _console(progress: bool):
    if not progress:
        return None
    from rich.console import Console

    return Console(stderr=True)


def analyze(config: Any = None, /, *, progress: bool = False, resume: bool = False, **fields: Any) -> Result:
    """``headgame analyze``: G, Γ, coalitions and redundancy of every layer (AnalyzeConfig fields)."""
    from headgame.analyze.config import AnalyzeConfig
    from headgame.analyze.run import run_analysis

    cfg = _config(AnalyzeConfig, config, fields)
    return Result("analyze", cfg, run_analysis(cfg, resume=bool(resume), progress=progress, console=_console(progress)))


def train(config: Any = None, /, *, progress: bool = False, resume: str | None = None, **fields: Any) -> Result:
    """``headgame train``: GAME-LoRA or a baseline (TrainConfig fields); ``data`` is summary.json."""
    from headgame.train.config import TrainConfig
    from headgame.train.loop import Trainer

    cfg = _config(TrainConfig, config, fields)
    summary = Trainer(cfg, resume=resume, progress=progress, console=_console(progress)).setup().fit()
    return Result("train", cfg, summary)


def evaluate(config: Any = None, /, *, progress: bool = False, resume: Any = None, **fields: Any) -> Result:
    """``headgame eval``: benchmark scores with per-item outcomes (EvalConfig fields)."""
    from headgame.evaluate.config import EvalConfig
    from headgame.evaluate.runner import run_eval

    if resume:
        raise HeadgameError("headgame eval cannot resume; rerun it")
    cfg = _config(EvalConfig, config, fields)
    return Result("eval", cfg, run_eval(cfg, say=lambda msg: None))


def fep(config: Any = None, /, *, progress: bool = False, resume: Any = None, **fields: Any) -> Result:
    """``headgame fep``: the GT-FEP information analysis of every layer (FepConfig fields)."""
    from headgame.fep.config import FepConfig
    from headgame.fep.run import run_fep
    from headgame.fep.state import STATE_FILE

    cfg = _resumable_config(FepConfig, config, fields, resume, STATE_FILE)
    return Result("fep", cfg, run_fep(cfg, resume=bool(resume), progress=progress, console=_console(progress)))


def prune(config: Any = None, /, *, progress: bool = False, resume: Any = None, **fields: Any) -> Result:
    """``headgame prune``: rank, remove and measure heads (PruneConfig fields)."""
    from headgame.prune.config import PruneConfig
    from headgame.prune.run import run_prune
    from headgame.prune.state import STATE_FILE

    cfg = _resumable_config(PruneConfig, config, fields, resume, STATE_FILE)
    return Result("prune", cfg, run_prune(cfg, resume=bool(resume), progress=progress, console=_console(progress)))


def reproduce(config: Any = None, /, *, progress: bool = False, resume: Any = None, **fields: Any) -> Result:
    """``headgame reproduce``: a paper's stages and report (ReproduceConfig fields); ``data`` is report.json's dict.
    A rerun always continues (finished stages are reused), so ``resume`` changes nothing."""
    from headgame.reproduce.config import ReproduceConfig
    from headgame.reproduce.run import run_reproduce

    cfg = _config(ReproduceConfig, config, fields)
    return Result("reproduce", cfg, run_reproduce(cfg, progress=progress, console=_console(progress),
                                                   say=(lambda msg: None) if not progress else None))


_BY_PACKAGE = {"analyze": analyze, "train": train, "evaluate": evaluate, "fep": fep, "prune": prune, "reproduce": reproduce}


def run_command(package: str, config: Any = None, /, **kwargs: Any) -> Result:
    """Entry point of :class:`~headgame.runs.CommandModule`: ``headgame.<package>(...)``."""
    return _BY_PACKAGE[package](config, **kwargs)
