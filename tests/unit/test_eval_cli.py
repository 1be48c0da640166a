"""`headgame eval` end to end on tiny models and the fixture slices, and every bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from headgame.cli import main
from tests.conftest import run_cli

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


def eval_args(out, *extra, model="tiny-llama", tasks="all"):
    return ["eval", "--model", model, "--tasks", tasks, "--data-dir", str(FIX), "--out", str(out), "--no-progress", *extra]


@pytest.fixture(scope="module")
def all_tasks(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "E"
    code = main(eval_args(out))
    assert code == 0
    return out


def test_all_tasks_write_eval_json(all_tasks):
    data = json.loads((all_tasks / "eval.json").read_text())
    assert data["format"] == "headgame-eval/1" and len(data["tasks"]) == 12
    assert data["config"]["seed"] == 42 and data["config"]["n_items"] == 1024
    assert {"torch", "transformers", "headgame"} <= set(data["versions"])
    assert data["model"]["hash"].startswith("sha256:") and data["decoding"]["name"] == "greedy"
    for name, t in data["tasks"].items():
        assert t["n"] == len(t["items"]) > 0 and math.isfinite(t["score"]), name
        assert all({"id", "num", "den"} <= set(it) for it in t["items"])
        assert t["data"] and str(FIX) in t["data"]
    assert data["tasks"]["wikitext"]["higher_is_better"] is False and "word_perplexity" in data["tasks"]["wikitext"]["secondary"]
    assert data["tasks"]["halueval_qa"]["n_empty"] >= 0
    assert (all_tasks / "config.yaml").exists() and not list(all_tasks.glob("*.tmp"))


@pytest.mark.parametrize("method", ["cad", "dola", "actdec"])
def test_decoding_baselines_run_on_the_same_tasks(tmp_path, capsys, method):
    out = tmp_path / method
    code, stdout, err = run_cli(eval_args(out, "--decoding", method, tasks="halueval_qa,memotrap,truthfulqa_mc2,nq_open"), capsys)
    assert code == 0, err
    data = json.loads((out / "eval.json").read_text())
    assert data["decoding"]["name"] == method and set(data["tasks"]) == {"halueval_qa", "memotrap", "truthfulqa_mc2", "nq_open"}


def test_compare_prints_the_table(tmp_path, capsys, all_tasks):
    cad = tmp_path / "cad"
    assert main(eval_args(cad, "--decoding", "cad")) == 0
    capsys.readouterr()
    code, stdout, err = run_cli(["eval", "--compare", str(all_tasks / "eval.json"), str(cad / "eval.json"), "--out", str(tmp_path / "cmp")], capsys)
    assert code == 0, err
    assert "Halluc Δ" in stdout and "Knowledge Δ" in stdout and "| MemoTrap |" in stdout and "mean of " in stdout
    assert (tmp_path / "cmp" / "compare.html").read_text().count("<tr") == 12 + 2 + 1
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    assert {r["test"].split(" ")[0] for r in rows} == {"McNemar", "paired"}


def test_adapter_unmerged_and_merged(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from headgame.models.load import load_model

    base, _, _ = load_model("tiny-llama")
    torch.manual_seed(0)
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "o_proj"], init_lora_weights=False)).save_pretrained(tmp_path / "lora")
    scores = {}
    for extra in ([], ["--merge-adapter"]):
        out = tmp_path / ("m" if extra else "u")
        code, _, err = run_cli(eval_args(out, "--adapter", str(tmp_path / "lora"), *extra, tasks="truthfulqa_mc2,winogrande"), capsys)
        assert code == 0, err
        data = json.loads((out / "eval.json").read_text())
        assert data["model"]["adapter"]["merged"] is bool(extra)
        scores[bool(extra)] = [it["num"] for it in data["tasks"]["truthfulqa_mc2"]["items"]]
    assert scores[False] == pytest.approx(scores[True], abs=1e-5)


# --------------------------------------------------------------------------- bad input


def test_unknown_task_lists_the_valid_ones(tmp_path, capsys):
    code, _, err = run_cli(eval_args(tmp_path / "o", tasks="mmlu,nope"), capsys)
    assert code == 2 and "unknown task 'nope'" in err and "truthfulqa_mc2" in err and err.count("\n") == 1


def test_unknown_decoding_method(tmp_path, capsys):
    code, _, err = run_cli(eval_args(tmp_path / "o", "--decoding", "beam"), capsys)
    assert code == 2 and "unknown decoding method 'beam'" in err and "actdec" in err


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_limit_must_be_positive(tmp_path, capsys, limit):
    code, _, err = run_cli(eval_args(tmp_path / "o", "--limit", limit), capsys)
    assert code == 2 and "--limit must be a positive number" in err


def test_malformed_data_file_names_path_and_line(tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(FIX, root)
    path = root / "nq_open" / "NQ-open.dev.jsonl"
    lines = path.read_text().splitlines()
    lines[4] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(["eval", "--model", "tiny-llama", "--tasks", "nq_open", "--data-dir", str(root), "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert code == 2 and f"{path} line 5 is not valid JSON" in err


def test_model_without_chat_template_uses_plain_prompts_said_once(tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run_cli(eval_args(out, "--chat-template", tasks="truthfulqa_mc1,halueval_qa"), capsys)
    assert code == 0
    assert err.count("has no chat template: plain prompts are used") == 1
    data = json.loads((out / "eval.json").read_text())
    assert data["model"]["chat_template"] is False and any("chat template" in n for n in data["notes"])


class _AlwaysEOS(nn.Module):
    """An LM head that always predicts EOS (so every generation is empty)."""

    def __init__(self, vocab: int, d: int, eos: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(vocab, d), requires_grad=False)
        self.eos = eos

    def forward(self, hidden):
        out = torch.zeros(*hidden.shape[:-1], self.weight.shape[0])
        out[..., self.eos] = 10.0
        return out


def test_empty_generations_are_counted_and_reported(tmp_path, capsys, monkeypatch):
    import headgame.evaluate.runner as runner

    real = runner.load_for_eval

    def load(cfg, say=print):
        model, tok, info = real(cfg, say)
        model.lm_head = _AlwaysEOS(model.config.vocab_size, model.config.hidden_size, tok.eos_token_id)
        return model, tok, info

    monkeypatch.setattr(runner, "load_for_eval", load)
    out = tmp_path / "o"
    code, _, err = run_cli(eval_args(out, tasks="halueval_qa,nq_open"), capsys)
    assert code == 0
    assert "halueval_qa: 3 of 3 generations were empty" in err and "nq_open: 4 of 4 generations were empty" in err
    data = json.loads((out / "eval.json").read_text())
    assert data["tasks"]["halueval_qa"]["n_empty"] == 3 and data["tasks"]["halueval_qa"]["score"] == 0.0


def test_adapter_for_another_base_model(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from transformers import LlamaConfig, LlamaForCausalLM

    from headgame.models.tiny import VOCAB_SIZE

    other = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8))
    other.config.name_or_path = "tiny-llama-32"
    peft_model = get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.peft_config["default"].base_model_name_or_path = "tiny-llama-32"
    peft_model.save_pretrained(tmp_path / "lora32")
    code, _, err = run_cli(eval_args(tmp_path / "o", "--adapter", str(tmp_path / "lora32"), tasks="winogrande"), capsys)
    assert code == 2
    assert "was made for tiny-llama-32 (adapter_config.json), not tiny-llama" in err and err.count("\n") == 1


def test_adapter_folder_without_config(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(eval_args(tmp_path / "o", "--adapter", str(tmp_path / "empty"), tasks="winogrande"), capsys)
    assert code == 2 and "has no adapter_config.json" in err


def test_compare_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    code, _, err = run_cli(["eval", "--compare", str(bad), str(bad)], capsys)
    assert code == 2 and "is not valid JSON" in err


def test_list_tasks(capsys):
    code, out, _ = run_cli(["eval", "--list-tasks"], capsys)
    assert code == 0 and len(out.strip().splitlines()) == 12


def test_threads_must_be_positive(tmp_path, capsys):
    code, _, err = run_cli(eval_args(tmp_path / "o", "--threads", "0"), capsys)
    assert code == 2 and "--threads must be a positive integer" in err
