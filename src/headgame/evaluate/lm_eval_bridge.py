"""Run a headgame model (with its adapter) through lm-evaluation-harness on the same items.

Optional extra ``lm-eval`` (``pip install 'headgame[lm-eval]'``, lm-eval 0.4.13), imported only
here. For truthfulqa_mc1, truthfulqa_mc2, mmlu, winogrande, wikitext and nq_open the bridge
writes the items headgame sampled (same seed, same ``--limit``) as local JSON-lines files in
the layout of the Hugging Face datasets lm-eval reads, loads lm-eval's own task YAML (its
prompts, functions and metrics), points it at the files (``dataset_path: json``,
``dataset_kwargs.data_files``) and runs ``simple_evaluate`` offline with the model object
itself (``HFLM(pretrained=model)``), so both sides score one model on one set of items.

HaluEval (QA, dialogue, summarisation), MemoTrap, PopQA and GSM8K perplexity have no lm-eval
built-in over the same items and prompt: for them the bridge writes headgame's own lm-eval export
(:mod:`headgame.evaluate.lm_eval_export`: task YAMLs, a self-contained ``utils.py``, the items)
and loads those configs, so lm-eval runs headgame's prompts and scoring rules through its own
request and generation machinery. GSM8K's token perplexity is computed from lm-eval's rolling
log-likelihoods and the tokenizer's token counts (lm-eval reports word and byte metrics only).

Per-task differences that remain by construction (documented in the agreement JSON):
MMLU runs as one lm-eval task per subject present in the sample, pooled item-weighted as
lm-eval's ``mmlu`` group does; NQ-open's eight shots are headgame's (held out of the dev file)
given to lm-eval as its few-shot split with the ``first_n`` sampler.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headgame.errors import HeadgameError
from headgame.evaluate.lm_eval_export import EXPORTED, export_tasks
from headgame.evaluate.tasks import TASKS, TaskOptions, sample_indices
from headgame.evaluate.tasks.gsm8k_ppl import FORMATS

BUILTIN = ("truthfulqa_mc1", "truthfulqa_mc2", "mmlu", "winogrande", "wikitext", "nq_open")
"""Tasks run through lm-eval's own task YAMLs."""
BRIDGED = BUILTIN + EXPORTED
"""Every task the bridge runs: the built-ins, then headgame's exported ones."""
LM_EVAL_PIN = "lm-eval==0.4.13"


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise HeadgameError(f"the lm-eval cross-check needs lm-evaluation-harness; install it with pip install '{LM_EVAL_PIN}' (the 'lm-eval' extra)") from None
    import lm_eval

    return lm_eval


def _builtin_yaml(*parts: str) -> dict:
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(lm_eval.__file__).parent / "tasks" / Path(*parts)
    return load_yaml(path, resolve_func=True, recursive=True)


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def _local(cfg: dict, name: str, files: dict[str, str], **extra: Any) -> dict:
    cfg = {k: v for k, v in cfg.items() if k not in ("tag", "group", "task_alias", "dataset_name")}
    cfg.update({"task": name, "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files},
                "training_split": None, "validation_split": None, "test_split": None, "fewshot_split": None})
    cfg.update(extra)
    return cfg


@dataclass
class BridgeTask:
    """One headgame task as lm-eval task configs, with the headgame item id of every doc."""

    name: str
    configs: list[dict]
    ids: dict[str, list[int]] = field(default_factory=dict)  # lm-eval task name -> our ids in doc order


def build_tasks(names: list[str], *, data_dir: str | None, work: Path, limit: int | None = None, n_items: int = 1024,
                seed: int = 42, mmlu_shots: int = 5, max_new_tokens: int | None = None,
                ids: dict[str, list[int]] | None = None) -> list[BridgeTask]:
    """lm-eval configs for ``names`` over headgame's seeded draw (or the given item ``ids``);
    ``max_new_tokens`` overrides every generation task's budget (None: each task's own)."""
    options = TaskOptions(data_dir=data_dir, seed=seed, mmlu_shots=mmlu_shots, max_new_tokens=max_new_tokens)
    out = []
    for name in names:
        if name not in BRIDGED:
            raise HeadgameError(f"task {name} has no lm-eval counterpart here; bridged tasks: {', '.join(BRIDGED)}")
        if name in EXPORTED:
            out.append(_exported(name, data_dir, work / name, limit, n_items, seed, max_new_tokens, (ids or {}).get(name)))
            continue
        task = TASKS.get(name)(options)
        docs = task.docs()
        chosen = (ids or {}).get(name) or sample_indices(len(docs), n_items, seed, limit)
        out.append(_bridge(name, task, [docs[i] for i in chosen], list(chosen), work / name, mmlu_shots, max_new_tokens or 32))
    return out


def _exported(name: str, data_dir: str | None, work: Path, limit: int | None, n_items: int, seed: int,
              max_new: int | None, ids: list[int] | None) -> BridgeTask:
    from lm_eval.tasks._yaml_loader import load_yaml

    (done,) = export_tasks([name], work, data_dir=data_dir, seed=seed, n_items=n_items, limit=limit, max_new_tokens=max_new,
                           ids={name: ids} if ids else None)
    cfg = load_yaml(done.yaml, resolve_func=True, recursive=True)
    cfg = {k: v for k, v in cfg.items() if k != "tag"}
    return BridgeTask(name, [cfg], {done.task: done.ids})




