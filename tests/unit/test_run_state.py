"""Run state without pickle: io.save_state/load_state, and --resume refusing pickled run folders.

A pickle can name any callable to run while it loads. The payload below writes a marker file when
unpickled; a resume that loads it would leave the marker behind. Every test checks the marker
is absent, so a refusal that comes only after the payload ran still fails.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from headgame.cli import main
from headgame.errors import HeadgameError


class Payload:
    """Unpickling this runs ``exec``, which writes ``marker`` (harmless, but proof that code ran)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('the payload ran')",)


def _plant(path: Path, marker: Path) -> None:
    torch.save({"state": Payload(marker)}, path)
    assert not marker.exists()  # saving does not run it


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = [l for l in capsys.readouterr().err.strip().splitlines() if l.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ------------------------------------------------------------------ io.save_state / load_state
def test_state_round_trip_keeps_types_keys_and_bits(tmp_path):
    from headgame.io import load_state, save_state

    gen = torch.Generator().manual_seed(5)
    state = {
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3, generator=gen)},
                                7: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, generator=gen, dtype=torch.float64)}},
                      "param_groups": [{"betas": (0.9, 0.999), "params": [0, 7], "foreach": None, "lr": 3e-4}]},
        "rng": torch.get_rng_state(),  # a ByteTensor of 5056 bytes
        "python": (3, tuple(range(625)), None),
        "dtypes": [torch.arange(5, dtype=torch.int64), torch.tensor([True, False]), torch.zeros(2, dtype=torch.bfloat16) + 1.5,
                   torch.arange(3, dtype=torch.int32), torch.tensor([1, 255], dtype=torch.uint8), torch.ones(1, dtype=torch.float16)],
        "numbers": [math.nan, math.inf, -math.inf, 0.1, -0.0, 2**53 + 1, True],
        (1, 2): "a tuple key", 2.5: "a float key", "__tensor__": "a key that looks like a marker",
        "nested": {"deeper": [{"x": (1, [2, (3,)])}]}, "empty": {}, "none": None,
    }
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert set(back) == set(state)
    assert set(back["optimizer"]["state"]) == {0, 7}  # int keys stay ints
    for k in (0, 7):
        for name, t in state["optimizer"]["state"][k].items():
            got = back["optimizer"]["state"][k][name]
            assert got.dtype == t.dtype and torch.equal(got, t)
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple)
    assert back["rng"].dtype == torch.uint8 and torch.equal(back["rng"], state["rng"])
    torch.set_rng_state(back["rng"])  # a restored RNG state is usable
    for got, t in zip(back["dtypes"], state["dtypes"]):
        assert got.dtype == t.dtype and torch.equal(got, t)
    nums = back["numbers"]
    assert math.isnan(nums[0]) and nums[1:3] == [math.inf, -math.inf] and nums[3] == 0.1
    assert math.copysign(1.0, nums[4]) == -1.0 and nums[5] == 2**53 + 1 and nums[6] is True
    assert back["python"] == state["python"] and isinstance(back["python"][1], tuple)
    assert back[(1, 2)] == "a tuple key" and back[2.5] == "a float key" and back["__tensor__"] == "a key that looks like a marker"
    assert back["nested"] == {"deeper": [{"x": (1, [2, (3,)])}]} and back["empty"] == {} and back["none"] is None


def test_numpy_random_state_round_trips(tmp_path):
    from headgame.io import load_state, save_state
    from headgame.train.checkpoint import rng_state, set_rng_state

    np.random.seed(11)
    save_state(tmp_path / "r.safetensors", rng_state())
    expected = (np.random.rand(3), torch.rand(2))
    set_rng_state(load_state(tmp_path / "r.safetensors"))
    np.testing.assert_array_equal(np.random.rand(3), expected[0])
    assert torch.equal(torch.rand(2), expected[1])


@pytest.mark.parametrize("content", ["pickle", "empty", "text", "bad-metadata"])
def test_a_file_that_is_not_a_run_state_is_refused(tmp_path, content):
    from safetensors.torch import save

    from headgame.io import load_state

    path = tmp_path / "state.safetensors"
    marker = tmp_path / "pwned"
    if content == "pickle":
        _plant(path, marker)
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "text":
        path.write_text("step: 3\n")
    else:  # a real safetensors file whose state metadata points at a missing tensor
        path.write_bytes(save({"t0": torch.zeros(1)}, metadata={"headgame_state": '{"__tensor__": "t9"}'}))
    with pytest.raises(HeadgameError, match="run state"):
        load_state(path)
    assert not marker.exists()


# ------------------------------------------------------------------ --resume on a pickled run folder
def test_analyze_resume_refuses_a_pickled_state(tmp_path, corpus, capsys):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    _plant(out / ".analyze-state.pt", marker)  # the pickle state file of headgame before 0.2
    argv = ["analyze", "--model", "tiny-llama", "--data", str(corpus), "--max-tokens", "128", "--seq-len", "32",
            "--batch-size", "2", "--out", str(out), "--no-progress", "--resume"]
    msg = _one_line_error(capsys, argv)
    assert not marker.exists(), "the pickle was loaded: its payload ran"
    assert "pickle" in msg and "without --resume" in msg


def test_analyze_resume_refuses_a_pickle_under_the_new_name(tmp_path, corpus, capsys):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    _plant(out / ".analyze-state.safetensors", marker)
    argv = ["analyze", "--model", "tiny-llama", "--data", str(corpus), "--max-tokens", "128", "--seq-len", "32",
            "--batch-size", "2", "--out", str(out), "--no-progress", "--resume"]
    msg = _one_line_error(capsys, argv)
    assert not marker.exists() and "not a headgame run state" in msg


def _trained_run(corpus, out: Path) -> Path:
    from headgame.train.config import TrainConfig
    from headgame.train.loop import Trainer

    cfg = TrainConfig(model="tiny-llama", data=str(corpus), max_tokens=2048, seq_len=32, batch_size=4, out=str(out),
                      val_every=0, checkpoint_every=2, seed=3, method="ce")
    Trainer(cfg, progress=False).setup().fit()
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert ckpts
    return ckpts[-1]


@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt"])
def test_train_resume_refuses_pickled_checkpoint_before_loading_it(tmp_path, corpus, capsys, name):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    newest = _trained_run(corpus, out)
    _plant(newest / name, marker)  # what a checkpoint of headgame before 0.2 held
    msg = _one_line_error(capsys, ["train", "--resume", str(out), "--no-progress"])
    assert not marker.exists(), "the pickle was loaded: its payload ran"
    assert name in msg and "pickle" in msg and "start the run over" in msg
    # the checkpoint folder itself is refused the same way
    msg = _one_line_error(capsys, ["train", "--resume", str(newest), "--no-progress"])
    assert not marker.exists() and name in msg


def test_train_resume_refuses_a_pickle_in_place_of_the_run_state(tmp_path, corpus, capsys):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    newest = _trained_run(corpus, out)
    _plant(newest / "run_state.safetensors", marker)
    msg = _one_line_error(capsys, ["train", "--resume", str(out), "--no-progress"])
    assert not marker.exists() and "not a headgame run state" in msg
