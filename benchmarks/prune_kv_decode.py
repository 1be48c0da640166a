"""What a user feels at inference after pruning single query heads vs whole GQA groups.

On the packaged SmolLM2-135M (30 layers x 9 query heads over 3 KV heads, float32, CPU) one
criterion (default ``ablation``: ΔNLL of gating each head off, on a small loss text; or a column
of a ``head_scores.csv`` written by ``headgame prune``) ranks the heads; the same ``--fraction``
is then pruned two ways: ``head`` (headgame.measure.select.select_heads: the lowest query heads)
and ``group`` (select_groups: the lowest groups of 3 query heads sharing a KV head, by their mean
key). Both are removed physically (headgame.models.surgery.pruned_copy). Per variant:

* KV-cache bytes per token: analytic Σ_layers kept_kv x head_dim x 2 (K, V) x bytes/element, the
  same with the heads the cache really holds (a layer whose kept query heads are spread unevenly
  over its KV heads hands each kept query head its own K/V copy before the cache:
  HeadGatherLinear), and measured from the DynamicCache of a prefill (K+V bytes / batch x tokens);
* prefill tokens/s of a 1 x ``--context`` prompt (use_cache=True, logits of the last token only);
* decode tokens/s at ``--context`` tokens of context, batch 1 and 8: the context is prefilled
  once per variant and batch, each timed round continues ``--decode-tokens`` greedy steps from a
  fresh copy of that cache (copied outside the clock), tokens/s = batch x steps / seconds;
* peak memory of prefill + decode: the peak-RSS rise in a fresh subprocess per variant and batch;
* perplexity on GSM8K and WikiText-2 (headgame.measure.perplexity) beside the speed.

Timings interleave base and pruned runs round by round, alternating which goes first (as
headgame.prune.cost.paired_rounds), after warm-up rounds; speed-ups are ratios of medians.
Writes benchmarks/results/prune_kv_decode.json. Run:
  .venv/bin/python benchmarks/prune_kv_decode.py [--scores P/head_scores.csv --scores-column ablation]
Smoke check (tiny random model, a temporary output file, seconds):
  .venv/bin/python benchmarks/prune_kv_decode.py --smoke
"""

from __future__ import annotations

import argparse
import copy
import csv
import ctypes
import gc
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from headgame.errors import HeadgameError

RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- models and caches


def get_model(spec: str, smoke: bool):
    """(model, tokenizer, layout): the packaged model, or tiny-llama (4 query heads over 2 KV heads) for --smoke."""
    from headgame.models.layout import HeadLayout

    if smoke:
        from headgame.models.tiny import byte_tokenizer, tiny_model

        model = tiny_model("tiny-llama")
        return model, byte_tokenizer(), HeadLayout.from_model(model)
    from headgame.models.load import load_model

    return tuple(load_model(spec))


def _forward(model, ids: torch.Tensor, cache=None):
    """One forward that fills/extends the KV cache; only the last position's logits (as generate does)."""
    params = inspect.signature(model.forward).parameters
    kw = {"input_ids": ids, "use_cache": True}
    if "logits_to_keep" in params:
        kw["logits_to_keep"] = 1
    if cache is not None:
        kw["cache" if "cache" in params else "past_key_values"] = cache  # transformers 5 renamed it
    out = model(**kw)
    c = getattr(out, "cache", None)
    return out.logits[:, -1], (c if c is not None else out.past_key_values)


def cache_tensors(cache) -> list[torch.Tensor]:
    if hasattr(cache, "layers"):
        return [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return [t for kv in cache for t in kv]  # legacy tuple of (K, V) per layer


def cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for t in cache_tensors(cache))


def kept_kv_heads(layout, rec) -> list[int]:
    return [layout.n_kv_heads] * layout.n_layers if rec is None else [len(rec.kept_kv(l)) for l in range(layout.n_layers)]


