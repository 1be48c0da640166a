"""Every bad input of every command: exit code 2, one ``error:`` line naming the problem and a fix,
no traceback, and nothing written, because each check runs before any data pass and before the
output folder is claimed.

One table, one row per bad input; ``{name}`` in a row is a file made by the ``files`` fixture,
``{out}`` the row's own --out (it must not exist afterwards).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from headgame.cli import main

TEXT = "The heads of a transformer read the same residual stream and write back into it. " * 40

AN = ["analyze", "--model", "tiny-llama", "--data", "{corpus}", "--max-tokens", "256", "--seq-len", "32",
      "--out", "{out}", "--no-progress"]
TR = ["train", "--model", "tiny-llama", "--data", "{corpus}", "--max-tokens", "512", "--seq-len", "32",
      "--out", "{out}", "--no-progress"]
EV = ["eval", "--model", "tiny-llama", "--tasks", "memotrap", "--limit", "2", "--out", "{out}", "--no-progress"]
FE = ["fep", "--model", "tiny-llama", "--data", "{corpus}", "--max-tokens", "128", "--seq-len", "64",
      "--bootstrap", "0", "--mcmc-steps", "0", "--out", "{out}", "--no-progress"]
PR = ["prune", "--model", "tiny-llama", "--score-data", "{corpus}", "--seq-len", "64", "--ppl-sets", "none",
      "--out", "{out}", "--no-progress"]
RE = ["report", "{analysis}"]

# (row id, argv, phrase the error line must contain); later flags override the base ones
ROWS = [
    # --- analyze
    ("analyze-dtype", AN + ["--dtype", "float8"], "--dtype float8"),
    ("analyze-layers-reversed", AN + ["--layers", "3-1"], "reversed range; write 1-3"),
    ("analyze-layers-empty", AN + ["--layers", ""], "--layers is empty"),
    ("analyze-layers-out-of-range", AN + ["--layers", "7"], "--layers 7 is out of range"),
    ("analyze-layers-negative-out-of-range", AN + ["--layers", "-3"], "--layers -3 is out of range"),
    ("analyze-layers-garbage", AN + ["--layers", "one"], "not understood"),
    ("analyze-layers-empty-item", AN + ["--layers", "0,,1"], "empty item"),
    ("analyze-layers-mixed-range", AN + ["--layers=-1-1"], "mixes a layer counted from the end"),
    ("analyze-heatmap-out-of-range", AN + ["--heatmap-layers", "99"], "--heatmap-layers 99 is out of range"),
    ("analyze-heatmap-not-analysed", AN + ["--layers", "0", "--heatmap-layers", "1"], "not among the analysed"),
    ("analyze-seq-len-1", AN + ["--seq-len", "1"], "--seq-len must be at least 2"),
    ("analyze-seq-len-too-long", AN + ["--seq-len", "512"], "exceeds the model's maximum of 128"),
    ("analyze-max-tokens-0", AN + ["--max-tokens", "0"], "--max-tokens must be a positive integer"),
    ("analyze-max-tokens-not-int", AN + ["--max-tokens", "lots"], "invalid int value"),
    ("analyze-batch-size-negative", AN + ["--batch-size", "-1"], "--batch-size must be a positive integer"),
    ("analyze-checkpoint-every-negative", AN + ["--checkpoint-every", "-1"], "--checkpoint-every"),
    ("analyze-seed-negative", AN + ["--seed", "-1"], "--seed must be an integer"),
    ("analyze-threads-0", AN + ["--threads", "0"], "--threads must be a positive integer"),
    ("analyze-merge-without-adapter", AN + ["--merge-adapter"], "--merge-adapter needs --adapter"),
    ("analyze-adapter-missing", AN + ["--adapter", "{tmp}/no-adapter"], "no adapter_config.json"),
    ("analyze-data-missing", AN + ["--data", "{tmp}/missing.txt"], "not found"),
    ("analyze-data-empty-folder", AN + ["--data", "{emptydir}"], "has no .txt"),
    ("analyze-data-outside-datadir", AN + ["--data", "data:../secret.txt", "--data-dir", "{datadir}"],
     "outside the data directory"),
    ("analyze-data-absolute-in-datadir", AN + ["--data", "data:{secret}", "--data-dir", "{datadir}"],
     "outside the data directory"),
    ("analyze-data-without-datadir", AN + ["--data", "data:corpus"], "no data directory is set"),
    ("analyze-datadir-missing", AN + ["--data", "gutenberg", "--data-dir", "{tmp}/nodir"], "does not exist"),
    ("analyze-fake-gguf", AN + ["--model", "{gguf}"], "not a GGUF file"),
    ("analyze-truncated-safetensors", AN + ["--model", "{trunc}"], "is truncated"),
    ("analyze-model-missing", AN + ["--model", "./nowhere/model"], "not found"),
    ("analyze-gguf-missing", AN + ["--model", "{tmp}/missing.gguf"], "not found"),
    ("analyze-out-under-file", AN + ["--out", "{afile}/out"], "not writable"),
    ("analyze-out-read-only", AN + ["--out", "{ro}/out"], "not writable"),
    ("analyze-compare-missing", ["analyze", "--compare", "{tmp}/a.json", "{tmp}/b.json", "--out", "{out}"], "not found"),
    ("analyze-compare-invalid", ["analyze", "--compare", "{badjson}", "{analysis}", "--out", "{out}"], "not valid JSON"),
    # --- train
    ("train-lr-nan", TR + ["--lr", "nan"], "--lr must be a finite number"),
    ("train-lr-inf", TR + ["--lr", "inf"], "--lr must be a finite number"),
    ("train-lr-negative", TR + ["--lr", "-1"], "learning rate must be positive"),
    ("train-lr-not-a-number", TR + ["--lr", "fast"], "invalid float value"),
    ("train-weight-decay-nan", TR + ["--weight-decay", "nan"], "--weight-decay must be a finite number"),
    ("train-clip-negative", TR + ["--clip", "-1"], "0 disables clipping"),
    ("train-lora-dropout", TR + ["--lora-dropout", "1.5"], "a dropout probability"),
    ("train-warmup-ratio", TR + ["--warmup-ratio", "2"], "--warmup-ratio must be in [0, 1]"),
    ("train-lora-alpha-0", TR + ["--lora-alpha", "0"], "--lora-alpha must be > 0"),
    ("train-lora-r-huge", TR + ["--lora-r", "100000"], "exceeds the smallest dimension LoRA adapts"),
    ("train-lora-r-0", TR + ["--lora-r", "0"], "--lora-r must be a positive integer"),
    ("train-val-every-negative", TR + ["--val-every", "-1"], "0 = only at the end"),
    ("train-val-fraction-1", TR + ["--val-fraction", "1"], "--val-fraction must be in (0, 1)"),
    ("train-method-unknown", TR + ["--method", "gamelora"], "unknown training method 'gamelora'"),
    ("train-design-layers-out-of-range", TR + ["--design-layers", "99"], "--design-layers 99 is out of range"),
    ("train-design-layers-reversed", TR + ["--design-layers", "3-1"], "reversed range"),
    ("train-design-layers-empty", TR + ["--design-layers", ""], "--design-layers is empty"),
    ("train-abt-layers-out-of-range", TR + ["--abt-layers", "-9"], "--abt-layers -9 is out of range"),
    ("train-mixed-precision", TR + ["--mixed-precision", "fp8"], "--mixed-precision fp8 is not valid"),
    ("train-loss-on", TR + ["--loss-on", "prompt"], "--loss-on prompt is not valid; choose one of assistant, all"),
    ("train-lambda-negative", TR + ["--lambda-abt", "-0.5"], "would reward what the method taxes"),
    ("train-rho-ema-1", TR + ["--rho-ema", "1"], "--rho-ema must be in [0, 1)"),
    ("train-grad-accum-0", TR + ["--grad-accum", "0"], "--grad-accum must be a positive integer"),
    ("train-phases-crossed", TR + ["--warmup-end", "0.9", "--cooldown-start", "0.5"], "is after --cooldown-start"),
    ("train-seq-len-too-long", TR + ["--seq-len", "4096"], "exceeds the model's maximum of 128"),
    ("train-truncated-safetensors", TR + ["--model", "{trunc}"], "is truncated"),
    ("train-encoder-model", TR + ["--model", "tiny-bert"], "supports causal language models"),
    ("train-data-outside-datadir", TR + ["--data", "data:../secret.txt", "--data-dir", "{datadir}"],
     "outside the data directory"),
    # --- eval
    ("eval-decoding-unknown", EV + ["--decoding", "contrastive"], "unknown decoding method 'contrastive'"),
    ("eval-tasks-unknown", EV + ["--tasks", "truthfulqa"], "unknown task 'truthfulqa'"),
    ("eval-tasks-empty", EV + ["--tasks", ","], "--tasks is empty"),
    ("eval-fake-gguf", EV + ["--model", "{gguf}"], "not a GGUF file"),
    ("eval-merge-without-adapter", EV + ["--merge-adapter"], "--merge-adapter needs --adapter"),
    ("eval-relative-top-1", EV + ["--relative-top", "1"], "--relative-top must be in [0, 1)"),
    ("eval-cad-alpha-nan", EV + ["--cad-alpha", "nan"], "--cad-alpha must be a finite number"),
    ("eval-cad-alpha-negative", EV + ["--cad-alpha", "-1"], "--cad-alpha must be >= 0"),
    ("eval-actdec-layer-out-of-range", EV + ["--decoding", "actdec", "--actdec-layer", "99"], "--actdec-layer 99 is out of range"),
    ("eval-dola-layers-garbage", EV + ["--decoding", "dola", "--dola-layers", "middle"], "--dola-layers 'middle'"),
    ("eval-limit-0", EV + ["--limit", "0"], "--limit must be a positive number"),
    ("eval-mmlu-shots", EV + ["--mmlu-shots", "9"], "--mmlu-shots must be 0..5"),
    ("eval-max-length-short", EV + ["--max-length", "4"], "--max-length 4 is too short"),
    ("eval-n-items-0", EV + ["--n-items", "0"], "--n-items must be a positive integer"),
    ("eval-encoder-model", EV + ["--model", "tiny-bert"], "is not a causal language model"),
    ("eval-out-under-file", EV + ["--out", "{afile}/out"], "not writable"),
    ("eval-out-read-only", EV + ["--out", "{ro}/out"], "not writable"),
    ("eval-compare-missing", ["eval", "--compare", "{tmp}/a.json", "{tmp}/b.json", "--out", "{out}"], "not found"),
    ("eval-compare-invalid", ["eval", "--compare", "{badjson}", "{badjson}", "--out", "{out}"], "not valid JSON"),
    ("eval-compare-not-eval", ["eval", "--compare", "{analysis}", "{analysis}", "--out", "{out}"], "holds no per-task results"),
    # --- fep
    ("fep-layers-reversed", FE + ["--layers", "3-1"], "reversed range; write 1-3"),
    ("fep-layers-out-of-range", FE + ["--layers", "9"], "--layers 9 is out of range"),
    ("fep-layers-empty", FE + ["--layers", " "], "--layers is empty"),
    ("fep-beta-nan", FE + ["--beta", "nan"], "--beta must be a finite number"),
    ("fep-beta-0", FE + ["--beta", "0"], "--beta must be > 0"),
    ("fep-fraction", FE + ["--fraction", "1.5"], "outside (0, 1)"),
    ("fep-burn-in-negative", FE + ["--mcmc-burn-in", "-1"], "--mcmc-burn-in must be a non-negative integer"),
    ("fep-ablation-tokens-negative", FE + ["--ablation-tokens", "-1"], "--ablation-tokens"),
    ("fep-alphabet", FE + ["--alphabet", "unicode"], "--alphabet unicode is not known"),
    ("fep-format", FE + ["--format", "xlsx"], "--format xlsx is not known"),
    ("fep-full-max-heads", FE + ["--full-max-heads", "17"], "--full-max-heads 17"),
    ("fep-seq-len-too-long", FE + ["--seq-len", "4096"], "exceeds the model's maximum of 128"),
    ("fep-gsm8k-without-datadir", FE + ["--data", "gsm8k"], "no data directory is set"),
    ("fep-data-outside-datadir", FE + ["--data", "data:../secret.txt", "--data-dir", "{datadir}"], "outside the data directory"),
    ("fep-fake-gguf", FE + ["--model", "{gguf}"], "not a GGUF file"),
    ("fep-out-under-file", FE + ["--out", "{afile}/out"], "not writable"),
    # --- prune
    ("prune-criterion-unknown", PR + ["--criterion", "entropy"], "unknown criterion 'entropy'"),
    ("prune-criteria-typo", PR + ["--criteria", "fep,rnadom"], "did you mean random?"),
    ("prune-ppl-sets-empty", PR + ["--ppl-sets", ""], "--ppl-sets must not be empty"),
    ("prune-compare-criteria-unknown", PR + ["--compare-criteria", "--criteria", "fep,magnitude"], "unknown criterion 'magnitude'"),
    ("prune-fraction-0", PR + ["--fraction", "0"], "outside (0, 1)"),
    ("prune-fraction-nan", PR + ["--fraction", "nan"], "--fraction must be a finite number"),
    ("prune-fraction-empties-a-layer", PR + ["--fraction", "0.9"], "emptying a layer"),
    ("prune-per-layer-prunes-none", PR + ["--per-layer", "--fraction", "0.1"], "prunes no head"),
    ("prune-repeats", PR + ["--repeats", "2"], "--repeats 2 is too few"),
    ("prune-ppl-sets", PR + ["--ppl-sets", "ptb"], "--ppl-sets ptb is not known"),
    ("prune-random-seeds-0", PR + ["--random-seeds", "0"], "--random-seeds must be a positive integer"),
    ("prune-compile-without-warmup", PR + ["--compile", "--warmup", "0"], "--compile needs at least one --warmup"),
    ("prune-analysis-missing", PR + ["--criterion", "coupling", "--analysis", "{tmp}/analysis.json"], "--analysis"),
    ("prune-gsm8k-file-missing", PR + ["--ppl-sets", "gsm8k", "--gsm8k-file", "{tmp}/gsm8k.jsonl"], "--gsm8k-file"),
    ("prune-fake-gguf", PR + ["--model", "{gguf}"], "not a GGUF file"),
    ("prune-out-under-file", PR + ["--out", "{afile}/out"], "not writable"),
    # --- report
    ("report-folder", ["report", "{emptydir}"], "is a folder without analysis.json"),
    ("report-missing", ["report", "{tmp}/analysis.json"], "not found"),
    ("report-invalid", ["report", "{badjson}"], "not valid JSON"),
    ("report-not-an-analysis", ["report", "{evaljson}"], "holds no per-layer results"),
    ("report-heatmap-garbage", RE + ["--heatmap-layers", "x"], "--heatmap-layers 'x' is not understood"),
    ("report-heatmap-out-of-range", RE + ["--heatmap-layers", "99"], "--heatmap-layers 99 is out of range"),
    ("report-heatmap-reversed", RE + ["--heatmap-layers", "1-0"], "reversed range"),
    ("report-out-under-file", RE + ["--out", "{afile}/out"], "not writable"),
    ("report-out-read-only", RE + ["--out", "{ro}/out"], "not writable"),
    # --- models
    ("models-unknown-flag", ["models", "--all"], "unrecognized arguments: --all"),
    ("models-extra-argument", ["models", "smollm2-135m"], "unrecognized arguments"),
    ("unknown-command", ["anlyze"], "invalid choice"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The inputs every row may name, made once: text, corrupt models, a data directory, result files."""
    from headgame.models.load import load_model

    root = tmp_path_factory.mktemp("inputs")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    gguf = root / "fake.gguf"
    gguf.write_bytes(os.urandom(4096))  # random bytes: no GGUF magic
    trunc = root / "truncated-model"
    model, tok, _ = load_model("tiny-llama")
    model.save_pretrained(trunc, safe_serialization=True)
    tok.save_pretrained(trunc)
    weights = trunc / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted copy
    datadir = root / "datadir"
    (datadir / "corpus").mkdir(parents=True)
    (datadir / "corpus" / "a.txt").write_text(TEXT)
    secret = root / "secret.txt"
    secret.write_text(TEXT)  # beside the data directory: data:../secret.txt must not reach it
    empty = root / "empty-folder"
    empty.mkdir()
    bad = root / "bad.json"
    bad.write_text("{not json")
    analysis = root / "run" / "analysis.json"
    analysis.parent.mkdir()
    analysis.write_text(json.dumps({"model": {"n_layers": 2}, "layers": [{"layer": 0}, {"layer": 1}]}))
    evaljson = root / "eval.json"
    evaljson.write_text(json.dumps({"tasks": {"memotrap": {"score": 0.5}}}))
    afile = root / "a-file"
    afile.write_text("x")
    ro = root / "read-only"
    ro.mkdir()
    ro.chmod(0o500)
    (root / "cache").mkdir()
    yield {"root": root, "corpus": corpus, "gguf": gguf, "trunc": trunc, "datadir": datadir, "secret": secret,
           "emptydir": empty, "badjson": bad, "analysis": analysis, "evaljson": evaljson, "afile": afile, "ro": ro}
    ro.chmod(0o700)


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folders``: (size, modification time), to prove a row wrote nothing."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv, phrase", [pytest.param(a, p, id=i) for i, a, p in ROWS])
def test_bad_input(argv, phrase, files, tmp_path, capsys, monkeypatch):
    if "{ro}" in " ".join(argv) and os.access(files["ro"], os.W_OK):
        pytest.skip("running as root: permissions do not stop writes (the under-a-file rows cover root)")
    monkeypatch.delenv("HEADGAME_DATA_DIR", raising=False)
    monkeypatch.setenv("HEADGAME_CACHE", str(files["root"] / "cache"))
    out = tmp_path / "out"
    names = {**{k: str(v) for k, v in files.items()}, "tmp": str(tmp_path), "out": str(out)}
    args = [a.format(**names) for a in argv]
    before = _snapshot(files["root"], tmp_path)
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert phrase in lines[0], lines[0]
    assert ";" in lines[0], f"no fix after the problem: {lines[0]}"
    assert not out.exists(), f"{out} was created"
    assert _snapshot(files["root"], tmp_path) == before, "a file was written or changed"


