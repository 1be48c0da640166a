"""``headgame reproduce gt-fep`` end to end with the tiny preset (tiny-llama and tiny-bert on the
fixture data): a run killed mid-stage keeps the stages before it, the rerun runs only the missing
ones, a third run recomputes nothing, and the report is complete with every number traced to a
stage file and checked against values read or computed independently from the copied files."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from headgame.errors import HeadgameError
from headgame.reproduce.config import ReproduceConfig
from headgame.reproduce.stages import PENDING, RECORD, StageStore

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
MODELS = ("tiny-llama", "tiny-bert")
GROUPS = ("fep", "curves", "heal", "beyond")


def _cfg(out: Path, **kw) -> ReproduceConfig:
    return ReproduceConfig(paper="gt-fep", preset="tiny", out=str(out), data_dir=str(DATA), device="cpu", **kw)


def _run(cfg: ReproduceConfig) -> tuple[dict, StageStore]:
    from headgame.reproduce.gtfep import run_gtfep

    store = StageStore(Path(cfg.out), say=lambda msg: None)
    return run_gtfep(cfg, store, say=lambda msg: None), store


def _refuse(*a, **k):
    raise AssertionError("a finished stage was computed again")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run 1 is killed inside the first beyond stage; run 2 continues it; run 3 must reuse everything."""
    import torch

    import headgame

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("gtfep") / "U"
    cfg = _cfg(out)
    mp = pytest.MonkeyPatch()

    def killed(*a, **k):
        raise KeyboardInterrupt("killed mid-stage")

    mp.setattr(headgame, "analyze", killed)
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(cfg)
    finally:
        mp.undo()
    after_kill = {f"gt-fep/{m}/{g}": ((out / "gt-fep" / m / g / RECORD).exists(), (out / "gt-fep" / m / g / PENDING).exists())
                  for m in MODELS for g in GROUPS}
    second, store2 = _run(cfg)
    first_report = json.loads((out / "report.json").read_text())
    for name in ("fep", "prune", "analyze", "train"):
        mp.setattr(headgame, name, _refuse)
    try:
        third, store3 = _run(cfg)
    finally:
        mp.undo()
    return {"out": out, "cfg": cfg, "after_kill": after_kill, "second": second, "third": third,
            "report_2": first_report, "runs_2": store2.runs, "runs_3": store3.runs}


def test_kill_keeps_finished_stages_and_the_rerun_runs_only_the_rest(runs):
    ak = runs["after_kill"]
    for m in MODELS:  # group by group: every fep, curves and heal stage finished before the first beyond
        for g in ("fep", "curves", "heal"):
            assert ak[f"gt-fep/{m}/{g}"] == (True, False), (m, g)
    assert ak["gt-fep/tiny-llama/beyond"] == (False, True)  # begun, killed: no record
    assert ak["gt-fep/tiny-bert/beyond"] == (False, False)  # never begun
    status = {r.name: r.status for r in runs["runs_2"]}
    assert status == {**{f"gt-fep/{m}/{g}": "reused" for m in MODELS for g in ("fep", "curves", "heal")},
                      **{f"gt-fep/{m}/beyond": "ran" for m in MODELS}}
    assert not (runs["out"] / ".work").exists() or not any((runs["out"] / ".work").rglob("*.safetensors"))


def test_a_third_run_recomputes_nothing_and_writes_the_same_report(runs):
    assert runs["runs_3"] and all(r.status == "reused" for r in runs["runs_3"])
    assert {r.name for r in runs["runs_3"]} == {f"gt-fep/{m}/{g}" for m in MODELS for g in GROUPS}
    again = json.loads((runs["out"] / "report.json").read_text())
    assert again["tables"] == runs["report_2"]["tables"] and again["missing"] == []
    assert runs["third"]["run"]["report"] == str(runs["out"] / "report.md")


def _numbers(obj) -> list[float]:
    if isinstance(obj, bool) or obj is None:
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return []


