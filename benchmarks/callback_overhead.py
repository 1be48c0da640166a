"""Overhead of HeadCouplingCallback on a transformers Trainer step.

The same LoRA model (peft, q/k/v/o) and batches are trained by a plain ``transformers.Trainer``
and by one with the callback (Γ of the design layer every step; and, as a third variant, the
full G written to JSONL every step); each optimizer step is timed from ``on_step_begin`` to
``on_step_end`` (forward, backward, the callback's Γ, the optimizer step). Variants alternate in
rounds; the first step of every run is a warm-up and not counted. ``GameLoraTrainer``'s step is
timed beside them for scale.

Writes benchmarks/results/callback_overhead.json (median step times, ratios, the device, and a
``peak`` block: the analytic FLOPs of one LoRA step, ``headgame.prune.cost.step_flops``, over
each variant's median step time, as a fraction of the CPU's measured matmul peak,
``headgame.system.matmul_peak``). Run:
.venv/bin/python benchmarks/callback_overhead.py [--model tiny-llama --steps 8 --rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from headgame.integrations.transformers import GameLoraTrainer, HeadCouplingCallback
from headgame.models.load import load_model
from headgame.prune.cost import step_flops
from headgame.system import device_name, matmul_peak, package_versions, peak_fraction
from headgame.train.lora import add_lora

RESULTS = Path(__file__).resolve().parent / "results"


class _StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.seconds.append(time.perf_counter() - self._t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per run (the first is a warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each variant, alternating")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=str(RESULTS / "callback_overhead.json"))
    ap.add_argument("--peak-n", type=int, default=None, help="matrix size of the matmul peak (default 2048)")
    ap.add_argument("--note", default="", help="conditions of the measurement, recorded in the JSON (e.g. a busy machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    base, _, layout = load_model(args.model)
    initial = add_lora(base, layout, r=16, alpha=32.0, dropout=0.0, seed=0)
    gen = torch.Generator().manual_seed(0)
    vocab = initial.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (args.batch_size * args.steps, args.seq_len), generator=gen)
    data = [{"input_ids": row, "labels": row} for row in ids]

    def run(variant: str, tmp: Path) -> list[float]:
        model = copy.deepcopy(initial)
        targs = TrainingArguments(output_dir=str(tmp / variant), per_device_train_batch_size=args.batch_size,
                                  max_steps=args.steps, logging_steps=args.steps, save_strategy="no", report_to="none",
                                  use_cpu=True, disable_tqdm=True, train_sampling_strategy="sequential", learning_rate=1e-4)
        timer = _StepTimer()
        cls = GameLoraTrainer if variant == "game_lora_trainer" else Trainer
        trainer = cls(model=model, args=targs, train_dataset=data, callbacks=[timer])
        if variant == "callback":
            HeadCouplingCallback().attach(trainer)
        elif variant == "callback_g_every_step":
            HeadCouplingCallback(g_every=1).attach(trainer)
        trainer.train()
        return timer.seconds[1:]  # step 1 is the warm-up

    variants = ("plain", "callback", "callback_g_every_step", "game_lora_trainer")
    times: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for v in variants:
                times[v] += run(v, Path(tmp))
            print(f"round {r}: " + ", ".join(f"{v} {statistics.median(t) * 1e3:.1f} ms" for v, t in times.items()), flush=True)

    med = {v: statistics.median(t) for v, t in times.items()}
    peak = matmul_peak("cpu", torch.float32, threads=args.threads, n=args.peak_n)
    work = step_flops(initial, layout, args.seq_len, batch_size=args.batch_size)  # forward + backward, LoRA weights only
    result = {
        "benchmark": "callback_overhead",
        "model": args.model,
        "batch": [args.batch_size, args.seq_len],
        "design_layer_only": True,
        "steps_per_run": args.steps,
        "rounds": args.rounds,
        "median_step_seconds": med,
        "all_step_seconds": times,
        "ratio_callback": med["callback"] / med["plain"],
        "ratio_callback_g_every_step": med["callback_g_every_step"] / med["plain"],
        "ratio_game_lora_trainer": med["game_lora_trainer"] / med["plain"],
        "device": device_name(args.threads),
        "peak": {"device_peak": peak, "work": work,
                 "note": "work = analytic FLOPs of one plain LoRA step (forward, input gradients to the lowest adapted "
                         "layer, LoRA weight gradients); the callback's Γ/G and GameLoraTrainer's extra task backwards are "
                         "not counted, so their fraction is that of the plain step's work in their time",
                 **{v: peak_fraction(work["total"], t, peak) for v, t in med.items()}},
        "note": args.note,
        "versions": package_versions(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("median_step_seconds", "ratio_callback", "ratio_callback_g_every_step",
                                              "ratio_game_lora_trainer", "device")}, indent=1))


if __name__ == "__main__":
    main()
