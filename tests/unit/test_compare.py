"""analyze --adapter (unmerged and merged) and analyze --compare on a tiny trained adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from headgame.cli import main
from headgame.train.config import TrainConfig
from headgame.train.loop import Trainer

TEXT = "Coalitions of heads form, split and form again as the weights move. " * 60


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    corpus = root / "c.txt"
    corpus.write_text(TEXT)
    cfg = TrainConfig(model="tiny-llama", data=str(corpus), max_tokens=2048, seq_len=32, batch_size=4, lr=5e-3,
                      out=str(root / "run"), val_every=0, checkpoint_every=0, save_merged=True, schedule="constant")
    Trainer(cfg, progress=False).setup().fit()
    return root, corpus


def _analyze(corpus, out, *extra):
    code = main(["analyze", "--model", "tiny-llama", "--data", str(corpus), "--max-tokens", "256", "--seq-len", "32",
                 "--batch-size", "2", "--out", str(out), "--no-progress", *extra])
    assert code == 0
    return json.loads((out / "analysis.json").read_text())


def test_adapter_unmerged_equals_merged_and_differs_from_base(trained, capsys):
    root, corpus = trained
    base = _analyze(corpus, root / "a0")
    unmerged = _analyze(corpus, root / "a1", "--adapter", str(root / "run" / "adapter"))
    merged = _analyze(corpus, root / "a2", "--adapter", str(root / "run" / "adapter"), "--merge-adapter")
    assert unmerged["model"]["adapter_hash"].startswith("sha256:")
    for lb, lu, lm in zip(base["layers"], unmerged["layers"], merged["layers"]):
        np.testing.assert_allclose(lu["G"], lm["G"], atol=1e-6)
        np.testing.assert_allclose(lu["omega"], lm["omega"], atol=1e-6)
    assert not np.allclose(base["layers"][1]["omega"], unmerged["layers"][1]["omega"], atol=1e-6)


def test_compare_writes_deltas_and_selective_test(trained, capsys):
    root, corpus = trained
    before = _analyze(corpus, root / "b")
    after = _analyze(corpus, root / "c", "--adapter", str(root / "run" / "adapter"))
    out = root / "cmp"
    code = main(["analyze", "--compare", str(root / "b" / "analysis.json"), str(root / "c" / "analysis.json"), "--out", str(out)])
    assert code == 0
    res = json.loads((out / "compare.json").read_text())
    assert [r["layer"] for r in res["layers"]] == [0, 1]
    for r, lb, la in zip(res["layers"], before["layers"], after["layers"]):
        np.testing.assert_allclose(r["delta_G"], np.array(la["G"]) - np.array(lb["G"]), atol=1e-12)
        assert r["delta_gamma"] == pytest.approx(la["gamma"] - lb["gamma"])
        assert r["coalition_labels_after"] == la["coalitions"]["labels"]
        assert "U" in r["selective_coordination"]
    html = (out / "compare.html").read_text()
    assert "data:image/png;base64," in html and (out / "delta_G.png").exists()


def test_bad_adapter_and_compare_inputs(tmp_path, trained, capsys):
    root, corpus = trained
    code = main(["analyze", "--model", "tiny-gpt2", "--data", str(corpus), "--max-tokens", "256", "--seq-len", "32",
                 "--out", str(tmp_path / "x"), "--no-progress", "--adapter", str(root / "run" / "adapter")])
    assert code == 2 and "not tiny-gpt2" in capsys.readouterr().err
    code = main(["analyze", "--model", "tiny-llama", "--data", str(corpus), "--out", str(tmp_path / "y"),
                 "--no-progress", "--adapter", str(tmp_path)])
    assert code == 2 and "has no adapter_config.json" in capsys.readouterr().err
    code = main(["analyze", "--compare", str(tmp_path / "nope.json"), str(tmp_path / "nope2.json"), "--out", str(tmp_path / "z")])
    assert code == 2 and "not found" in capsys.readouterr().err