def test_table_covers_every_command():
    commands = {argv[0] for _, argv, _ in ROWS}
    assert {"analyze", "train", "eval", "fep", "prune", "report", "models"} <= commands
    assert len(ROWS) >= 45 and len({i for i, _, _ in ROWS}) == len(ROWS)


# --- every field of every config: nan/inf floats, negative or fractional counts, empty texts


def _config_classes():
    from headgame.analyze.config import AnalyzeConfig
    from headgame.evaluate.config import EvalConfig
    from headgame.fep.config import FepConfig
    from headgame.prune.config import PruneConfig
    from headgame.train.config import TrainConfig

    return AnalyzeConfig, TrainConfig, EvalConfig, FepConfig, PruneConfig


BAD_VALUES = {"float": [float("nan"), float("inf"), -float("inf")], "int": [-1, 1.5, True], "str": ["", 3],
              "bool": ["yes"]}


def test_every_config_field_refuses_nonsense():
    import dataclasses

    from headgame.errors import HeadgameError

    checked = 0
    for cls in _config_classes():
        for f in dataclasses.fields(cls):
            for value in BAD_VALUES.get(str(f.type).removesuffix(" | None"), []):
                with pytest.raises(HeadgameError) as err:
                    cls(**{f.name: value})
                named = (f.name, f.name.replace("_", "-"), "--format")  # fep's --table-format is also --format
                assert any(n in str(err.value) for n in named), (cls.__name__, f.name, err.value)
                checked += 1
    assert checked > 150


