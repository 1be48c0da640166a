"""Base-model identity in every artefact, and the refusals of mismatched pairs: an adapter on
another model, ``analyze --compare`` of two models, ``prune --criterion coupling`` with another
model's analysis. The "other model" is tiny-llama saved to a folder with one weight changed:
the same shapes (so the shape check alone would pass), a different weights hash."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from headgame.cli import main
from headgame.models.identity import BASE_FILE
from headgame.models.load import load_model
from headgame.train.config import TrainConfig
from headgame.train.loop import Trainer

TEXT = "Heads that read the same stream learn to share the work, and sometimes repeat each other. " * 60
GSM = [{"question": f"Tom has {i} apples and buys 2 more. How many?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"} for i in range(6)]
PRUNE_FAST = ["--loss-tokens", "128", "--seq-len", "32", "--ppl-max-tokens", "128", "--ppl-max-len", "32",
              "--wikitext-window", "32", "--throughput-batch", "1", "--throughput-seq-len", "16", "--repeats", "5",
              "--warmup", "0", "--gen-prompt", "4", "--gen-new-tokens", "2", "--gen-repeats", "1", "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny adapter trained on tiny-llama (with its merged model), a perturbed copy of
    tiny-llama in a folder, and the analysis of tiny-llama."""
    root = tmp_path_factory.mktemp("identity")
    corpus = root / "c.txt"
    corpus.write_text(TEXT)
    cfg = TrainConfig(model="tiny-llama", data=str(corpus), max_tokens=1024, seq_len=32, batch_size=4,
                      out=str(root / "run"), val_every=0, checkpoint_every=5, save_merged=True, schedule="constant")
    Trainer(cfg, progress=False).setup().fit()
    model, tok, layout = load_model("tiny-llama")
    with torch.no_grad():
        layout.o_proj(model, 0).weight[0, 0] += 0.5  # same shapes, different weights
    other = root / "other"
    model.save_pretrained(other, safe_serialization=True)
    tok.save_pretrained(other)
    assert main(analyze_args(corpus, root / "a_base")) == 0
    return root, corpus, other


def analyze_args(corpus, out, *extra, model="tiny-llama"):
    return ["analyze", "--model", str(model), "--data", str(corpus), "--max-tokens", "128", "--seq-len", "32",
            "--batch-size", "2", "--out", str(out), "--no-progress", *extra]


def one_line_error(code, err, *needles):
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in line, line


