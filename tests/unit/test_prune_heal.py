"""headgame.prune.heal on tiny Llama models with grouped KV heads (4 query heads over 2 KV heads):
LoRA trained, merged exactly, saved as a pruned (or plain) model folder, reloaded by eval and analyze."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from headgame.errors import HeadgameError
from headgame.models.load import load_model
from headgame.models.surgery import PRUNING_FILE, head_counts, pruned_copy, save_pruned
from headgame.prune.heal import HEAL_METHODS, heal

# layer 0 loses KV group 0 whole (an even cut: 2 query heads, 1 KV head); layer 1 loses head 3
# only, so its kept query heads are spread unevenly over the groups (3 query heads, 2 KV heads)
UNEVEN = {0: [0, 1], 1: [3]}
UNEVEN_COUNTS = [(2, 1), (3, 2)]
# both layers lose KV group 0: every layer keeps 2 query heads and 1 KV head (the config shrinks)
EVEN = {0: [0, 1], 1: [0, 1]}
SEQ, BATCH, TOKENS = 32, 4, 4 * 32 * 5  # five optimizer steps
TEXT = ("Heads that read the same stream learn to share the work, and sometimes they repeat each other. "
        "A tax on repetition pushes them apart; a bargain between the losses decides how hard. ") * 30
IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [40, 41, 42, 43, 44, 45, 46, 47]])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The corpus, the unpruned tiny model folder and its two pruned folders."""
    root = tmp_path_factory.mktemp("heal")
    (root / "corpus.txt").write_text(TEXT)
    base = load_model("tiny-llama")
    base.model.save_pretrained(root / "base", safe_serialization=True)
    base.tokenizer.save_pretrained(root / "base")
    for name, removed in (("uneven", UNEVEN), ("even", EVEN)):
        model, _ = pruned_copy(base.model, base.layout, removed)
        save_pruned(model, base.tokenizer, root / name, extra={"criterion": "test", "fraction": 0.25})
    return root


def run(root: Path, model: str, out: Path, **kw) -> dict:
    kw = {"tokens": TOKENS, "seed": 7, "data": str(root / "corpus.txt"), "seq_len": SEQ, "batch_size": BATCH,
          "extra_train": {"val_every": 0}, **kw}
    return heal(root / model, out, **kw)


@pytest.fixture(scope="module")
def healed(root):
    out = root / "healed-uneven"
    return out, run(root, "uneven", out)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_heal_methods():
    assert HEAL_METHODS == ("ce", "game-lora")


def test_ce_heal_keeps_the_pruning_and_merges_exactly(root, healed):
    from headgame.models.adapters import attach_adapter

    out, summary = healed
    assert (out / "model").is_dir() and (out / "train" / "adapter").is_dir()
    assert json.loads((out / "heal.json").read_text()) == summary
    # five steps of 4 blocks of 32 tokens were asked for and the corpus holds them
    assert summary["steps"] == 5 and summary["tokens"] == 5 * BATCH * SEQ == TOKENS
    assert summary["method"] == "ce" and summary["seed"] == 7 and summary["kind"] == "pruned"
    assert math.isfinite(summary["train_loss_first"]) and math.isfinite(summary["train_loss_last"])
    assert summary["short_layers"] == [0, 1]

    pruned, new = load_model(str(root / "uneven")), load_model(str(out / "model"))
    assert new.info["kind"] == "pruned"
    assert head_counts(new.model, new.layout) == head_counts(pruned.model, pruned.layout) == UNEVEN_COUNTS
    record = json.loads((out / "model" / PRUNING_FILE).read_text())
    assert record["removed_heads"] == {"0": [0, 1], "1": [3]}
    assert record["extra"]["criterion"] == "test"  # the pruning's own notes are kept
    assert record["extra"]["healed"] == {"tokens": TOKENS, "tokens_requested": TOKENS, "method": "ce", "seed": 7,
                                         "source": str((root / "uneven").resolve())}

    # LoRA-targeted projections moved, everything else (embeddings, norms, MLPs, the gathered K/V) did not
    targets = set(json.loads((out / "train" / "adapter" / "adapter_config.json").read_text())["target_modules"])
    before, after = pruned.model.state_dict(), new.model.state_dict()
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    adapted = {k for k in before if k.endswith(".weight") and any(k == t + ".weight" or k.endswith("." + t + ".weight") for t in targets)}
    assert adapted and moved == adapted
    assert "model.embed_tokens.weight" not in moved and not any("norm" in k or "mlp" in k for k in moved)
    # layer 1 is cut unevenly, yet its K/V are plain projections of the kept KV heads (the query heads
    # get theirs after the cache): every q/k/v/o of both layers is adapted
    assert {f"model.layers.{l}.self_attn.{m}_proj.weight" for l in (0, 1) for m in "qkvo"} == adapted

    # merging is exact: the merged model computes what the pruned model with the live adapter computes
    live = attach_adapter(load_model(str(root / "uneven")), str(out / "train" / "adapter"), merge=False)
    torch.testing.assert_close(logits(new.model), logits(live.model), atol=1e-4, rtol=0)
    assert not torch.allclose(logits(new.model), logits(pruned.model), atol=1e-6)


def test_second_call_returns_without_training(root, healed):
    out, summary = healed
    files = [out / "heal.json", *sorted((out / "model").glob("*.safetensors")), out / "train" / "metrics.jsonl"]
    stamp = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
    again = run(root, "uneven", out)
    assert again == summary
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files} == stamp