def test_every_table_is_there_and_every_number_comes_from_a_stage_file(runs):
    out = runs["out"]
    rep = runs["report_2"]
    ids = {t["id"] for t in rep["tables"]}
    for m in MODELS:
        assert {f"triples/{m}", f"curves/{m}", f"views/{m}", f"overlap/{m}"} <= ids
    assert "heal/tiny-llama" in ids and "heal/tiny-bert" not in ids and "claims" in ids
    assert "encoder" in rep["skipped"]["gt-fep/tiny-bert/heal"]
    enc = next(t for t in rep["tables"] if t["id"] == "curves/tiny-bert")  # an encoder: its sentence-embedding cosine
    cos_cols = [c for c in enc["columns"] if c.startswith("cos_")]
    assert cos_cols and all(0 < dict(zip(enc["columns"], r))[c] <= 1 + 1e-6 for r in enc["rows"] for c in cos_cols)
    assert not any(c.startswith("cos_") for t in rep["tables"] if t["id"] == "curves/tiny-llama" for c in t["columns"])
    for t in rep["tables"]:
        assert t["rows"] and t["sources"], t["id"]
        pool = []
        for src in t["sources"]:
            path = out / src
            assert path.is_file() and path.parts[len(out.parts)] == "gt-fep", src
            pool += _numbers(json.loads(path.read_text()))
        pool_arr = np.array(pool)
        for row in t["rows"]:
            assert len(row) == len(t["columns"])
            for col, v in zip(t["columns"], row):
                if col in t["text_columns"] or v is None:
                    continue
                assert isinstance(v, (int, float)) and math.isfinite(v), (t["id"], col, v)
                assert np.isclose(pool_arr, v, rtol=1e-12, atol=0).any(), f"{t['id']}.{col} = {v} is in none of {t['sources']}"
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for t in rep["tables"]:
        assert t["title"] in md
    assert "data:image/png;base64," in html and "src='http" not in html and 'src="http' not in html
    for fig in rep["figures"]:
        assert (out / fig["file"]).read_bytes()[:4] == b"\x89PNG"
    assert {f["file"] for f in rep["figures"]} >= {f"{m}_{k}.png" for m in MODELS for k in ("triples_by_layer", "curves", "views")}


def _table(rep: dict, tid: str) -> list[dict]:
    t = next(t for t in rep["tables"] if t["id"] == tid)
    return [dict(zip(t["columns"], r)) for r in t["rows"]]


def test_triple_signs_against_the_copied_dividends(runs):
    out, rep = runs["out"], runs["report_2"]
    for m in MODELS:
        folder = out / "gt-fep" / m / "fep"
        low = json.loads((folder / "dividends23.json").read_text())["layers"]
        rows = _table(rep, f"triples/{m}")
        for row in rows:
            vals = [t[3] for l, d in low.items() for t in d["triples"] if row["layer"] in ("all", l)]
            n = len(vals)  # 4 heads: C(4, 3) = 4 triples per layer, 2 layers
            assert row["n"] == n == (8 if row["layer"] == "all" else 4)
            below = sum(v < 0 for v in vals)
            assert abs(row["frac_negative"] * n - below) <= row["n_near_zero"]  # the CSV rounds |D| < 5e-11 to 0
            ci = stats.binomtest(round(row["frac_negative"] * n), n).proportion_ci(method="wilson")
            assert (row["wilson_low"], row["wilson_high"]) == pytest.approx((ci.low, ci.high))
            assert 0 <= row["wilson_low"] <= row["frac_negative"] <= row["wilson_high"] <= 1
            assert row["mean"] == pytest.approx(np.mean(vals), abs=1e-8)
        pairs = [t[2] for d in low.values() for t in d["pairs"]]
        assert len(pairs) == 12 and min(pairs) >= -1e-9  # mutual information


