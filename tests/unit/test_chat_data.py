"""Chat and instruction data in headgame train: the loss covers the assistant tokens only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from headgame.cli import main
from headgame.data.chat import detect_format, load_training_data
from headgame.errors import HeadgameError
from headgame.models.tiny import byte_tokenizer

# a small template in the shape of real ones: a BOS, a role header per turn, an end-of-turn
# marker after each assistant turn, and the assistant header as the generation prompt
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<eos>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."},
     {"role": "assistant", "content": "Seven."}, {"role": "user", "content": "Another?"},
     {"role": "assistant", "content": "Eleven, and thirteen."}],
    [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}],
    [{"role": "user", "content": "Say hello in French."}, {"role": "assistant", "content": "Bonjour !"}],
]
PAIRS = [("Capital of France?", "Paris."), ("Opposite of hot?", "Cold."), ("Colour of the sky?", "Blue, mostly.")]


def _tokenizer():
    tok = byte_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def _write(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture()
def chat(tmp_path) -> Path:
    return _write(tmp_path / "chat.jsonl", [{"messages": m} for m in CONVERSATIONS])


@pytest.fixture()
def pairs(tmp_path) -> Path:
    return _write(tmp_path / "pc.jsonl", [{"prompt": p, "completion": c} for p, c in PAIRS])


def _assistant_bytes(messages) -> list[str]:
    # what the template writes after each generation prompt: the content and <eos> (the newline
    # after it is framing: jinja drops a template's trailing newline, so no prefix render ends on it)
    return [m["content"] + "<eos>" for m in messages if m["role"] == "assistant"]


def _n_tokens(text: str) -> int:
    # the byte tokenizer: one token per UTF-8 byte, one per special token
    for special in ("<bos>", "<eos>"):
        text = text.replace(special, "\0")
    return len(text.encode())


def _rows(path, **kw):
    fmt = detect_format(str(path))
    return fmt, load_training_data(str(path), _tokenizer(), fmt=fmt, seq_len=kw.pop("seq_len", 128), max_tokens=None, **kw)


def test_loss_covers_exactly_the_assistant_tokens(chat, pairs):
    tok = _tokenizer()
    for path, convs in ((chat, CONVERSATIONS),
                        (pairs, [[{"role": "user", "content": p}, {"role": "assistant", "content": c}] for p, c in PAIRS])):
        fmt, rows = _rows(path)
        assert fmt == ("messages" if path == chat else "prompt_completion")
        assert rows.n_blocks == len(convs) and rows.labels is not None
        carry = rows.labels[:, 1:] != -100  # the targets CE sees after the shift
        expected = sum(_n_tokens(t) for m in convs for t in _assistant_bytes(m))
        assert int(carry.sum()) == expected
        for r, messages in enumerate(convs):
            kept = rows.labels[r][rows.labels[r] != -100].tolist()
            assert tok.decode(kept) == "".join(_assistant_bytes(messages))
            # padding: no attention, no loss
            pad = rows.attention_mask[r] == 0
            assert (rows.labels[r][pad] == -100).all() and int((~pad).sum()) == _n_tokens(tok.apply_chat_template(messages, tokenize=False))


def test_loss_on_all_counts_every_real_token(chat):
    _, rows = _rows(chat, loss_on="all")
    assert int((rows.labels != -100).sum()) == int(rows.attention_mask.sum())
    tok = _tokenizer()
    assert rows.n_tokens == sum(_n_tokens(tok.apply_chat_template(m, tokenize=False)) for m in CONVERSATIONS)


def test_truncation_skips_rows_without_a_loss_token(tmp_path):
    long_prompt = [{"prompt": "x" * 80, "completion": "y"}, {"prompt": "short", "completion": "fine"}]
    _, rows = _rows(_write(tmp_path / "t.jsonl", long_prompt), seq_len=40)
    assert rows.n_blocks == 1 and rows.input_ids.shape == (1, 40)
    with pytest.raises(HeadgameError, match="raise --seq-len"):
        _rows(_write(tmp_path / "u.jsonl", long_prompt[:1]), seq_len=40)


def test_plain_text_jsonl_is_still_packed(tmp_path):
    path = _write(tmp_path / "t.jsonl", [{"text": "plain words " * 20}] * 3)
    fmt, blocks = _rows(path, seq_len=32)
    assert fmt == "text" and blocks.labels is None and bool(blocks.attention_mask.all())


@pytest.fixture()
def with_template(monkeypatch):
    import headgame.models.load as load

    original = load.load_model

    def load_model(*args, **kwargs):
        loaded = original(*args, **kwargs)
        loaded.tokenizer.chat_template = TEMPLATE
        return loaded

    monkeypatch.setattr(load, "load_model", load_model)


@pytest.mark.parametrize("loss_on", ["assistant", "all"])
def test_train_on_chat_end_to_end(tmp_path, with_template, loss_on):
    records = [{"messages": m} for m in CONVERSATIONS] * 3 + [{"prompt": p, "completion": c} for p, c in PAIRS] * 2
    data = _write(tmp_path / "chat.jsonl", records[:9])
    out = tmp_path / "out"
    code = main(["train", "--model", "tiny-llama", "--data", str(data), "--seq-len", "96", "--batch-size", "2",
                 "--max-tokens", "100000", "--val-every", "0", "--checkpoint-every", "0", "--loss-on", loss_on,
                 "--out", str(out), "--no-progress"])
    assert code == 0
    assert (out / "adapter" / "adapter_config.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4  # 9 rows, 1 held out, batches of 2
    assert math.isfinite(summary["final_val_loss"]) and math.isfinite(summary["last"]["ce"])
    assert math.isfinite(summary["last"]["gamma"])


def _err(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_format_names_the_fields(tmp_path, capsys):
    data = _write(tmp_path / "qa.jsonl", [{"question": "a", "answer": "b"}])
    msg = _err(capsys, ["train", "--model", "tiny-llama", "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress"])
    assert "line 1 has none of the fields 'text', 'messages' or 'prompt'/'completion'" in msg and "question, answer" in msg
    assert "--text-field" in msg and not (tmp_path / "o").exists()


def test_model_without_chat_template(tmp_path, chat, capsys):
    msg = _err(capsys, ["train", "--model", "tiny-llama", "--data", str(chat), "--out", str(tmp_path / "o"), "--no-progress"])
    assert "no chat template" in msg and "chat (instruct) model" in msg and "--text-field" in msg
    assert not (tmp_path / "o").exists()


def test_bad_loss_on(tmp_path, chat, capsys):
    msg = _err(capsys, ["train", "--model", "tiny-llama", "--data", str(chat), "--loss-on", "prompt", "--out", str(tmp_path / "o")])
    assert "--loss-on prompt is not valid; choose one of assistant, all" in msg


def test_padding_is_kept_out_of_rho_and_the_head_statistics(chat):
    """A padded row gives the step of the same row without its padding: ρ (docs/formulas.md#rho)
    and the Barlow-Twins and barrier terms."""
    from headgame.models.load import load_model
    from headgame.train.config import TrainConfig
    from headgame.train.lora import add_lora, param_groups
    from headgame.train.step import GameStep

    _, rows = _rows(chat)
    base, _, layout = load_model("tiny-llama")
    model = add_lora(base, layout, r=4, alpha=8.0, dropout=0.0, seed=0)
    groups = param_groups(model, layout)
    cfg = TrainConfig(model="tiny-llama", design_layers=[1], schedule="constant", arbitration="sum")
    rhos, logs = [], []
    ids, mask, labels = rows.input_ids[:1], rows.attention_mask[:1], rows.labels[:1]
    n = int(mask.sum())
    for a, m, lab in ((ids, mask, labels), (ids[:, :n], None, labels[:, :n])):
        game = GameStep(cfg, layout, groups, design=[1], abt_layers=[1], ldb_layers=[1])
        game.begin(1, 2)  # past the warm-up, so the regularisers run
        game.micro_batch(model, a, accum=1, attention_mask=m, labels=lab)
        logs.append(game.finish(model))
        for p in groups.params:
            p.grad = None
        rhos.append(game.rho[1])
    torch.testing.assert_close(rhos[0], rhos[1], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(rhos[0], torch.eye(layout.n_heads, dtype=rhos[0].dtype))
    for k, v in logs[0].items():
        if isinstance(v, float):
            assert v == pytest.approx(logs[1][k], rel=1e-4, abs=1e-6), k
