"""Reports that explain themselves: eval --compare (n beside p, the small-sample mark, legend,
run metadata, config.yaml), the analyze page's column definitions, the fep page's readable
labels and citations."""

from __future__ import annotations

import json
import re

import yaml

from headgame.evaluate.compare import SMALL_NOTE, compare, to_html, to_markdown, write_outputs

HASH_A, HASH_B = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32


def _run(spec: str, digest: str, started: str, tasks: dict) -> dict:
    out = {}
    for name, (label, binary, outcomes) in tasks.items():
        out[name] = {"label": label, "group": "halluc", "metric": "acc", "binary": binary, "higher_is_better": True,
                     "transform": "identity", "score": sum(outcomes) / len(outcomes), "n": len(outcomes),
                     "description": f"the {name} benchmark",
                     "items": [{"id": i, "num": v, "den": 1} for i, v in enumerate(outcomes)]}
    return {"model": {"spec": spec, "hash": digest}, "decoding": {"name": "cad", "alpha": 0.5}, "started": started,
            "config": {"seed": 42, "limit": 5, "n_items": 1024}, "versions": {"headgame": "0.9.0"}, "tasks": out}


def _pair():
    base = _run("smollm2-135m", HASH_A, "2026-01-02T03:04:05+00:00", {
        "truthfulqa_mc2": ("TF-MC2", False, [0.2, 0.3, 0.1, 0.2, 0.25]),
        "halueval_qa": ("HE-QA", True, [1.0] * 10 + [0.0] * 30),
    })
    meth = _run("smollm2-135m", HASH_A, "2026-01-03T03:04:05+00:00", {
        "truthfulqa_mc2": ("TF-MC2", False, [0.6, 0.7, 0.5, 0.6, 0.65]),
        "halueval_qa": ("HE-QA", True, [1.0] * 25 + [0.0] * 15),
    })
    meth["model"]["adapter"] = {"path": "/runs/A/adapter", "hash": HASH_B, "merged": False}
    return base, meth


def test_small_samples_are_marked_and_n_stands_beside_p():
    res = compare(*_pair(), resamples=500)
    rows = {r.task: r for r in res["rows"]}
    assert rows["truthfulqa_mc2"].small_sample and not rows["halueval_qa"].small_sample
    md = to_markdown(res)
    header = next(line for line in md.splitlines() if line.startswith("| Task"))
    assert header.split(" | ")[5:7] == ["p", "n"]  # n right after p
    mc2 = next(line for line in md.splitlines() if line.startswith("| TF-MC2"))
    assert "| 5† |" in mc2
    he = next(line for line in md.splitlines() if line.startswith("| HE-QA"))
    assert "| 40 |" in he and "†" not in he
    assert SMALL_NOTE in md and "little power" in SMALL_NOTE
    page = to_html(res)
    assert "5†" in page and "little power" in page


def test_compare_page_has_legend_and_metadata():
    res = compare(*_pair(), resamples=200)
    page, md = to_html(res), to_markdown(res)
    for text in (page, md):
        assert "TF-MC2" in text and "truthfulqa_mc2: the truthfulqa_mc2 benchmark" in text
        assert "b = items the base got right and the method wrong" in text
        assert "c = items the method got right and the base wrong" in text
        assert "2026-01-02T03:04:05+00:00" in text and "2026-01-03T03:04:05+00:00" in text
        assert "sha256:abababababab…" in text and "sha256:cdcdcdcdcdcd…" in text  # model and adapter hash
        assert "cad (alpha=0.5)" in text and "45 over 2 tasks" in text
    # the legend and the metadata add no table rows: header + 2 tasks + 2 aggregates
    assert page.count("<tr") == 1 + 2 + 2


def test_compare_writes_config_and_keeps_a_runs_own(tmp_path):
    base, meth = _pair()
    (tmp_path / "b.json").write_text(json.dumps(base))
    (tmp_path / "m.json").write_text(json.dumps(meth))
    res = compare(base, meth, resamples=100)
    own = tmp_path / "cmp"
    own.mkdir()
    write_outputs(res, own, (str(tmp_path / "b.json"), str(tmp_path / "m.json")))
    config = yaml.safe_load((own / "config.yaml").read_text())
    assert config["command"] == "eval --compare" and config["options"]["resamples"] == 100
    assert config["inputs"]["base"]["sha256"].startswith("sha256:") and config["inputs"]["method"]["adapter_hash"] == HASH_B
    assert json.loads((own / "compare.json").read_text())["rows"][0]["small_sample"] is True
    write_outputs(res, own, (str(tmp_path / "b.json"), str(tmp_path / "m.json")))  # its own config: rewritten
    assert not (own / "compare_config.yaml").exists()
    run = tmp_path / "E"  # an eval run's folder: its config.yaml stays
    run.mkdir()
    (run / "config.yaml").write_text("model: smollm2-135m\n")
    write_outputs(res, run, (str(tmp_path / "b.json"), str(tmp_path / "m.json")))
    assert (run / "config.yaml").read_text() == "model: smollm2-135m\n"
    assert yaml.safe_load((run / "compare_config.yaml").read_text())["command"] == "eval --compare"


def test_analyze_page_defines_its_columns():
    from headgame.report import render_report_html

    from tests.unit.test_report import make_analysis

    page = render_report_html(make_analysis(), {})
    for anchor in ("#redundancy", "#bt-loss", "#gamma", "#ldb", "#poa-proxy", "#mann-whitney"):
        assert f"docs/formulas.md{anchor}" in page
    assert re.search(r"<dt>redundancy index</dt><dd>mean over head pairs", page)
    assert re.search(r"<dt>L_ABT adaptive</dt><dd>the adaptive Barlow-Twins loss", page)


def test_analyze_terminal_summary_defines_redundancy(capsys):
    from rich.console import Console

    from headgame.report import print_summary

    from tests.unit.test_report import make_analysis

    print_summary(make_analysis(), console=Console(width=200))
    assert "docs/formulas.md#redundancy" in capsys.readouterr().out


def test_fep_page_is_readable_and_cites_formulas():
    from headgame.fep.report import readable, render_fep_section

    result = {
        "model": {"spec": "tiny-llama", "n_layers": 2, "n_heads": 4}, "data": {"n_observations": 10},
        "summary": {"triples": {"frac_negative": 0.7, "mean": -0.1, "median": -0.05}},
        "epsilon_nash": {"n_pruned": 2, "fraction": 0.25, "epsilon_bits": 0.1, "epsilon_relative": 0.02},
        "layers": [], "warnings": [],
        "notes": {"fep_score": "m_i^(≤3) truncates H(X_i | rest) at order 3", "dividends": "D(S) = Σ_{T⊆S} (−1)^{|S|−|T|} F(T)"},
    }
    page = render_fep_section(result, {})
    assert "§" not in page and "docs/formulas.md#epsilon-nash" in page
    assert "<b>Head score m<sub>i</sub></b>: m<sub>i</sub><sup>(≤3)</sup> truncates H(X<sub>i</sub> | rest)" in page
    assert "Σ<sub>T⊆S</sub> (−1)<sup>|S|−|T|</sup>" in page and "docs/formulas.md#marginal-contribution" in page
    assert "fep_score" not in page and "H̄" not in page
    assert readable("<b> a_b") == "&lt;b&gt; a<sub>b</sub>"
