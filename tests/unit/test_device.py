"""Every command on a chosen device: --device resolution and its errors, that device="cpu" gives
the default's numbers, that --compile really compiles and equals eager, and that the hot paths
make no tensor on a device of their own (checked with torch's default device set to ``meta``:
a tensor made without ``device=`` lands there and any op mixing it with the CPU model fails)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headgame.config import check_device, resolve_device
from headgame.errors import HeadgameError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


# ---------------------------------------------------------------------------- resolution


def test_resolve_device_auto_and_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "", "mps:0", 1, None])
def test_bad_device_spellings(value):
    with pytest.raises(HeadgameError, match="is not a device; pass --device auto, cpu, cuda or cuda:0"):
        check_device(value)


def test_cuda_asked_for_without_a_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for value in ("cuda", "cuda:0"):
        with pytest.raises(HeadgameError) as exc:
            resolve_device(value)
        msg = str(exc.value)
        assert "\n" not in msg and f"--device {value} asks for a GPU" in msg and "pass --device cpu" in msg


def test_gpu_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(HeadgameError, match=r"--device cuda:3 names GPU 3 but only 1 GPU\(s\) are visible"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("module, cls", [("headgame.analyze.config", "AnalyzeConfig"), ("headgame.fep.config", "FepConfig"),
                                         ("headgame.prune.config", "PruneConfig"), ("headgame.evaluate.config", "EvalConfig"),
                                         ("headgame.train.config", "TrainConfig")])
def test_every_config_checks_device(module, cls):
    import importlib

    config = getattr(importlib.import_module(module), cls)
    assert config().device == "auto"
    if cls != "EvalConfig":  # a run resumed on another device continues the same run
        assert "device" in config.NOT_IDENTITY
    with pytest.raises(HeadgameError, match="--device 'gpu' is not a device"):
        config(device="gpu")


def test_cli_names_the_fix_when_cuda_is_missing(monkeypatch, tmp_path, capsys):
    from headgame.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["analyze", "--model", "tiny-llama", "--device", "cuda", "--out", str(tmp_path / "a"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and "--device cuda asks for a GPU" in err and "pass --device cpu" in err
    assert not (tmp_path / "a").exists()  # checked before --out is claimed


# ---------------------------------------------------------------------------- device="cpu" equals the default


def test_analyze_on_cpu_equals_the_default(tmp_path, corpus):
    from headgame.analyze.config import AnalyzeConfig
    from headgame.analyze.run import run_analysis

    kw = dict(model="tiny-llama", data=str(corpus), max_tokens=256, seq_len=32, batch_size=2)
    default = run_analysis(AnalyzeConfig(out=str(tmp_path / "d"), **kw), progress=False, report=False)
    cpu = run_analysis(AnalyzeConfig(out=str(tmp_path / "c"), device="cpu", **kw), progress=False, report=False)
    for a, b in zip(default["layers"], cpu["layers"]):
        assert a["G"] == b["G"] and a["rho"] == b["rho"] and a["gamma"] == b["gamma"]
    assert default["data"]["mean_loss"] == cpu["data"]["mean_loss"]


def test_eval_on_cpu_equals_the_default(tmp_path):
    from headgame.evaluate.config import EvalConfig
    from headgame.evaluate.runner import run_eval

    def run(out, **kw):
        cfg = EvalConfig(model="tiny-llama", tasks="truthfulqa_mc2,nq_open", limit=3, data_dir=str(FIX), out=str(tmp_path / out), **kw)
        return run_eval(cfg, say=lambda m: None)

    default, cpu = run("d"), run("c", device="cpu")
    assert cpu["model"]["device"] == "cpu"
    for task in default["tasks"]:
        assert default["tasks"][task]["items"] == cpu["tasks"][task]["items"]


@pytest.fixture()
def meta_default():
    """Tensors made without ``device=`` land on ``meta`` while the model stays on the CPU."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def test_prune_timing_makes_tensors_on_the_model_device(meta_default):
    """The timed batches are drawn on the CPU generator's device and moved to the models' device;
    under the guard a tensor made without ``device=`` would land on ``meta`` and fail."""
    from headgame.models.load import load_model
    from headgame.prune import cost

    with torch.device("cpu"):
        model, tok, layout = load_model("tiny-llama")
    vocab = model.config.vocab_size
    fwd = cost.forward_throughput({"base": model, "same": model}, layout, batch_size=2, seq_len=8, warmup=0, repeats=1, vocab_size=vocab)
    gen = cost.generation_throughput({"base": model, "same": model}, tok, prompt_len=4, new_tokens=2, warmup=0, repeats=1,
                                     vocab_size=vocab)
    assert set(fwd) == set(gen) == {"base", "same"} and fwd["same"]["tokens_per_s"] > 0
    flops = cost.measured_flops(model, layout, 8, vocab_size=vocab)
    assert flops["total"] > 0