def cached_kv_heads(model, layout) -> list[int]:
    """Heads of K/V each layer's cache holds, read off the model: the output blocks of its K
    projection (the surgery keeps only the kept KV heads there; an uneven layer hands query heads
    their KV head after the cache, families/kvgather.py)."""
    return [layout.attention(model, l).k_proj.weight.shape[0] // layout.head_dim for l in range(layout.n_layers)]


@torch.inference_mode()
def kv_bytes(model, layout, rec, *, batch: int = 1, tokens: int = 16, seed: int = 0) -> dict:
    """KV-cache bytes per token: analytic (kept KV heads; heads really cached) and measured from a prefill's cache."""
    element = next(model.parameters()).element_size()
    per_head = layout.head_dim * 2 * element  # K and V
    vocab = int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(seed))
    _, cache = _forward(model, ids)
    total = cache_bytes(cache)
    measured = total // (batch * tokens) if total % (batch * tokens) == 0 else total / (batch * tokens)
    analytic = sum(kept_kv_heads(layout, rec)) * per_head
    stored = sum(cached_kv_heads(model, layout)) * per_head
    return {"analytic_kept_kv": analytic, "analytic_as_stored": stored, "measured": measured,
            "agree": measured == analytic, "agree_as_stored": measured == stored, "bytes_per_element": element,
            "measured_on": [batch, tokens]}


# --------------------------------------------------------------------------- scores


def pruning_key(args, model, tok, layout) -> tuple[np.ndarray, str]:
    from headgame.prune.criteria import ScoreContext, get_criterion

    if args.scores:
        name = args.scores_column or args.criterion
        crit = get_criterion(name)
        with open(args.scores, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or name not in rows[0]:
            raise HeadgameError(f"{args.scores} has no column '{name}'; pass --scores-column with one of its criterion columns")
        scores = np.full((layout.n_layers, layout.n_heads), np.nan)
        for r in rows:
            scores[int(r["layer"]), int(r["head"])] = float(r[name])
        if np.isnan(scores).any():
            raise HeadgameError(f"{args.scores} does not score every head of this model; pass the head_scores.csv of the same model")
        return crit.pruning_key(scores), f"{name} column of {args.scores}"
    from headgame.data.texts import load_sequences, resolve_source

    crit = get_criterion(args.criterion)
    if crit.kind == "information":
        raise HeadgameError(f"criterion {crit.name} needs the GT-FEP analysis; run headgame prune and pass its head_scores.csv with --scores")
    source = resolve_source("auto", args.data_dir)
    seqs = load_sequences(source, tok, causal=True, max_tokens=args.loss_tokens, seq_len=args.loss_seq_len,
                          data_dir=args.data_dir, seed=args.seed)
    cache = Path.home() / ".cache" / "headgame" / f"kv-decode-{args.model}-{crit.name}-{seqs.n_tokens}-seed{args.seed}.npy"
    if cache.exists() and not args.smoke:  # a rerun reuses the scores (one forward per head)
        scores = np.load(cache)
    else:
        scores = crit.compute(ScoreContext(model, tok, layout, loss_seqs=seqs, batch_size=4, seed=args.seed))
        if not args.smoke:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, scores)
    return crit.pruning_key(scores), f"{crit.name} on {seqs.n_tokens} tokens of {source}"


# --------------------------------------------------------------------------- timing


def paired_setup_rounds(base, others: dict, *, warmup: int, repeats: int) -> dict:
    """headgame.prune.cost.paired_rounds with an untimed setup: each entry is (setup, run), timed is run(setup())."""
    out = {n: {"base": [], "model": []} for n in others}
    for r in range(warmup + repeats):
        for i, (name, job) in enumerate(others.items()):
            pair = [("base", base), ("model", job)]
            if (r + i) % 2:
                pair.reverse()
            for role, (setup, run) in pair:
                state = setup()
                t0 = time.perf_counter()
                run(state)
                dt = time.perf_counter() - t0
                if r >= warmup:
                    out[name][role].append(dt)
    return out


