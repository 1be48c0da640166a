"""The progress bars of fep, prune and eval show their running figures and ETA on the console
they are given, and a run with progress gives the same results as one without."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
TEXT = " ".join(f"The cat number {i} sat on mat {i % 7} and looked at bird {i % 5}." for i in range(300))
GSM = [{"question": f"Tom has {i} apples and buys 2 more. How many?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"} for i in range(6)]


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=240), buf


def _same(a: dict, b: dict, keys: tuple[str, ...]) -> None:
    for k in keys:
        assert json.dumps(a[k], sort_keys=True, default=str) == json.dumps(b[k], sort_keys=True, default=str), k


def test_fep_progress_shows_token_rate_and_negative_share(tmp_path):
    from headgame.fep.config import FepConfig
    from headgame.fep.run import run_fep

    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)

    def cfg(out):
        return FepConfig(model="tiny-llama", data=str(corpus), max_tokens=256, seq_len=64, bootstrap=0, mcmc_steps=0,
                         ablation_tokens=64, out=str(tmp_path / out))

    console, buf = _console()
    shown = run_fep(cfg("a"), progress=True, console=console, report=False)
    quiet = run_fep(cfg("b"), progress=False, report=False)
    text = buf.getvalue()
    assert "tok/s" in text and "triples < 0" in text and "heads/s" in text and "ETA" in text
    frac = shown["summary"]["triples"]["frac_negative"]
    assert f"{frac:.1%} of" in text  # the last running share is the pooled one
    _same(shown, quiet, ("layers", "summary", "epsilon_nash"))


def test_prune_progress_names_the_stage_and_the_last_perplexity(tmp_path):
    from headgame.prune.config import PruneConfig
    from headgame.prune.run import run_prune

    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("\n".join(json.dumps(r) for r in GSM) + "\n")

    def cfg(out):
        return PruneConfig(model="tiny-llama", criterion="ablation", fraction=0.25, score_data=str(corpus), gsm8k_file=str(gsm),
                           wikitext_file=str(corpus), loss_tokens=128, seq_len=32, ppl_max_tokens=128, ppl_max_len=32,
                           wikitext_window=32, throughput_batch=1, throughput_seq_len=16, repeats=5, warmup=0,
                           generation=False, out=str(tmp_path / out))

    console, buf = _console()
    shown = run_prune(cfg("a"), progress=True, console=console)
    quiet = run_prune(cfg("b"), progress=False)
    text = buf.getvalue()
    assert "scoring ablation · ablation" in text and "ETA" in text
    last = shown["results"]["ablation"]["perplexity"]["gsm8k"]["ppl"]
    assert f"last: ablation {last:.3f}" in text
    assert shown["results"]["ablation"]["pruned_heads"] == quiet["results"]["ablation"]["pruned_heads"]
    for name in ("gsm8k", "wikitext2"):
        assert shown["results"]["ablation"]["perplexity"][name]["ppl"] == quiet["results"]["ablation"]["perplexity"][name]["ppl"]


def test_eval_progress_shows_items_per_second_and_the_running_score(tmp_path):
    from headgame.evaluate.config import EvalConfig
    from headgame.evaluate.runner import run_eval

    def cfg(out):
        return EvalConfig(model="tiny-llama", tasks="truthfulqa_mc2,nq_open", limit=4, data_dir=str(FIX), out=str(tmp_path / out))

    seen: dict[str, list[str]] = {}

    def progress(kind: str, total: int):
        seen[kind] = []
        return lambda done, live="": seen[kind].append(live)

    shown = run_eval(cfg("a"), say=lambda m: None, progress=progress)
    quiet = run_eval(cfg("b"), say=lambda m: None)
    assert set(seen) == {"loglikelihood", "generate"}
    assert all("items/s" in t for texts in seen.values() for t in texts)
    mc2 = shown["tasks"]["truthfulqa_mc2"]
    assert f"truthfulqa_mc2 {mc2['score']:.3f} ({mc2['n']}/{mc2['n']})" in seen["loglikelihood"][-1]
    nq = shown["tasks"]["nq_open"]
    assert f"nq_open {nq['score']:.3f} ({nq['n']}/{nq['n']})" in seen["generate"][-1]
    assert len(seen["loglikelihood"]) > 1  # updated while the requests were scored, not only at the end
    _same(shown, quiet, ("tasks",))