# ---------------------------------------------------------------------------- nothing on a hard-coded device


def test_the_guard_catches_a_tensor_made_without_a_device(meta_default):
    weight = torch.ones(3, device="cpu")
    with pytest.raises((RuntimeError, NotImplementedError)):
        (weight + torch.tensor([1.0, 2.0, 3.0])).tolist()  # the bug the guard is for


@pytest.mark.parametrize("decoding", ["greedy", "dola", "actdec"])
def test_scoring_and_generation_make_tensors_on_the_model_device(decoding):
    from headgame.evaluate.decoding import make_method
    from headgame.evaluate.requests import GenerateRequest, LoglikelihoodRequest, RollingRequest
    from headgame.evaluate.scorer import HFScorer, ScorerConfig
    from headgame.models.load import load_model

    model, tok, _ = load_model("tiny-llama")
    pre = "A shared few-shot preamble that every question repeats. "
    ll = [LoglikelihoodRequest(pre + "Q: one? A:", " yes"), LoglikelihoodRequest(pre + "Q: two? A:", " no"),
          LoglikelihoodRequest("", "empty context")]
    roll = [RollingRequest("a rolling text of some length " * 3)]
    gen = [GenerateRequest(pre + "Q: one? A:", until=("\x00",), max_new_tokens=3), GenerateRequest("Other", until=("\x00",), max_new_tokens=2)]

    def run():
        sc = HFScorer(model, tok, make_method(decoding, layers="0", layer=1), ScorerConfig(min_prefix=4, max_length=128))
        return sc.loglikelihood(ll), sc.loglikelihood_rolling(roll), sc.generate_until(gen)

    ref = run()
    torch.set_default_device("meta")
    try:
        guarded = run()
    finally:
        torch.set_default_device(None)
    assert guarded == ref


# ---------------------------------------------------------------------------- torch.compile


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_eval_compile_equals_eager_and_compiles(tmp_path):
    import torch._dynamo

    from headgame.evaluate.config import EvalConfig
    from headgame.evaluate.runner import run_eval

    def run(out, **kw):
        cfg = EvalConfig(model="tiny-llama", tasks="truthfulqa_mc2", limit=2, data_dir=str(FIX), out=str(tmp_path / out), **kw)
        return run_eval(cfg, say=lambda m: None)

    eager = run("e")
    torch._dynamo.reset()
    before = _graphs()
    compiled = run("c", compile=True)
    assert _graphs() > before  # inductor really traced the decoder
    a, b = eager["tasks"]["truthfulqa_mc2"]["items"], compiled["tasks"]["truthfulqa_mc2"]["items"]
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert x["num"] == pytest.approx(y["num"], abs=1e-5)
    torch._dynamo.reset()


def test_train_compile_outside_attention_equals_eager():
    """The train --compile path (MLPs and norms compiled in place, attention eager under the head
    taps): loss and every gradient equal eager within 1e-5."""
    import torch._dynamo

    from headgame.models.device import compile_outside_attention
    from headgame.models.load import load_model
    from headgame.models.tap import HeadTap

    def loss_and_grads(compile_: bool):
        model, _, layout = load_model("tiny-llama")
        model.train()
        if compile_:
            n = compile_outside_attention(model, layout.blocks(model), layout.attn_path.split(".")[0])
            assert n >= 2 * layout.n_layers
        ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        seen = []
        with HeadTap(model, layout, [0], on_grad=lambda l, g: seen.append(g.detach().clone())):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, seen

    torch._dynamo.reset()
    l0, g0, s0 = loss_and_grads(False)
    before = _graphs()
    l1, g1, s1 = loss_and_grads(True)
    assert _graphs() > before
    assert torch.allclose(l0, l1, atol=1e-5)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-5), name
    assert len(s0) == len(s1) == 1 and torch.allclose(s0[0], s1[0], atol=1e-5)  # the tap still sees the head gradients
    torch._dynamo.reset()