# --- the legal neighbours of the bad inputs work


def test_negative_layers_count_from_the_end():
    from headgame.models.layout import parse_layers

    assert parse_layers("-1", 30) == [29]
    assert parse_layers("-3--1", 30) == [27, 28, 29]
    assert parse_layers("5,-1,0-1", 30) == [0, 1, 5, 29]
    assert parse_layers("2,0", 3, ordered=True) == [2, 0] and parse_layers(None, 2) == [0, 1]
    assert parse_layers("all") is None and parse_layers("10-12") == [10, 11, 12]


def test_default_seq_len_fits_the_tiny_model(files, tmp_path, capsys):
    out = tmp_path / "A"
    code = main(["analyze", "--model", "tiny-llama", "--data", str(files["corpus"]), "--max-tokens", "256",
                 "--no-redundancy", "--out", str(out), "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 0, err
    assert err == ["note: --seq-len not given: using 128, the model's maximum positions (the default 256 does not fit)"]
    assert json.loads((out / "analysis.json").read_text())["config"]["seq_len"] == 128


def test_val_every_0_validates_only_at_the_end(files, tmp_path, capsys):
    out = tmp_path / "T"
    code = main(["train", "--model", "tiny-llama", "--method", "ce", "--data", str(files["corpus"]), "--max-tokens", "512",
                 "--seq-len", "32", "--batch-size", "4", "--val-every", "0", "--checkpoint-every", "0",
                 "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) > 1 and ["val_loss" in r for r in records] == [False] * (len(records) - 1) + [True]
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())


def test_fep_says_what_the_ablation_check_costs(files, tmp_path, capsys):
    code = main([a.format(corpus=files["corpus"], out=tmp_path / "F") for a in FE])
    err = capsys.readouterr().err
    assert code == 0, err
    # tiny-llama: 2 x 4 heads + 1 = 9 passes; --ablation-tokens defaults to min(256, 128 // 16) = 8
    assert "note: the ablation check runs 2 x 4 heads + 1 = 9 forward passes" in err and "--ablation-tokens 8" in err


def test_large_lora_rank_is_warned(capsys):
    from headgame.train.lora import check_rank

    check_rank(300, 4096)
    assert capsys.readouterr().err.startswith("warning: --lora-r 300 is unusually large")