def test_interrupted_heal_resumes_from_the_checkpoint(root, tmp_path):
    ref = run(root, "even", tmp_path / "ref")
    out = tmp_path / "cut"
    extra = {"val_every": 0, "checkpoint_every": 2}
    run(root, "even", out, extra_train=extra)
    # as if killed after the step-4 checkpoint (of 5 steps): no adapter, no merged model, heal.json mid-training
    assert sorted(p.name for p in (out / "train" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    for p in ("adapter", "summary.json"):
        path = out / "train" / p
        assert path.exists()
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(out / "model")
    state = json.loads((out / "heal.json").read_text())
    (out / "heal.json").write_text(json.dumps({"settings": state["settings"], "complete": False, "train_done": False}))
    resumed = run(root, "even", out, extra_train=extra)
    assert resumed["resumed"] is True and resumed["steps"] == ref["steps"] == 5
    a, b = load_file(next((tmp_path / "ref" / "model").glob("*.safetensors"))), load_file(next((out / "model").glob("*.safetensors")))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_control_heal_of_the_unpruned_model(root, tmp_path):
    from headgame.models.adapters import attach_adapter
    from headgame.models.identity import read_base

    summary = run(root, "base", tmp_path / "h")
    assert summary["kind"] == "unpruned" and summary["short_layers"] == [] and summary["tokens"] == TOKENS
    new = load_model(str(tmp_path / "h" / "model"))
    assert new.info["kind"] == "dir" and head_counts(new.model, new.layout) == [(4, 2), (4, 2)]
    base = load_model(str(root / "base"))
    assert read_base(tmp_path / "h" / "model") == {"spec": str((root / "base").resolve()), "hash": base.info["hash"]}
    live = attach_adapter(base, str(tmp_path / "h" / "train" / "adapter"), merge=False)
    torch.testing.assert_close(logits(new.model), logits(live.model), atol=1e-4, rtol=0)
    # the embeddings (tied with the LM head) are untouched
    assert torch.equal(new.model.get_input_embeddings().weight, load_model(str(root / "base")).model.get_input_embeddings().weight)


@pytest.mark.parametrize("method", ["CE", "lora", "disagreement", ""])
def test_bad_method(root, tmp_path, method):
    with pytest.raises(HeadgameError, match="ce, game-lora"):
        run(root, "uneven", tmp_path / "x", method=method)
    assert not (tmp_path / "x").exists()


def test_game_lora_refuses_an_unevenly_pruned_model(root, tmp_path):
    with pytest.raises(HeadgameError, match="--heal-method ce") as err:
        run(root, "uneven", tmp_path / "g", method="game-lora")
    assert "per-layer head counts" in str(err.value)
    assert not (tmp_path / "g" / "model").exists()


def test_game_lora_heals_an_evenly_pruned_model(root, tmp_path):
    summary = run(root, "even", tmp_path / "g", method="game-lora")
    assert summary["method"] == "game-lora" and summary["steps"] == 5
    records = [json.loads(l) for l in (tmp_path / "g" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any("abt_raw" in r for r in records)  # the regulariser ran, on the pruned heads
    new = load_model(str(tmp_path / "g" / "model"))
    assert head_counts(new.model, new.layout) == [(2, 1), (2, 1)] and new.layout.n_heads == 2


def test_eval_and_analyze_load_the_healed_folder(root, tmp_path):
    import headgame
    from headgame.evaluate.config import EvalConfig
    from headgame.evaluate.runner import load_for_eval

    run(root, "even", tmp_path / "h")
    folder = str(tmp_path / "h" / "model")
    model, tokenizer, info = load_for_eval(EvalConfig(model=folder, device="cpu"), say=lambda m: None)
    assert info["kind"] == "pruned" and tokenizer is not None
    assert torch.isfinite(logits(model)).all()
    res = headgame.analyze(model=folder, data=str(root / "corpus.txt"), max_tokens=128, seq_len=32, batch_size=2,
                           redundancy=False, device="cpu", out=str(tmp_path / "a"))
    assert res.data["model"]["n_heads"] == 2 and len(res.data["layers"]) == 2


def test_train_refuses_game_lora_at_an_unevenly_pruned_design_layer(root, tmp_path):
    """With design layers given, heal leaves the check to headgame train, which names the fix too."""
    with pytest.raises(HeadgameError, match="use --method ce"):
        run(root, "uneven", tmp_path / "g", method="game-lora", extra_train={"val_every": 0, "design_layers": [1]})


def test_eval_and_analyze_load_the_healed_unevenly_pruned_folder(root, healed, tmp_path):
    """Each layer is its own game with the heads it kept (layer 1: 3 of 4, unevenly over the groups)."""
    import headgame
    from headgame.evaluate.config import EvalConfig
    from headgame.evaluate.runner import load_for_eval

    out, _ = healed
    model, _, info = load_for_eval(EvalConfig(model=str(out / "model"), device="cpu"), say=lambda m: None)
    assert info["kind"] == "pruned" and torch.isfinite(logits(model)).all()
    res = headgame.analyze(model=str(out / "model"), data=str(root / "corpus.txt"), max_tokens=128, seq_len=32, batch_size=2,
                           redundancy=False, device="cpu", out=str(tmp_path / "a"))
    assert [len(l["G"]) for l in res.data["layers"]] == [2, 3]
    assert [l["heads"] for l in res.data["layers"]] == [[2, 3], [0, 1, 2]]