def summarize(timed: dict, work: float) -> dict:
    """tokens/s of medians; a variant's speed-up is the median of its adjacent base runs over its own median."""
    base_all = [t for v in timed.values() for t in v["base"]]
    med = statistics.median(base_all)
    res = {"base": {"median_s": med, "tokens_per_s": work / med, "times_s": base_all, "speedup": 1.0}}
    for name, v in timed.items():
        m, b = statistics.median(v["model"]), statistics.median(v["base"])
        res[name] = {"median_s": m, "tokens_per_s": work / m, "times_s": v["model"], "base_median_s": b,
                     "speedup": b / m, "paired_ratio_median": statistics.median(x / y for x, y in zip(v["base"], v["model"]))}
    return res


def time_prefill(models: dict, vocab: int, args) -> dict:
    from headgame.prune.cost import paired_rounds

    ids = torch.randint(0, vocab, (1, args.context), generator=torch.Generator().manual_seed(args.seed))

    def runner(m):
        def run() -> None:
            with torch.inference_mode():
                _forward(m, ids)
        return run

    timed = paired_rounds(runner(models["base"]), {n: runner(m) for n, m in models.items() if n != "base"},
                          warmup=args.warmup, repeats=args.repeats)
    return summarize(timed, args.context)


def time_decode(models: dict, vocab: int, batch: int, args) -> dict:
    ids = torch.randint(0, vocab, (batch, args.context), generator=torch.Generator().manual_seed(args.seed + batch))
    jobs = {}
    for name, m in models.items():
        with torch.inference_mode():
            logits, cache = _forward(m, ids)  # the context, once per variant and batch
        first = logits.argmax(-1, keepdim=True)

        def run(c, m=m, first=first) -> None:
            tok = first
            with torch.inference_mode():
                for _ in range(args.decode_tokens):
                    logits, c = _forward(m, tok, c)
                    tok = logits.argmax(-1, keepdim=True)  # greedy

        # every round starts from a fresh copy, so at the same context length
        jobs[name] = (lambda cache=cache: copy.deepcopy(cache), run)
    timed = paired_setup_rounds(jobs["base"], {n: j for n, j in jobs.items() if n != "base"},
                                warmup=args.warmup, repeats=args.repeats)
    return summarize(timed, batch * args.decode_tokens)


# --------------------------------------------------------------------------- memory (a fresh process each)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        raise HeadgameError(f"cannot reset the peak-RSS mark ({exc}); run on Linux or pass --no-memory") from None


def memory_worker(spec: dict) -> dict:
    from headgame.models.surgery import pruned_copy

    torch.set_num_threads(spec["threads"])
    model, _, layout = get_model(spec["model"], spec["smoke"])
    if spec["removed"] is not None:
        # the base stays alive (as in the timing process): no freed attention weights to reuse
        pruned, _ = pruned_copy(model, layout, {int(l): h for l, h in spec["removed"].items()})
    else:
        pruned = model
    vocab = int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (spec["batch"], spec["context"]), generator=torch.Generator().manual_seed(spec["seed"]))
    gc.collect()
    try:  # hand the loader's freed heap back to the OS, so the rise below is fresh pages only
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    _reset_peak()
    before = _status_kb("VmRSS")
    with torch.inference_mode():
        logits, cache = _forward(pruned, ids)
        prefilled = _status_kb("VmRSS")
        tok = logits.argmax(-1, keepdim=True)
        for _ in range(spec["decode_tokens"]):
            logits, cache = _forward(pruned, tok, cache)
            tok = logits.argmax(-1, keepdim=True)
    peak = _status_kb("VmHWM")
    return {"peak_rss_increase_mb": (peak - before) / 1024, "rss_before_mb": before / 1024,
            "rss_after_prefill_mb": prefilled / 1024, "final_cache_mb": cache_bytes(cache) / 2**20}


