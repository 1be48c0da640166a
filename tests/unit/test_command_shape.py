"""Every command has the same shape: flags generated from its config dataclass (one source of
truth, real help text), the shared run options, and a Python function returning a Result."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

import headgame
from headgame.analyze.config import AnalyzeConfig
from headgame.cli import build_parser, main
from headgame.evaluate.config import EvalConfig
from headgame.fep.config import FepConfig
from headgame.prune.config import PruneConfig
from headgame.train.config import TrainConfig

COMMANDS = {"analyze": AnalyzeConfig, "train": TrainConfig, "eval": EvalConfig, "fep": FepConfig, "prune": PruneConfig}


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_config_field_is_a_flag_with_its_docstring(command):
    cls = COMMANDS[command]
    actions = {a.dest: a for a in _subparser(command)._actions}
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        assert f.name in actions, f"{command}: no flag for {f.name}"
        text = actions[f.name].help or ""
        # a real sentence, not the field name spelled out ("no ldb", "seq len")
        assert len(text) > len(f.name) + 12 and text.lower() != f.name.replace("_", " "), (command, f.name, text)
    for shared in ("threads", "no_progress", "debug", "seed", "dtype", "out", "model", "trust_remote_code"):
        assert shared in actions, f"{command} lacks --{shared.replace('_', '-')}"


def test_shared_settings_mean_the_same_everywhere():
    seeds = {name: cls().seed for name, cls in COMMANDS.items()}
    assert set(seeds.values()) == {42}, seeds
    assert {cls().dtype for cls in COMMANDS.values()} == {"float32"}
    for name in ("analyze", "train"):  # the resumable commands take --resume [DIR]
        action = next(a for a in _subparser(name)._actions if a.dest == "resume")
        assert action.nargs == "?"
    assert "merge_adapter" in {f.name for f in dataclasses.fields(EvalConfig)}
    assert "merge_adapter" in {f.name for f in dataclasses.fields(AnalyzeConfig)}
    assert "save_merged" in {f.name for f in dataclasses.fields(TrainConfig)}


def test_a_flag_left_out_keeps_the_config_default():
    from headgame.cliargs import config_from_args

    args = _subparser("fep").parse_args(["--max-tokens", "512", "--format", "parquet"])
    cfg = config_from_args(args, FepConfig)
    assert cfg.max_tokens == 512 and cfg.table_format == "parquet" and cfg.bootstrap == FepConfig().bootstrap
    args = _subparser("prune").parse_args(["--no-generation", "--fraction", "0.3"])
    cfg = config_from_args(args, PruneConfig)
    assert cfg.generation is False and cfg.fraction == 0.3 and cfg.save_model is True


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path, capsys):
    bad = ["analyze", "--model", "tiny-llama", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(bad) == 2 and capsys.readouterr().err.startswith("error:")
    with pytest.raises(headgame.HeadgameError):
        main([*bad, "--debug"])


def test_bad_threads_is_one_line(tmp_path, capsys):
    code = main(["fep", "--model", "tiny-llama", "--threads", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--threads must be a positive integer" in err and err.count("\n") == 1


def test_python_api_runs_a_command_and_returns_a_result(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"The {i}th sentence of a small test corpus, with words." * 3 for i in range(40)))
    assert callable(headgame.analyze) and callable(headgame.train) and callable(headgame.prune)
    r = headgame.analyze(model="tiny-llama", data=str(corpus), max_tokens=256, seq_len=32, out=str(tmp_path / "A"))
    assert isinstance(r, headgame.Result) and r.command == "analyze" and r.out == tmp_path / "A"
    assert (r.out / "analysis.json").exists() and len(r["layers"]) == 2 and r.summary["gamma_mean"] >= 0
    again = headgame.analyze(r.config, out=str(tmp_path / "B"))  # a config, with a field replaced
    assert again["layers"][0]["G"] == r["layers"][0]["G"]
    with pytest.raises(headgame.HeadgameError, match="expected a AnalyzeConfig"):
        headgame.analyze(FepConfig())


def test_analyze_resume_takes_the_folder(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"Line {i} of the corpus for a resumed run." * 4 for i in range(40)))
    base = ["analyze", "--model", "tiny-llama", "--data", str(corpus), "--max-tokens", "256", "--seq-len", "32", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "A")]) == 0
    assert main([*base, "--resume", str(tmp_path / "A")]) == 0  # DIR given: --out is that folder
    assert (tmp_path / "A" / "analysis.json").exists()
