"""Cross-check headgame's scores against lm-evaluation-harness on the same model and items.

For truthfulqa_mc1, truthfulqa_mc2, mmlu, winogrande, wikitext and nq_open (lm-eval's own task
YAMLs) and HaluEval QA/dialogue/summarisation, MemoTrap, PopQA and GSM8K perplexity (headgame's
``--export-lm-eval`` configs), headgame and lm-eval 0.4.13 (``simple_evaluate`` through
:mod:`headgame.evaluate.lm_eval_bridge`, offline on the local files) score the same sampled
items with the same model object; the script writes per-task scores of both, their difference
in points (100 × absolute difference), per-item agreement (and, for generation tasks, identical
outputs), the largest per-choice log-likelihood difference, and ``max_abs_diff_points``.
``--merge`` keeps the rows of tasks not run from the existing result file.

    python benchmarks/lm_eval_agreement.py --model smollm2-135m --limit 50 --wikitext-limit 5
    python benchmarks/lm_eval_agreement.py --tasks halueval_qa,memotrap,popqa --limit 50 --merge
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from headgame.evaluate.config import EvalConfig  # noqa: E402
from headgame.evaluate.lm_eval_bridge import BRIDGED, build_tasks, item_outcome, loglikelihoods, run_lm_eval  # noqa: E402
from headgame.evaluate.runner import build_scorer, load_for_eval, run_tasks  # noqa: E402
from headgame.io import write_json_atomic  # noqa: E402
from headgame.system import cpu_name, package_versions  # noqa: E402

EXPLAIN = {
    "truthfulqa_mc2": "headgame computes MC2 from the labels; lm-eval assumes the true answers come first "
                      "(two v0 questions list a true answer after a false one): only those items can differ",
    "wikitext": "both read the same locally rebuilt pages (blank lines dropped), so bytes and words differ "
                "slightly from the canonical document-level set; differences here are float rounding",
    "nq_open": "greedy generation: batched/padded forwards (both sides) can flip a near-tied argmax",
    "halueval_qa": "headgame's export (hg_halueval_qa.yaml + utils.py): same prompt, until, max_gen_toks and judge rule; "
                   "greedy generation, so batched/padded forwards can flip a near-tied argmax",
    "halueval_dialogue": "headgame's export (hg_halueval_dialogue.yaml + utils.py); greedy generation as for halueval_qa",
    "halueval_summarization": "headgame's export (hg_halueval_summarization.yaml + utils.py); greedy generation as for halueval_qa",
    "memotrap": "headgame's export, the config of lm-eval's inverse_scaling_memo_trap (prompt/classes/answer_index, "
                "empty target delimiter) on headgame's items",
    "popqa": "headgame's export (8 shots as lm-eval few-shot split, first_n sampler); greedy generation as for nq_open",
    "gsm8k_ppl": "headgame's export; lm-eval reports word/byte metrics, token perplexity uses the tokenizer's counts",
}
GENERATE = ("nq_open", "popqa", "halueval_qa", "halueval_dialogue", "halueval_summarization")
NO_LLS = ("nq_open", "wikitext", "gsm8k_ppl") + GENERATE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--tasks", default=",".join(BRIDGED))
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--wikitext-limit", type=int, default=5, help="documents (each is thousands of tokens)")
    ap.add_argument("--data-dir", default=os.environ.get("HEADGAME_DATA_DIR"))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/headgame-lm-eval-bridge")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "lm_eval_agreement.json"))
    ap.add_argument("--merge", action="store_true", help="keep the other tasks' rows of the existing --out file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [t for t in args.tasks.split(",") if t]
    cfg = EvalConfig(model=args.model, adapter=args.adapter, tasks=",".join(names), data_dir=args.data_dir, limit=args.limit)
    model, tok, info = load_for_eval(cfg)
    scorer = build_scorer(cfg, model, tok, info, [])
    rows = {}
    for name in names:
        limit = args.wikitext_limit if name == "wikitext" else args.limit
        tcfg = EvalConfig(model=args.model, tasks=name, data_dir=args.data_dir, limit=limit)
        t0 = time.perf_counter()
        hg = run_tasks(tcfg, scorer, say=lambda m: print(m, file=sys.stderr))["tasks"][name]
        t_hg = time.perf_counter() - t0
        bridge = build_tasks([name], data_dir=args.data_dir, work=Path(args.work), limit=limit)
        t0 = time.perf_counter()
        le = run_lm_eval(model, tok, bridge, batch_size=args.batch_size, max_length=scorer.cfg.max_length)[name]
        t_le = time.perf_counter() - t0
        same, ll_diff, n, same_text, differing = 0, 0.0, 0, 0, []
        for item in hg["items"]:
            sample = le["items"].get(item["id"])
            if sample is None:
                continue
            n += 1
            theirs_outcome = item_outcome(name, sample)
            agree = abs(item["num"] - theirs_outcome) <= 1e-4 * max(1.0, abs(theirs_outcome))
            same += agree
            if name in GENERATE:
                text = sample["filtered_resps"][0]
                same_text += item["pred"].strip() == text.strip()
                if not agree or item["pred"].strip() != text.strip():
                    differing.append({"id": item["id"], "headgame": item["pred"], "lm_eval": text,
                                      "headgame_num": item["num"], "lm_eval_num": theirs_outcome})
            elif not agree:
                differing.append({"id": item["id"], "headgame_num": item["num"], "lm_eval_num": theirs_outcome})
            if "lls" in item and name not in NO_LLS:
                theirs = loglikelihoods(sample)
                if theirs and len(theirs) == len(item["lls"]):
                    ll_diff = max(ll_diff, max(abs(a - b) for a, b in zip(item["lls"], theirs)))
        diff = abs(hg["score"] - le["score"]) * 100
        rows[name] = {
            "n_items": hg["n"], "metric": hg["metric"], "headgame": hg["score"], "lm_eval": le["score"],
            "abs_diff_points": diff, "items_agreeing": same, "items_compared": n,
            "max_abs_loglik_diff": ll_diff if name not in NO_LLS else None,
            **({"items_same_output": same_text} if name in GENERATE else {}), "items_differing": differing[:20],
            "seconds": {"headgame": round(t_hg, 2), "lm_eval": round(t_le, 2)},
            "note": EXPLAIN.get(name, ""), "command": " ".join(sys.argv),
        }
        print(f"{name:16s} headgame {hg['score']:.4f}  lm-eval {le['score']:.4f}  |Δ| {diff:.3f} pts  "
              f"items agree {same}/{n}", flush=True)
    if args.merge and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        kept = {k: {**v, "command": v.get("command", old.get("command"))} for k, v in old.get("tasks", {}).items() if k not in rows}
        rows = {**kept, **rows}
    result = {
        "model": args.model, "adapter": args.adapter, "lm_eval_version": _lm_eval_version(),
        "max_length": scorer.cfg.max_length, "batch_size_lm_eval": args.batch_size, "threads": args.threads,
        "command": " ".join(sys.argv), "machine": cpu_name(), "versions": package_versions(),
        "tasks": rows, "max_abs_diff_points": max(r["abs_diff_points"] for r in rows.values()),
    }
    write_json_atomic(args.out, result)
    print(f"max |Δ| = {result['max_abs_diff_points']:.3f} points; wrote {args.out}")
    return 0


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm-eval")


if __name__ == "__main__":
    sys.exit(main())