def measure_memory(jobs: dict, args, *, parallel: bool) -> dict:
    """``{label: (removed, batch)}`` -> each worker's result. ``parallel`` (smoke only) overlaps the
    processes: RSS is per process, so that is honest for memory, but it adds up their RAM."""
    procs = {}
    for label, (removed, batch) in jobs.items():
        spec = {"model": args.model, "smoke": args.smoke, "removed": removed, "batch": batch, "context": args.context,
                "decode_tokens": args.decode_tokens, "threads": args.threads, "seed": args.seed}
        procs[label] = subprocess.Popen([sys.executable, __file__, "--memory-worker", json.dumps(spec)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if not parallel:
            procs[label].wait()
    out = {}
    for label, proc in procs.items():
        stdout, stderr = proc.communicate()
        if proc.returncode:
            raise HeadgameError(f"the memory subprocess for {label} failed: {stderr.strip().splitlines()[-1:]}")
        out[label] = json.loads(stdout.strip().splitlines()[-1])
    return out


# --------------------------------------------------------------------------- perplexity


def evalsets(args, tok, notes: dict) -> list:
    from headgame.data.datadir import data_file
    from headgame.data.texts import GSM8K_TEST, WIKITEXT_TEST
    from headgame.measure.perplexity import gsm8k_set, wikitext_set

    sets = []
    for name, rel in (("gsm8k", GSM8K_TEST), ("wikitext2", WIKITEXT_TEST)):
        try:
            path = str(data_file(rel, args.data_dir))
        except HeadgameError as exc:
            notes[f"perplexity_{name}"] = f"skipped: {exc}"
            continue
        sets.append(gsm8k_set(tok, path, max_len=args.ppl_max_len, max_tokens=args.ppl_max_tokens) if name == "gsm8k"
                    else wikitext_set(tok, path, window=args.ppl_max_len, max_tokens=args.ppl_max_tokens))
    return sets


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--criterion", default="ablation", help="scored here on --loss-tokens of text (not an information criterion)")
    ap.add_argument("--scores", default=None, help="head_scores.csv of headgame prune (columns layer, head, <criteria>)")
    ap.add_argument("--scores-column", default=None, help="its column to rank by (default: --criterion)")
    ap.add_argument("--loss-tokens", type=int, default=512)
    ap.add_argument("--loss-seq-len", type=int, default=256)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=None, help="GSM8K / WikiText-2 folder (default $HEADGAME_DATA_DIR)")
    ap.add_argument("--ppl-max-tokens", type=int, default=8192)
    ap.add_argument("--ppl-max-len", type=int, default=1024, help="GSM8K truncation and WikiText-2 window")
    ap.add_argument("--memory-batches", default=None, help="batches of the peak-memory runs (default --batches)")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny random model, tiny sizes, output in a temp folder")
    ap.add_argument("--out", default=None)
    ap.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--add-peak", default=None, metavar="JSON", help="only add the peak fractions to a finished result file")
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.context, args.decode_tokens, args.repeats, args.warmup = "tiny-llama", 64, 4, 1, 1
        args.loss_tokens, args.loss_seq_len, args.ppl_max_tokens, args.ppl_max_len = 256, 64, 256, 64
        args.memory_batches = args.memory_batches or "1"
    args.out = args.out or str(Path(tempfile.gettempdir()) / "prune_kv_decode_smoke.json" if args.smoke
                               else RESULTS / "prune_kv_decode.json")
    return args


def write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


NOTES = {
    "selection": "head: select_heads (lowest query heads, every layer keeps one); group: select_groups (lowest GQA groups "
                 "by mean key; the same head budget as round(k / group_size) groups, half up)",
    "kv_bytes_per_token": "analytic_kept_kv = Σ_layers kept KV heads x head_dim x 2 (K, V) x bytes/element; analytic_as_stored "
                          "counts the K/V heads each layer's k_proj projects (what the cache receives; since the KV-gather "
                          "surgery these equal the kept KV heads in every layer); measured = K+V bytes "
                          "of the DynamicCache after a prefill / (batch x tokens); agree: measured == analytic_kept_kv",
    "prefill": "1 x context tokens, use_cache=True, last-position logits only; tokens/s = context / median seconds",
    "decode": "context prefilled once per variant and batch; each round copies that cache (untimed), then times "
              "decode_tokens greedy steps; tokens/s = batch x steps / median seconds",
    "speedup": "median of the adjacent base runs / the variant's median; rounds alternate which goes first (cost.paired_rounds)",
    "peak_memory": "fresh subprocess per variant and batch: load (the base kept beside a pruned copy), gc + malloc_trim, "
                   "reset VmHWM (/proc/self/clear_refs = 5), prefill, decode; peak_rss_increase_mb = VmHWM - VmRSS before "
                   "(cache + activations, weights excluded)",
    "perplexity": "exp(mean token NLL); GSM8K problems one by one (truncated to ppl_max_len), WikiText-2 in windows of "
                  "ppl_max_len; ppl_max_tokens per set; one-shot pruning, no fine-tuning",
}


@contextmanager
def phase(phases: dict, name: str):
    t0 = time.perf_counter()
    yield
    phases[name] = time.perf_counter() - t0


def describe(layout, rec, removed, model, context: int) -> dict:
    return {"n_heads_removed": 0 if rec is None else rec.n_removed,
            "kv_heads_removed": layout.n_layers * layout.n_kv_heads - sum(kept_kv_heads(layout, rec)),
            "kv_heads_cached": sum(cached_kv_heads(model, layout)),
            "uneven_layers": 0 if rec is None else sum(not rec.cut(l).is_even() for l in range(layout.n_layers)),
            "removed_heads": {str(l): h for l, h in (removed or {}).items()},
            "kv_bytes_per_token": kv_bytes(model, layout, rec, batch=2, tokens=min(64, context))}


def add_peak_fraction(result: dict, models: dict, layout, threads: int) -> None:
    """Share of the machine's measured fp32 matmul peak reached by prefill and decode (analytic
    FLOPs, prune/cost.py): prefill = analytic(C) per C tokens; one decode token at context C costs
    analytic(C + 1) − analytic(C) (its projections, MLP and LM head, and attention over C keys)."""
    from headgame.prune.cost import analytic_flops
    from headgame.system import matmul_peak

    peak = matmul_peak("cpu", "float32", threads)
    ctx = result["settings"]["context"]
    for name, v in result["variants"].items():
        total = lambda t: analytic_flops(models[name], layout, t)["total"]  # noqa: E731
        per_prefill_token = total(ctx) / ctx
        per_decode_token = total(ctx + 1) - total(ctx)
        out = {"prefill": per_prefill_token * v["prefill"]["tokens_per_s"] / peak["flops_per_s"]}
        for b, d in v.get("decode", {}).items():
            out[f"decode_{b}"] = per_decode_token * d["tokens_per_s"] / peak["flops_per_s"]
        v["fraction_of_peak"] = out
    result["peak"] = peak
    result["notes"]["fraction_of_peak"] = ("analytic FLOPs per second over the measured fp32 matmul peak of the same threads "
                                           "(headgame.system.matmul_peak); decode is memory-bound, so its share is small")


def _add_peak_to(path: str, threads: int) -> None:
    from headgame.models.surgery import pruned_copy

    result = json.loads(Path(path).read_text())
    torch.set_num_threads(threads)
    model, _, layout = get_model(result["model"], result.get("smoke", False))
    models = {n: model if not v["removed_heads"] else pruned_copy(model, layout, {int(l): h for l, h in v["removed_heads"].items()})[0]
              for n, v in result["variants"].items()}
    add_peak_fraction(result, models, layout, threads)
    write_atomic(Path(path), result)
    print({n: {k: round(x, 3) for k, x in v["fraction_of_peak"].items()} for n, v in result["variants"].items()})


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.add_peak:
        _add_peak_to(args.add_peak, args.threads)
        return
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return
    from headgame.measure.perplexity import perplexity
    from headgame.measure.select import SELECTIONS, select
    from headgame.models.surgery import pruned_copy
    from headgame.system import cpu_name, package_versions

    torch.set_num_threads(args.threads)
    t_start, phases, notes = time.perf_counter(), {}, {}
    batches = [int(b) for b in args.batches.split(",")]
    model, tok, layout = get_model(args.model, args.smoke)
    if layout.max_positions and args.context + args.decode_tokens > layout.max_positions:
        raise HeadgameError(f"--context {args.context} + --decode-tokens exceeds the model's {layout.max_positions} positions; lower --context")
    group = layout.n_heads // layout.n_kv_heads
    with phase(phases, "scores_s"):
        key, how = pruning_key(args, model, tok, layout)
    print(f"scores: {how}", flush=True)
    models, recs, removed = {"base": model}, {"base": None}, {"base": None}
    for sel in SELECTIONS:
        removed[sel] = select(key, args.fraction, selection=sel, group_size=group)
        models[sel], recs[sel] = pruned_copy(model, layout, removed[sel])
    vocab = int(model.config.vocab_size)
    res = {n: describe(layout, recs[n], removed[n], models[n], args.context) for n in models}
    base_kv = res["base"]["kv_bytes_per_token"]
    for v in res.values():
        kv = v["kv_bytes_per_token"]
        v["kv_reduction_vs_base"] = {k: 1 - kv[k] / base_kv[k] for k in ("analytic_kept_kv", "measured")}
    print("kv bytes/token:", {n: v["kv_bytes_per_token"]["measured"] for n, v in res.items()}, flush=True)

    with phase(phases, "prefill_s"):
        for n, r in time_prefill(models, vocab, args).items():
            res[n]["prefill"] = r
    print("prefill tok/s:", {n: round(v["prefill"]["tokens_per_s"], 1) for n, v in res.items()}, flush=True)
    with phase(phases, "decode_s"):
        for b in batches:
            for n, r in time_decode(models, vocab, b, args).items():
                res[n].setdefault("decode", {})[f"b{b}"] = r
            gc.collect()  # drop this batch's caches before the next
            print(f"decode b{b} tok/s:", {n: round(v["decode"][f"b{b}"]["tokens_per_s"], 1) for n, v in res.items()}, flush=True)
    for v in res.values():
        v["speedups"] = {"prefill": v["prefill"]["speedup"], **{f"decode_{b}": d["speedup"] for b, d in v["decode"].items()}}
    if args.memory:
        mem_batches = [int(b) for b in (args.memory_batches or args.batches).split(",")]
        jobs = {(n, b): (res[n]["removed_heads"] if recs[n] else None, b) for n in models for b in mem_batches}
        with phase(phases, "memory_s"):
            for (n, b), m in measure_memory(jobs, args, parallel=args.smoke).items():
                res[n].setdefault("peak_memory", {})[f"b{b}"] = m
        print("peak rss rise MB:", {n: {b: round(m["peak_rss_increase_mb"], 1) for b, m in v["peak_memory"].items()}
                                    for n, v in res.items()}, flush=True)
    with phase(phases, "perplexity_s"):
        sets = evalsets(args, tok, notes)
        for n, m in models.items():
            res[n]["perplexity"] = {es.name: perplexity(m, layout, tok, es, batch_size=4) for es in sets}
            for name, p in res[n]["perplexity"].items():
                p["change_rel"] = p["ppl"] / res["base"]["perplexity"][name]["ppl"] - 1.0
    loadavg = Path("/proc/loadavg")
    result = {
        "benchmark": "prune_kv_decode", "model": args.model, "smoke": args.smoke,
        "machine": {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__, "versions": package_versions(),
                    "date": time.strftime("%Y-%m-%d"), "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                    "load_average_1m": loadavg.read_text().split()[0] if loadavg.exists() else None},
        "settings": {"fraction": args.fraction, "scores": how, "group_size": group, "n_layers": layout.n_layers,
                     "n_heads": layout.n_heads, "n_kv_heads": layout.n_kv_heads, "head_dim": layout.head_dim,
                     "context": args.context, "decode_tokens": args.decode_tokens, "batches": batches, "warmup": args.warmup,
                     "repeats": args.repeats, "ppl_max_tokens": args.ppl_max_tokens, "ppl_max_len": args.ppl_max_len,
                     "perplexity_sets": [es.describe() for es in sets], "seed": args.seed},
        "variants": res,
        "notes": {**notes, **NOTES},
        "seconds": time.perf_counter() - t_start,
        "phase_seconds": phases,
    }
    add_peak_fraction(result, models, layout, args.threads)
    write_atomic(Path(args.out), result)
    print(f"wrote {args.out} in {result['seconds']:.1f}s", flush=True)


if __name__ == "__main__":
    main()
