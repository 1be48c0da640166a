"""Tests of headgame.report on synthetic analysis dicts (no model, no torch)."""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headgame.errors import HeadgameError
from headgame.report import (
    choose_heatmap_layers,
    plot_gamma_by_layer,
    plot_interaction_heatmaps,
    plot_matrix_delta,
    plot_redundancy_by_layer,
    print_summary,
    render_report_html,
    summary_table,
    write_report,
)
from headgame.report.summary import fmt_num

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _unit_gram(rng: np.random.Generator, h: int, labels: np.ndarray, strength: float) -> np.ndarray:
    """Cosine Gram matrix of h vectors that share a direction within each coalition."""
    centres = rng.normal(size=(labels.max() + 1, 32))
    v = strength * centres[labels] + rng.normal(size=(h, 32))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v @ v.T


def make_analysis(n_layers: int = 4, n_heads: int = 5, seed: int = 0) -> dict:
    """A synthetic analysis dict shaped like analysis.json: PSD G with unit diagonal.

    Layer 1 has no redundancy results; layer 2 has p = None with a note.
    """
    rng = np.random.default_rng(seed)
    h = n_heads
    layers = []
    for layer in range(n_layers):
        k = 2 + layer % 2
        labels = np.sort(rng.permutation(np.arange(h) % k))[rng.permutation(h)]
        strength = 0.3 + 1.2 * math.sin(math.pi * (layer + 0.5) / n_layers) ** 2
        omega = _unit_gram(rng, h, labels, strength)
        rho = _unit_gram(rng, h, labels, 0.5 * strength)
        g = omega * rho  # Schur product: PSD, unit diagonal
        off = g - np.eye(h)
        gamma = float(np.linalg.norm(off))
        entry = {
            "layer": layer,
            "n_tokens": 4096,
            "G": g.tolist(),
            "omega": omega.tolist(),
            "rho": rho.tolist(),
            "gamma": gamma,
            "gamma_norm": gamma / math.sqrt(h * (h - 1)),
            "gamma_abs": float(np.abs(off).sum() / (h * (h - 1))),
            "ldb": float(-np.log(np.clip(np.linalg.eigvalsh(g + 0.01 * np.eye(h)), 0.01, None)).sum()),
            "poa_proxy": {"gamma_sq": gamma**2, "c": 0.01, "proxy": 1 / (1 - 0.01 * gamma**2),
                          "assumption": "c = 0.01 stated, not fitted"},
            "coalitions": {"k": k, "labels": labels.tolist(), "sizes": np.bincount(labels).tolist(),
                           "silhouette": {"2": 0.3, "3": 0.1}, "method": "spectral biclustering"},
            "selective_coordination": {"U": 12.0, "p": float(rng.uniform(1e-4, 0.5)), "n_within": 4,
                                       "n_between": 6, "within_mean": 0.2, "between_mean": 0.05,
                                       "effect_size": 0.4},
            "redundancy": {"aligned_corr": (0.5 * g).tolist(), "l_abt_uniform": 60.0 + layer,
                           "l_abt_adaptive": 58.0 + layer, "redundancy_index": 0.05 + 0.01 * layer},
        }
        layers.append(entry)
    if n_layers > 1:
        del layers[1]["redundancy"]
    if n_layers > 2:
        layers[2]["selective_coordination"].update(p=None, U=None, note="one coalition of size 1")
    gammas = [lay["gamma"] for lay in layers]
    return {
        "headgame_version": "0.1.0",
        "created": "2026-11-23T12:00:00Z",
        "config": {"model": "smollm2-135m", "data": "<script>alert('x')</script>", "max_tokens": 4096,
                   "seq_len": 256, "batch_size": 4, "layers": "all"},
        "versions": {"python": "3.11.7", "torch": "2.13.0", "transformers": "5.23.0", "headgame": "0.1.0"},
        "model": {"spec": "smollm2-135m", "family": "llama", "architecture": "LlamaForCausalLM",
                  "hash": "sha256:" + "ab" * 32, "n_layers": n_layers, "n_heads": h, "n_kv_heads": 3,
                  "head_dim": 64, "d_model": 576, "objective": "causal-lm"},
        "data": {"source": "default", "n_blocks": 16, "n_tokens": 4096, "seq_len": 256, "n_documents": 12},
        "timing": {"seconds": 42.0, "tokens_per_s": 97.5},
        "layers": layers,
        "summary": {"gamma_mean": float(np.mean(gammas)), "gamma_max": max(gammas),
                    "gamma_max_layer": int(np.argmax(gammas)), "gamma_min": min(gammas),
                    "gamma_min_layer": int(np.argmin(gammas)), "heatmap_layers": [0, n_layers - 1]},
    }