def test_train_records_the_base_model(world):
    root, _, _ = world
    digest = load_model("tiny-llama").info["hash"]
    adapter = root / "run" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-llama"
    assert json.loads((adapter / BASE_FILE).read_text()) == {"spec": "tiny-llama", "hash": digest}
    assert json.loads((root / "run" / "merged" / BASE_FILE).read_text())["hash"] == digest
    ckpt = sorted((root / "run" / "checkpoints").glob("step-*"))[-1] / "adapter"
    assert json.loads((ckpt / BASE_FILE).read_text())["hash"] == digest
    assert json.loads((ckpt / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-llama"
    assert json.loads((root / "run" / "summary.json").read_text())["base_model_hash"] == digest


@pytest.mark.parametrize("command", ["analyze", "eval"])
def test_adapter_on_another_model_is_refused(world, tmp_path, capsys, command):
    root, corpus, other = world
    adapter = str(root / "run" / "adapter")
    if command == "analyze":
        args = analyze_args(corpus, tmp_path / "x", "--adapter", adapter, model=other)
    else:
        args = ["eval", "--model", str(other), "--adapter", adapter, "--tasks", "wikitext", "--limit", "1",
                "--out", str(tmp_path / "e"), "--no-progress"]
    code = main(args)
    one_line_error(code, capsys.readouterr().err, f"adapter {adapter} was trained on tiny-llama (sha256:",
                   f"not {other} (sha256:", "pass --model tiny-llama")


def test_adapter_on_its_own_model_passes_and_records_hashes(world):
    from headgame.models.adapters import attach_adapter

    root, _, _ = world
    loaded = attach_adapter(load_model("tiny-llama"), str(root / "run" / "adapter"))
    assert loaded.info["adapter"]["trained_on"]["spec"] == "tiny-llama"
    assert loaded.info["adapter_hash"].startswith("sha256:") and loaded.info["adapter"]["hash"] == loaded.info["adapter_hash"]


def test_adapter_without_recorded_base_gets_the_shape_check_only(world, tmp_path):
    from headgame.models.adapters import attach_adapter

    root, _, other = world
    foreign = tmp_path / "foreign"
    shutil.copytree(root / "run" / "adapter", foreign)
    (foreign / BASE_FILE).unlink()  # as made by another tool
    loaded = attach_adapter(load_model(str(other)), str(foreign))  # same shapes: it applies
    assert loaded.info["adapter"]["trained_on"] is None


def test_compare_of_two_models_is_refused(world, tmp_path, capsys):
    root, corpus, other = world
    base = root / "a_base" / "analysis.json"
    data = json.loads(base.read_text())
    foreign = copy.deepcopy(data)
    foreign["model"].update(spec=str(other), hash=load_model(str(other)).info["hash"])
    (tmp_path / "other.json").write_text(json.dumps(foreign))
    code = main(["analyze", "--compare", str(base), str(tmp_path / "other.json"), "--out", str(tmp_path / "cmp")])
    one_line_error(code, capsys.readouterr().err, f"{base} analyses tiny-llama (sha256:", f"analyses {other} (sha256:")
    assert not (tmp_path / "cmp" / "compare.json").exists()


def test_compare_base_with_its_merged_model_passes_and_notes_dropped_layers(world, tmp_path, capsys):
    import yaml

    from headgame.report.summary import fmt_delta

    root, corpus, _ = world
    merged = root / "run" / "merged"
    assert main(analyze_args(corpus, tmp_path / "m", model=merged)) == 0
    after = json.loads((tmp_path / "m" / "analysis.json").read_text())
    assert after["model"]["base"]["spec"] == "tiny-llama"  # the merged model names its base
    after["layers"] = after["layers"][:1]  # layer 1 only in BEFORE
    (tmp_path / "after.json").write_text(json.dumps(after))
    before = root / "a_base" / "analysis.json"
    capsys.readouterr()
    assert main(["analyze", "--compare", str(before), str(tmp_path / "after.json"), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert res["dropped_layers"] == {"only_before": [1], "only_after": []}
    assert "layers dropped: 1 (only in BEFORE)" in out
    page = (tmp_path / "cmp" / "compare.html").read_text()
    mean = fmt_delta(res["summary"]["mean_delta_gamma"])
    assert f"Mean ΔΓ = {mean}" in page and f"<td>{fmt_delta(res['layers'][0]['delta_gamma'])}</td>" in page
    assert "layers dropped: 1 (only in BEFORE)" in page
    config = yaml.safe_load((tmp_path / "cmp" / "config.yaml").read_text())
    assert config["command"] == "analyze --compare"
    assert config["inputs"]["before"]["sha256"].startswith("sha256:") and config["inputs"]["after"]["model"] == str(merged)


def _prune(world, tmp_path, analysis, out="p"):
    root, corpus, _ = world
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("\n".join(json.dumps(r) for r in GSM) + "\n")
    return main(["prune", "--model", "tiny-llama", "--criterion", "coupling", "--analysis", str(analysis),
                 "--score-data", str(corpus), "--gsm8k-file", str(gsm), "--wikitext-file", str(corpus),
                 "--out", str(tmp_path / out), *PRUNE_FAST])


def test_prune_coupling_with_another_models_analysis_is_refused(world, tmp_path, capsys):
    root, _, other = world
    data = json.loads((root / "a_base" / "analysis.json").read_text())
    foreign = copy.deepcopy(data)
    foreign["model"].update(spec=str(other), hash=load_model(str(other)).info["hash"])
    path = tmp_path / "other.json"
    path.write_text(json.dumps(foreign))
    one_line_error(_prune(world, tmp_path, path), capsys.readouterr().err,
                   f"--analysis {path} is of {other} (sha256:", "not tiny-llama (sha256:", f"pass --model {other}")
    adapted = copy.deepcopy(data)
    adapted["model"]["adapter"] = str(root / "run" / "adapter")
    path.write_text(json.dumps(adapted))
    one_line_error(_prune(world, tmp_path, path, "p2"), capsys.readouterr().err, "was made with the adapter")


def test_prune_coupling_with_its_own_analysis_passes(world, tmp_path, capsys):
    root, _, _ = world
    code = _prune(world, tmp_path, root / "a_base" / "analysis.json")
    assert code == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "p" / "pruning.json").read_text())
    assert res["primary"] == "coupling" and res["model"]["hash"] == load_model("tiny-llama").info["hash"]