def test_train_with_compile_runs_and_matches_eager(tmp_path, corpus):
    from headgame.train.config import TrainConfig
    from headgame.train.loop import Trainer

    def fit(out, **kw):
        cfg = TrainConfig(model="tiny-llama", data=str(corpus), max_tokens=512, seq_len=32, batch_size=4, method="ce",
                          out=str(tmp_path / out), val_every=0, checkpoint_every=0, seed=3, device="cpu", **kw)
        trainer = Trainer(cfg, progress=False).setup()
        summary = trainer.fit()
        return summary, [p.detach().clone() for p in trainer.groups.params]

    s0, p0 = fit("e")
    s1, p1 = fit("c", compile=True)
    assert s1["steps"] == s0["steps"] >= 1
    for a, b in zip(p0, p1):
        assert torch.allclose(a, b, atol=1e-5)


def test_fep_on_cpu_equals_the_default(tmp_path, corpus):
    from headgame.fep.config import FepConfig
    from headgame.fep.run import run_fep

    kw = dict(model="tiny-llama", data=str(corpus), max_tokens=256, seq_len=32, bootstrap=0, mcmc_steps=0, ablation_tokens=64)
    a = run_fep(FepConfig(out=str(tmp_path / "d"), **kw), progress=False, report=False)
    b = run_fep(FepConfig(out=str(tmp_path / "c"), device="cpu", **kw), progress=False, report=False)
    assert a["layers"] == b["layers"] and a["epsilon_nash"] == b["epsilon_nash"]


# ---------------------------------------------------------------------------- fraction of the peak


def test_matmul_peak_reports_its_method_and_restores_threads():
    from headgame.system import matmul_peak

    before = torch.get_num_threads()
    p = matmul_peak("cpu", torch.float32, threads=1, n=64, repeats=3, warmup=1)
    assert torch.get_num_threads() == before
    assert set(p) >= {"flops_per_s", "method", "n", "dtype", "device", "threads"}
    assert (p["n"], p["dtype"], p["device"], p["threads"]) == (64, "float32", "cpu", 1)
    assert p["flops_per_s"] == pytest.approx(2 * 64**3 / p["seconds"])
    assert "median of 3" in p["method"] and "2*n^3" in p["method"]
    assert matmul_peak(dtype="bfloat16", n=32, repeats=1, warmup=0)["dtype"] == "bfloat16"


def test_peak_fraction_is_achieved_over_peak():
    from headgame.system import peak_fraction

    peak = {"flops_per_s": 4e9, "method": "m"}
    out = peak_fraction(1e9, 0.5, peak)
    assert out["achieved_flops_per_s"] == 2e9 and out["fraction_of_peak"] == 0.5 and out["peak"] == peak
    with pytest.raises(ValueError):
        peak_fraction(1e9, 0.0, peak)


def test_step_flops_counts_forward_input_and_weight_gradients():
    from headgame.models.load import load_model
    from headgame.prune.cost import analytic_flops, step_flops
    from headgame.train.lora import add_lora

    model, _, layout = load_model("tiny-llama")
    t, b = 16, 2
    fwd = b * analytic_flops(model, layout, t)["total"]
    full = step_flops(model, layout, t, batch_size=b)  # every weight trainable, the tied embedding included
    mats = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    assert (full["forward"], full["backward_input"], full["backward_weight"]) == (fwd, fwd, 2 * b * t * mats)
    for p in model.parameters():
        p.requires_grad_(False)
    assert step_flops(model, layout, t, batch_size=b)["total"] == fwd  # nothing needs a gradient: a forward
    analyze = step_flops(model, layout, t, batch_size=b, grad_to_layer=0)  # analyze's activation-only backward
    assert analyze["total"] == 2 * fwd and analyze["backward_weight"] == 0
    lora = add_lora(model, layout, r=2, alpha=4, dropout=0.0, seed=0)
    lo = step_flops(lora, layout, t, batch_size=b)
    adapters = sum(p.numel() for n, p in lora.named_parameters() if p.requires_grad)
    assert lo["backward_weight"] == 2 * b * t * adapters
    assert lo["forward"] == fwd + 2 * b * t * adapters
    assert lo["lowest_grad_layer"] == 0 and lo["total"] < 2.2 * fwd