def _avg_ranks(x: list[float]) -> np.ndarray:
    x = np.asarray(x, float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def test_views_heal_and_claims_against_the_copied_files(runs):
    out, rep = runs["out"], runs["report_2"]
    for m in MODELS:
        pairs = json.loads((out / "gt-fep" / m / "beyond" / "pairs.json").read_text())["layers"]
        analysis = json.loads((out / "gt-fep" / m / "beyond" / "analysis.json").read_text())
        for row in _table(rep, f"views/{m}")[:-1]:
            d = pairs[row["layer"]]
            g = np.array(next(l["G"] for l in analysis["layers"] if str(l["layer"]) == row["layer"]))
            assert d["abs_G"] == pytest.approx(np.abs(g[np.triu_indices(4, 1)]).tolist())
            assert row["n"] == 6
            if row["rho"] is not None:
                ra, rb = _avg_ranks(d["abs_G"]), _avg_ranks(d["mi_bits"])
                assert row["rho"] == pytest.approx(np.corrcoef(ra, rb)[0, 1])
        for o in _table(rep, f"overlap/{m}"):
            assert o["n_heads"] == 8 and o["k_a"] == o["k_b"] == 2 and 0 <= o["jaccard"] <= 1 and 0 < o["p_hypergeom"] <= 1
    pruning = json.loads((out / "gt-fep" / "tiny-llama" / "heal" / "pruning.json").read_text())
    rec = pruning["healed"]["recovery"]["gsm8k"]
    (row,) = _table(rep, "heal/tiny-llama")
    assert (row["pruned_before"], row["pruned_healed"], row["unpruned_before"], row["unpruned_healed"]) == (
        rec["pruned_before"], rec["pruned_healed"], rec["unpruned_before"], rec["unpruned_healed"])
    assert row["gap_before"] == pytest.approx(rec["pruned_before"] / rec["unpruned_before"] - 1)
    assert row["tokens"] == 512
    claims = _table(rep, "claims")
    flops = [c for c in claims if c["claim"] == "FLOPs" and c["model"] == "tiny-llama"]
    # the tiny preset prunes at 25 % and 50 %: the 20 % point comes from the heal stage's run at 20 %
    assert flops[0]["fraction"] == 0.2 and flops[0]["ours"] == pruning["results"]["fep"]["flops"]["analytic"]["reduction_total"]
    assert flops[1]["ours"] == pruning["results"]["fep"]["flops"]["analytic"]["reduction_attention"]
    assert 0 < flops[0]["ours"] < flops[1]["ours"] < 1 and "whole model" in flops[0]["what"]
    bert = [c for c in claims if c["model"] == "tiny-bert" and c["claim"] == "perplexity"]
    assert bert and bert[0]["fraction"] is None and bert[1]["fraction"] == 0.25  # no healing: the nearest curve point
    assert "pseudo-perplexity" in bert[0]["what"]
    tri = [c for c in claims if c["claim"] == "triples < 0"]
    assert len(tri) == 6 and all(c["paper"].startswith("consistently negative") for c in tri)


def test_report_of_other_settings_lists_every_stage_missing(runs, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(runs["out"], out)
    rep, store = _run(_cfg(out, seed=43, stages="report"))
    assert not store.runs and len(rep["missing"]) == 8 and rep["tables"][-1]["id"] == "claims"
    assert "Not finished" in (out / "report.md").read_text()


def test_cli_says_it_wrote_the_report_only_when_it_did(runs, tmp_path, capsys, monkeypatch):
    import headgame
    from headgame.cli import main

    out = tmp_path / "copy"
    shutil.copytree(runs["out"], out)
    for f in ("report.md", "report.html", "report.json"):
        (out / f).unlink()
    for name in ("fep", "prune", "analyze", "train"):
        monkeypatch.setattr(headgame, name, _refuse)
    argv = ["reproduce", "gt-fep", "--preset", "tiny", "--out", str(out), "--data-dir", str(DATA), "--device", "cpu",
            "--no-progress"]
    assert main([*argv, "--stages", "fep"]) == 0
    assert "wrote" not in capsys.readouterr().out and not (out / "report.html").exists()
    assert main([*argv, "--stages", "report"]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert said == [f"wrote {out / 'report.html'} (and report.md, report.json)"] and (out / "report.html").is_file()


def test_beyond_alone_runs_its_fep_stage_first(tmp_path):
    import torch

    torch.set_num_threads(1)
    rep, store = _run(_cfg(tmp_path / "B", models="tiny-llama", stages="beyond,report"))
    assert [(r.name, r.status) for r in store.runs] == [("gt-fep/tiny-llama/fep", "ran"), ("gt-fep/tiny-llama/beyond", "ran")]
    assert sorted(rep["missing"]) == ["gt-fep/tiny-llama/curves", "gt-fep/tiny-llama/heal"]
    assert {t["id"] for t in rep["tables"]} == {"triples/tiny-llama", "views/tiny-llama", "overlap/tiny-llama", "claims"}


@pytest.mark.parametrize("kw, message", [
    (dict(models="tiny-llama,tiny-llama"), "more than once"),
    (dict(models="tiny-llama,,tiny-bert"), "empty name"),
])
def test_bad_model_lists_are_refused_in_one_line(tmp_path, kw, message):
    with pytest.raises(HeadgameError, match=message) as exc:
        _run(_cfg(tmp_path / "X", **kw))
    assert "\n" not in str(exc.value) and not (tmp_path / "X").exists()


def test_only_gt_fep_configs_and_real_data_folders_are_run(tmp_path):
    with pytest.raises(HeadgameError, match="paper='gt-fep'"):
        _run(ReproduceConfig(paper="game-lora", preset="tiny", out=str(tmp_path / "G")))
    cfg = ReproduceConfig(paper="gt-fep", preset="tiny", out=str(tmp_path / "G"), data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(HeadgameError, match="is not a folder"):
        _run(cfg)