def _decode(png: bytes) -> np.ndarray:
    from matplotlib.image import imread

    assert png[:8] == PNG_SIGNATURE
    img = imread(io.BytesIO(png), format="png")
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert float(np.std(img[..., :3])) > 0.05  # not a blank canvas
    return img


def test_synthetic_g_is_psd_with_unit_diagonal() -> None:
    for layer in make_analysis()["layers"]:
        g = np.array(layer["G"])
        assert np.allclose(np.diag(g), 1.0) and np.allclose(g, g.T)
        assert np.linalg.eigvalsh(g).min() > -1e-9


def test_plots_are_decodable_pngs() -> None:
    a = make_analysis()
    _decode(plot_interaction_heatmaps(a["layers"], [0, 2, 3]))
    _decode(plot_interaction_heatmaps(a["layers"], [1], key="rho", by_coalition=False))
    _decode(plot_gamma_by_layer(a["layers"]))
    _decode(plot_matrix_delta(a["layers"], make_analysis(seed=1)["layers"], [0, 3]))
    red = plot_redundancy_by_layer(a["layers"])
    assert red is not None
    _decode(red)


def test_plots_tolerate_missing_values() -> None:
    a = make_analysis()
    a["layers"][0]["gamma"] = None
    a["layers"][1]["gamma_norm"] = float("nan")
    a["layers"][2]["G"][0][1] = None
    del a["layers"][3]["coalitions"]
    _decode(plot_gamma_by_layer(a["layers"]))
    _decode(plot_interaction_heatmaps(a["layers"], [0, 1, 2, 3]))
    for layer in a["layers"]:
        layer.pop("redundancy", None)
    assert plot_redundancy_by_layer(a["layers"]) is None


def test_heatmaps_reject_unanalysed_layer() -> None:
    with pytest.raises(HeadgameError, match="not analysed"):
        plot_interaction_heatmaps(make_analysis()["layers"], [7])


def test_choose_heatmap_layers_by_hand() -> None:
    gammas = [0.5, 0.2, 0.9, 0.4, 0.7, 0.6, 0.3, 0.8, 0.45, 0.55]
    # max Γ at 2, min Γ at 1, first 0, last 9, middle 10 // 2 = 5
    assert choose_heatmap_layers(10, gammas) == [0, 1, 2, 5, 9]
    assert choose_heatmap_layers(10, gammas, max_layers=3) == [0, 1, 2]  # max, min, first win
    assert choose_heatmap_layers(1, [1.0]) == [0]
    assert choose_heatmap_layers(3, [None, float("nan"), None]) == [0, 1, 2]
    with pytest.raises(ValueError):
        choose_heatmap_layers(3, [1.0])


def test_write_report(tmp_path: Path) -> None:
    a = make_analysis()
    paths = write_report(a, tmp_path / "out")
    assert set(paths) == {"gamma_by_layer", "G_heatmaps", "redundancy_by_layer", "report"}
    for name, path in paths.items():
        assert path.exists() and path.parent == tmp_path / "out"
        if name != "report":
            _decode(path.read_bytes())
    assert not list((tmp_path / "out").glob("*.tmp")) and not list((tmp_path / "out").glob(".*"))

    html = paths["report"].read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 3
    for name in ("gamma_by_layer", "G_heatmaps", "redundancy_by_layer"):
        # the page embeds exactly the bytes written beside it
        import base64

        assert base64.b64encode((tmp_path / "out" / f"{name}.png").read_bytes()).decode() in html
    for layer in a["layers"]:
        assert f"<td>{fmt_num(layer['gamma'])}</td>" in html
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html
    assert "&lt;script&gt;alert(" in html
    assert re.search(r'<tr class="max"><td>%d</td>' % a["summary"]["gamma_max_layer"], html)
    assert "one coalition of size 1" in html  # the note behind p = None


def test_render_without_layers_or_images() -> None:
    html = render_report_html({"config": {"a": 1}}, {}, title="empty <run>")
    assert "No layers were analysed" in html and "empty &lt;run&gt;" in html


def test_summary_table_rows() -> None:
    a = make_analysis(n_layers=30, n_heads=9)
    assert summary_table(a).row_count == 30
    assert summary_table(a, max_rows=11).row_count == 11  # 5 first, "…", 5 last
    small = make_analysis()
    table = summary_table(small)
    assert table.row_count == 4
    assert [c.header for c in table.columns] == ["layer", "Γ", "Γ_norm", "k", "MW p", "redundancy"]
    from rich.console import Console

    console = Console(record=True, width=100)
    print_summary(small, console=console)
    text = console.export_text()
    assert "mean Γ" in text and f"(layer {small['summary']['gamma_max_layer']})" in text


def test_import_is_cheap() -> None:
    code = ("import sys, headgame.report; "
            "print(any(m in sys.modules for m in ('matplotlib', 'numpy', 'rich')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
