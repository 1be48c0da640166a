"""headgame train on tiny models: methods, LoRA-only updates, exact resume, 2-process equality."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from headgame.cli import main
from headgame.train.config import TrainConfig
from headgame.train.loop import Trainer


def small(corpus, out, **kw) -> TrainConfig:
    base = dict(model="tiny-llama", data=str(corpus), max_tokens=2048, seq_len=32, batch_size=4, out=str(out),
                val_every=0, checkpoint_every=0, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next(Path(folder).glob("*.safetensors")))


@pytest.mark.parametrize("method, extra", [
    ("ce", {}), ("game-lora", {}), ("game-lora", {"arbitration": "sum"}), ("disagreement", {}),
    ("game-lora", {"no_ldb": True, "pair_weights": "inverse", "bt_target": "zero", "schedule": "constant"}),
    ("game-lora", {"design_layers": [0, 1], "nash_update_every": 2}),
])
def test_methods_train_and_log_gamma(tmp_path, corpus, method, extra):
    cfg = small(corpus, tmp_path / "o", method=method, **extra)
    trainer = Trainer(cfg, progress=False).setup()
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    summary = trainer.fit()
    recs = [json.loads(l) for l in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == summary["steps"] == trainer.total_steps > 2
    assert all("gamma" in r and r["gamma"] >= 0 for r in recs)
    if method == "game-lora" and not extra.get("no_ldb"):
        assert any("ldb" in r for r in recs)
    if method == "game-lora":
        assert any("abt_raw" in r for r in recs)
        constant = extra.get("schedule") == "constant"
        assert recs[0]["lambda_abt"] == (0.179 if constant else 0.0)  # phase-1 warm-up starts at 0
    # only the LoRA parameters moved
    for n, p in trainer.model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p.detach(), base[n]), n
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero


def test_reused_nash_weights_follow_the_task_set(tmp_path, corpus):
    """With α reused for many steps, a step whose task set differs (λ leaving 0 after step 0)
    recomputes α instead of giving the new tasks a weight it never solved for."""
    cfg = small(corpus, tmp_path / "o", method="game-lora", nash_update_every=1000)
    trainer = Trainer(cfg, progress=False).setup()
    first, second, third = (trainer.train_step() for _ in range(3))
    assert list(first["nash_alpha"]) == ["ce"]  # λ = 0 at p = 0: CE alone
    assert list(second["nash_alpha"]) == ["ce", "ldb", "abt"]
    assert third["nash_alpha"] == second["nash_alpha"]  # reused, not recomputed
    assert trainer.alpha_tasks == trainer.objective.task_names({"abt": 1.0, "ldb": 1.0})


def test_adapter_loads_with_peft_and_merge(tmp_path, corpus):
    from peft import PeftModel

    from headgame.models.load import load_model

    cfg = small(corpus, tmp_path / "o", method="ce", save_merged=True)
    Trainer(cfg, progress=False).setup().fit()
    base = load_model("tiny-llama").model
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "o" / "adapter")).eval()
    merged = load_model(str(tmp_path / "o" / "merged")).model
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def _cli(args, env=None):
    return subprocess.run([sys.executable, "-m", "headgame.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_sigkill_and_resume_equals_uninterrupted(tmp_path, corpus):
    args = ["train", "--model", "tiny-qwen2", "--data", str(corpus), "--max-tokens", "2048", "--seq-len", "32",
            "--batch-size", "4", "--checkpoint-every", "3", "--val-every", "0", "--no-progress"]
    ref = _cli([*args, "--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr
    killed = _cli([*args, "--out", str(tmp_path / "cut")], env={"HEADGAME_FAULT_AFTER_STEP": "7"})
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "cut" / "checkpoints" / "step-000006").exists()
    assert not (tmp_path / "cut" / "adapter").exists()
    resumed = _cli(["train", "--resume", str(tmp_path / "cut"), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = adapter_tensors(tmp_path / "ref" / "adapter"), adapter_tensors(tmp_path / "cut" / "adapter")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    ref_m = [json.loads(l) for l in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    cut_m = [json.loads(l) for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in cut_m] == [r["step"] for r in ref_m]
    assert [round(r["ce"], 6) for r in cut_m] == [round(r["ce"], 6) for r in ref_m]


def _worker(rank: int, world: int, port: int, cfg_dict: dict, result_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig(**cfg_dict), progress=False).setup()
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps({"rank": trainer.rank, "world": trainer.world}))
    trainer.fit()


def test_two_processes_equal_one(tmp_path, corpus):
    import socket

    import torch.multiprocessing as mp

    common = dict(method="game-lora", lora_dropout=0.0, schedule="constant", grad_accum=1, design_layers=[1])
    one = small(corpus, tmp_path / "one", batch_size=4, **common)
    torch.set_num_threads(1)
    Trainer(one, progress=False).setup().fit()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = small(corpus, tmp_path / "two", batch_size=2, **common)
    mp.start_processes(_worker, args=(2, port, two.to_dict(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    for r in range(2):  # really two processes, each seeing half of every global batch
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == {"rank": r, "world": 2}
    m1 = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(m1) == len(m2) > 2
    for r1, r2 in zip(m1, m2):
        for key in ("abt_raw", "ldb", "gamma"):
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-6), (r1["step"], key)
        # CE: the mean of two half-batch means equals the full-batch mean (equal token counts)
    a, b = adapter_tensors(tmp_path / "one" / "adapter"), adapter_tensors(tmp_path / "two" / "adapter")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ bad input
def _err(capsys, argv, warnings: int = 0):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == warnings + 1 and err[-1].startswith("error: "), err
    assert all(line.startswith("warning: ") for line in err[:-1]), err
    return err[-1]


def _args(corpus, out, *extra):
    return ["train", "--model", "tiny-llama", "--data", str(corpus), "--max-tokens", "2048", "--seq-len", "32",
            "--out", str(out), "--no-progress", *extra]


@pytest.mark.parametrize("extra, needle", [
    (["--method", "lora-plus"], "unknown training method 'lora-plus'; valid --method values: ce, game-lora, disagreement"),
    (["--method", "ce", "--no-ldb"], "--no-ldb only apply to --method game-lora"),
    (["--disagreement-lambda", "2"], "--disagreement-lambda only apply to --method disagreement"),
    (["--no-ldb", "--no-abt"], "use --method ce"),
    (["--design-layers", "5"], "--design-layers 5 is out of range"),
    (["--lambda-abt", "-0.1"], "--lambda-abt must be >= 0"),
    (["--seq-len", "4096"], "exceeds the model's maximum of 128"),
    (["--arbitration", "mgda"], "--arbitration mgda is not valid"),
])
def test_bad_options(tmp_path, corpus, capsys, extra, needle):
    assert needle in _err(capsys, _args(corpus, tmp_path / "o", *extra))


def test_empty_corpus(tmp_path, capsys):
    empty = tmp_path / "e.txt"
    empty.write_text("\n")
    assert "no text" in _err(capsys, _args(empty, tmp_path / "o"))


def test_resume_with_different_config_is_refused(tmp_path, corpus, capsys):
    Trainer(small(corpus, tmp_path / "o", checkpoint_every=2), progress=False).setup().fit()
    msg = _err(capsys, ["train", "--resume", str(tmp_path / "o"), "--lr", "0.01", "--seq-len", "16", "--no-progress"])
    assert "lr" in msg and "seq_len" in msg


def test_non_finite_loss_stops_with_last_checkpoint(tmp_path, corpus, capsys):
    msg = _err(capsys, _args(corpus, tmp_path / "o", "--lr", "1e30", "--checkpoint-every", "1", "--schedule", "constant",
                             "--arbitration", "sum", "--clip", "0"), warnings=1)  # --lr 1e30 is warned about
    assert "non-finite loss at step" in msg and "step-00000" in msg
    assert list((tmp_path / "o" / "checkpoints").glob("step-*"))