def _bridge(name: str, task, docs: list[dict], ids: list[int], work: Path, mmlu_shots: int, max_new: int) -> BridgeTask:
    if name.startswith("truthfulqa"):
        rows = [{"question": d["question"],
                 "mc1_targets": {"choices": list(d["mc1_targets"]), "labels": list(d["mc1_targets"].values())},
                 "mc2_targets": {"choices": list(d["mc2_targets"]), "labels": list(d["mc2_targets"].values())}} for d in docs]
        f = _write_jsonl(work / "validation.jsonl", rows)
        cfg = _local(_builtin_yaml("truthfulqa", f"{name}.yaml"), f"hg_{name}", {"validation": f}, validation_split="validation")
        return BridgeTask(name, [cfg], {f"hg_{name}": ids})
    if name == "winogrande":
        f = _write_jsonl(work / "validation.jsonl", [{k: d[k] for k in ("sentence", "option1", "option2", "answer")} for d in docs])
        cfg = _local(_builtin_yaml("winogrande", "default.yaml"), "hg_winogrande", {"validation": f}, validation_split="validation")
        return BridgeTask(name, [cfg], {"hg_winogrande": ids})
    if name == "wikitext":
        f = _write_jsonl(work / "test.jsonl", [{"page": d["page"]} for d in docs])
        cfg = _local(_builtin_yaml("wikitext", "wikitext.yaml"), "hg_wikitext", {"test": f}, test_split="test")
        return BridgeTask(name, [cfg], {"hg_wikitext": ids})
    if name == "nq_open":
        f = _write_jsonl(work / "validation.jsonl", [{"question": d["question"], "answer": d["answers"]} for d in docs])
        shots = _write_jsonl(work / "train.jsonl", [{"question": s["question"], "answer": s["answers"]} for s in task.shots])
        base = _builtin_yaml("nq_open", "nq_open.yaml")
        gen = dict(base.get("generation_kwargs", {}), max_gen_toks=max_new)
        cfg = _local(base, "hg_nq_open", {"validation": f, "train": shots}, validation_split="validation",
                     training_split="train", fewshot_split="train", fewshot_config={"sampler": "first_n"},
                     num_fewshot=len(task.shots), generation_kwargs=gen)
        return BridgeTask(name, [cfg], {"hg_nq_open": ids})
    if name == "mmlu":
        by_subject: dict[str, list[tuple[int, dict]]] = {}
        for i, d in zip(ids, docs):
            by_subject.setdefault(d["subject"], []).append((i, d))
        configs, id_map = [], {}
        for subject, items in sorted(by_subject.items()):
            f = _write_jsonl(work / subject / "test.jsonl", [{k: d[k] for k in ("question", "subject", "choices", "answer")} for _, d in items])
            shots = getattr(task, "shots", {}).get(subject, [])
            dev = _write_jsonl(work / subject / "dev.jsonl", [{k: s[k] for k in ("question", "subject", "choices", "answer")} for s in shots])
            base = _builtin_yaml("mmlu", "default", f"mmlu_{subject}.yaml")
            lname = f"hg_mmlu_{subject}"
            configs.append(_local(base, lname, {"test": f, "dev": dev}, test_split="test", fewshot_split="dev",
                                  fewshot_config={"sampler": "first_n"}, num_fewshot=min(mmlu_shots, len(shots))))
            id_map[lname] = [i for i, _ in items]
        return BridgeTask(name, configs, id_map)
    raise AssertionError(name)


def run_lm_eval(model, tokenizer, bridge: list[BridgeTask], *, batch_size: int = 8, max_length: int = 2048,
                device: str = "cpu") -> dict[str, dict]:
    """Per headgame task: lm-eval's score over the same items and its per-item outcomes."""
    require_lm_eval()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=device)
    configs = [c for b in bridge for c in b.configs]
    res = simple_evaluate(model=lm, tasks=configs, log_samples=True, bootstrap_iters=0, confirm_run_unsafe_code=True)
    samples = res["samples"]
    out: dict[str, dict] = {}
    for b in bridge:
        items: dict[int, dict] = {}
        for lname, ids in b.ids.items():
            for s in samples.get(lname, []):
                items[ids[s["doc_id"]]] = s
                if b.name == "gsm8k_ppl":  # token perplexity: the tokens lm-eval's rolling windows scored
                    s["n_tokens"] = len(tokenizer.encode(FORMATS["qa"](s["doc"]), add_special_tokens=False))
        out[b.name] = {"score": _score(b.name, items), "items": items}
    return out


def _score(name: str, items: dict[int, dict]) -> float:
    if not items:
        return math.nan
    if name == "gsm8k_ppl":
        return math.exp(sum(-s["word_perplexity"][0] for s in items.values()) / sum(s["n_tokens"] for s in items.values()))
    if name == "wikitext":
        ll = sum(s["bits_per_byte"][0] for s in items.values())
        n_bytes = sum(s["bits_per_byte"][1] for s in items.values())
        return -ll / n_bytes / math.log(2)
    key = "exact_match" if name in ("nq_open", "popqa") else "acc"
    return sum(float(s[key]) for s in items.values()) / len(items)


def item_outcome(name: str, sample: dict) -> float:
    """lm-eval's per-item outcome in headgame's ``num`` terms (for binary tasks and MC2)."""
    if name == "wikitext":
        return -sample["bits_per_byte"][0] / math.log(2)
    if name == "gsm8k_ppl":
        return -sample["word_perplexity"][0]
    return float(sample["exact_match" if name in ("nq_open", "popqa") else "acc"])


def loglikelihoods(sample: dict) -> list[float] | None:
    """The per-choice log-likelihoods lm-eval computed (multiple-choice tasks)."""
    resps = sample.get("filtered_resps") or sample.get("resps")
    try:
        return [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in resps]
    except (TypeError, ValueError, IndexError):
        return None
