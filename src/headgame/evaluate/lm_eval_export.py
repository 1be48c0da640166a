"""``headgame eval --export-lm-eval DIR``: headgame's own tasks as lm-evaluation-harness tasks.

For the tasks lm-eval has no built-in counterpart of the same items and prompt (HaluEval QA,
dialogue and summarisation, MemoTrap, PopQA and GSM8K perplexity), the export writes into DIR

* ``hg_<task>.yaml``: one lm-eval task config per headgame task, reading the items from local
  JSON-lines files (``dataset_path: json``), with headgame's generation settings (``until``,
  ``max_gen_toks``, greedy) and metrics;
* ``utils.py``: the ``!function`` hooks (prompts, the HaluEval judge rule, PopQA's exact match,
  GSM8K's rolling metrics), self-contained so lm-eval users need no headgame install;
* ``data/<task>/test.jsonl`` (and PopQA's ``train.jsonl`` with its eight shots): the items of
  headgame's seeded draw (same ``--seed``, ``--n-items`` and ``--limit`` as ``headgame eval``),
  each with its headgame item ``id``;
* ``headgame.yaml``: the group ``headgame`` of every exported task; ``export.json``: the item
  ids per task; ``README.md``: the command to run.

Nothing here imports lm-eval. MemoTrap's config is lm-eval's ``inverse_scaling_memo_trap`` one
(``prompt`` / ``classes`` / ``answer_index``, empty target delimiter) on headgame's items.
The other six tasks are lm-eval built-ins (:mod:`headgame.evaluate.lm_eval_bridge`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headgame.errors import HeadgameError
from headgame.evaluate.lm_eval_utils_src import utils_source
from headgame.evaluate.tasks import TASKS, TaskOptions, sample_indices
from headgame.evaluate.tasks.halueval import UNTIL as HALUEVAL_UNTIL
from headgame.evaluate.tasks.openqa import INSTRUCTION as OPENQA_INSTRUCTION
from headgame.evaluate.tasks.openqa import UNTIL as OPENQA_UNTIL

EXPORTED = ("halueval_qa", "halueval_dialogue", "halueval_summarization", "memotrap", "popqa", "gsm8k_ppl")
GROUP = "headgame"
_GEN_BUDGET = {"halueval_qa": 16, "halueval_dialogue": 16, "halueval_summarization": 16, "popqa": 32}


def lm_eval_name(task: str) -> str:
    return f"hg_{task}"


class Func(str):
    """A ``!function utils.<name>`` hook in a written YAML."""


@dataclass
class Exported:
    """One exported task: the headgame name, its lm-eval task name and config file, the item ids."""

    name: str
    task: str
    yaml: Path
    ids: list[int]


def to_yaml(obj: Any, indent: int = 0) -> str:
    """Block YAML of plain data; strings are JSON-quoted (valid YAML), :class:`Func` a ``!function`` tag."""
    pad = " " * indent
    lines = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for key, value in items:
        head = f"{pad}{key}:" if isinstance(obj, dict) else f"{pad}-"
        if isinstance(value, (dict, list)) and value:
            if isinstance(obj, list) and isinstance(value, dict):
                inner = to_yaml(value, indent + 2).splitlines()
                lines.append(f"{head} {inner[0].lstrip()}")
                lines.extend(inner[1:])
            else:
                lines.append(head)
                lines.append(to_yaml(value, indent + 2).rstrip("\n"))
        else:
            lines.append(f"{head} {_scalar(value)}")
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    if isinstance(value, Func):
        return f"!function utils.{value}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(str(value), ensure_ascii=False)


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path.resolve())


def _common(name: str, files: dict[str, str], output_type: str) -> dict:
    return {"task": lm_eval_name(name), "tag": [f"{GROUP}_tasks"], "dataset_path": "json",
            "dataset_kwargs": {"data_files": files}, "test_split": "test", "output_type": output_type}


def _greedy(until: tuple[str, ...], budget: int) -> dict:
    return {"until": list(until), "max_gen_toks": budget, "do_sample": False, "temperature": 0.0}


def _acc(metric: str = "acc") -> list[dict]:
    return [{"metric": metric, "aggregation": "mean", "higher_is_better": True}]


def task_config(name: str, task, docs: list[dict], ids: list[int], data: Path, max_new_tokens: int | None) -> dict:
    """The lm-eval config of one exported task; writes its items under ``data``."""
    rows = [{**d, "source_id": d.get("id"), "id": i} for i, d in zip(ids, docs)]  # "id": headgame's item id
    if name.startswith("halueval_"):
        keep = ("id", *task.fields, "hallucinated")
        files = {"test": _write_jsonl(data / name / "test.jsonl", [{k: r[k] for k in keep} for r in rows])}
        cfg = _common(name, files, "generate_until")
        cfg.update({"doc_to_text": Func(f"{name}_doc_to_text"), "doc_to_target": Func("halueval_doc_to_target"),
                    "process_results": Func("halueval_process_results"),
                    "generation_kwargs": _greedy(HALUEVAL_UNTIL, max_new_tokens or _GEN_BUDGET[name]), "metric_list": _acc()})
        return cfg
    if name == "memotrap":
        keep = ("id", "prompt", "classes", "answer_index", "subtask")
        files = {"test": _write_jsonl(data / name / "test.jsonl", [{k: r[k] for k in keep} for r in rows])}
        cfg = _common(name, files, "multiple_choice")
        cfg.update({"doc_to_text": "prompt", "doc_to_choice": "classes", "doc_to_target": "answer_index",
                    "target_delimiter": "", "metric_list": _acc() + [{"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]})
        return cfg
    if name == "popqa":
        files = {"test": _write_jsonl(data / name / "test.jsonl", [{"id": r["id"], "popqa_id": r["source_id"], "question": r["question"], "answers": r["answers"]} for r in rows]),
                 "train": _write_jsonl(data / name / "train.jsonl", [{"question": s["question"], "answers": s["answers"]} for s in task.shots])}
        cfg = _common(name, files, "generate_until")
        cfg.update({"training_split": "train", "fewshot_split": "train", "num_fewshot": len(task.shots),
                    "fewshot_config": {"sampler": "first_n"}, "description": OPENQA_INSTRUCTION,
                    "target_delimiter": " ", "fewshot_delimiter": "\n",
                    "doc_to_text": Func("popqa_doc_to_text"), "doc_to_target": Func("popqa_doc_to_target"),
                    "process_results": Func("popqa_process_results"),
                    "generation_kwargs": _greedy(OPENQA_UNTIL, max_new_tokens or _GEN_BUDGET[name]), "metric_list": _acc("exact_match")})
        return cfg
    if name == "gsm8k_ppl":
        files = {"test": _write_jsonl(data / name / "test.jsonl", [{"id": r["id"], "question": r["question"], "answer": r["answer"]} for r in rows])}
        cfg = _common(name, files, "loglikelihood_rolling")
        lower = {"higher_is_better": False}
        cfg.update({"doc_to_text": "", "doc_to_target": Func("gsm8k_ppl_doc_to_target"), "process_results": Func("gsm8k_ppl_process_results"),
                    "metric_list": [{"metric": "word_perplexity", "aggregation": "weighted_perplexity", **lower},
                                    {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", **lower},
                                    {"metric": "bits_per_byte", "aggregation": "bits_per_byte", **lower}]})
        return cfg
    raise HeadgameError(f"task {name} has no lm-eval export; exportable tasks: {', '.join(EXPORTED)}")


def export_tasks(names: list[str], out: str | Path, *, data_dir: str | None = None, seed: int = 42, n_items: int = 1024,
                 limit: int | None = None, max_new_tokens: int | None = None, ids: dict[str, list[int]] | None = None,
                 model: str | None = None) -> list[Exported]:
    """Write the lm-eval configs, hooks and items of ``names`` (all in :data:`EXPORTED`) into ``out``."""
    bad = [n for n in names if n not in EXPORTED]
    if bad:
        raise HeadgameError(f"task {bad[0]} has no lm-eval export (it is an lm-eval built-in or unknown); exportable tasks: {', '.join(EXPORTED)}")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HeadgameError(f"cannot create the export folder {out} ({exc.strerror}); pass a writable --export-lm-eval DIR") from None
    options = TaskOptions(data_dir=data_dir, seed=seed, max_new_tokens=max_new_tokens)
    (out / "utils.py").write_text(utils_source(), encoding="utf-8")
    done = []
    for name in names:
        task = TASKS.get(name)(options)
        docs = task.docs()
        if not docs:
            raise HeadgameError(f"task {name} found no items in {task.found.source if task.found else 'its data'}; check the data files")
        chosen = list((ids or {}).get(name) or sample_indices(len(docs), n_items, seed, limit))
        cfg = task_config(name, task, [docs[i] for i in chosen], chosen, out / "data", max_new_tokens)
        cfg["metadata"] = {"version": 1.0, "headgame_task": name, "seed": seed, "n_items": n_items, "limit": limit}
        path = out / f"{lm_eval_name(name)}.yaml"
        path.write_text(to_yaml(cfg), encoding="utf-8")
        done.append(Exported(name, lm_eval_name(name), path, chosen))
    group = {"group": GROUP, "task": [e.task for e in done], "metadata": {"version": 1.0}}
    (out / f"{GROUP}.yaml").write_text(to_yaml(group), encoding="utf-8")
    manifest = {"format": "headgame-lm-eval-export/1", "seed": seed, "n_items": n_items, "limit": limit,
                "max_new_tokens": max_new_tokens, "group": GROUP,
                "tasks": {e.name: {"lm_eval_task": e.task, "config": e.yaml.name, "ids": e.ids} for e in done}}
    (out / "export.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_readme(out, done, model, seed, limit), encoding="utf-8")
    return done


def export_from_config(cfg, say: Callable[[str], None] = print) -> list[Exported]:
    """``headgame eval --export-lm-eval DIR``: export the exportable tasks of ``--tasks``."""
    names = cfg.task_names()
    chosen = [n for n in names if n in EXPORTED]
    skipped = [n for n in names if n not in EXPORTED]
    if not chosen:
        raise HeadgameError(f"none of --tasks {cfg.tasks} needs an export (lm-eval has them built in); pass some of: {', '.join(EXPORTED)}")
    if skipped:
        say(f"note: not exported (lm-eval built-ins, run them through headgame.evaluate.lm_eval_bridge): {', '.join(skipped)}")
    return export_tasks(chosen, cfg.export_lm_eval, data_dir=cfg.data_dir, seed=cfg.seed, n_items=cfg.n_items, limit=cfg.limit,
                        max_new_tokens=cfg.max_new_tokens, model=cfg.model)


def _readme(out: Path, done: list[Exported], model: str | None, seed: int, limit: int | None) -> str:
    where = out.resolve()
    rows = "\n".join(f"| `{e.task}` | `{e.name}` | {len(e.ids)} |" for e in done)
    first = done[0].task
    return f"""# headgame tasks for lm-evaluation-harness

Written by `headgame eval --export-lm-eval` (seed {seed}, limit {limit}): headgame's own tasks
as lm-eval 0.4.13 task configs over exactly the items `headgame eval` scores with the same
`--seed`, `--n-items` and `--limit`. `utils.py` holds the prompts and scoring rules (no
headgame install needed); `data/` the items as JSON lines (their `id` is headgame's item id);
`export.json` the ids per task. The configs name the data files by absolute path
(`{where}/data`): export again after moving this folder.

| lm-eval task | headgame task | items |
|---|---|---|
{rows}

Run all of them (group `{GROUP}`) offline on the CPU:

    HF_DATASETS_OFFLINE=1 lm_eval --model hf \\
        --model_args pretrained=HUB_ID_OR_FOLDER,dtype=float32 \\
        --include_path {where} --tasks {GROUP} --batch_size 8 --device cpu

or one task with `--tasks {first}`. `HUB_ID_OR_FOLDER` is the Hugging Face model
(headgame's `--model {model}`; e.g. `HuggingFaceTB/SmolLM2-135M` for `smollm2-135m`).
Scores: `acc` (HaluEval: right only when the output holds exactly one of "Yes"/"No" and it is
the gold one; MemoTrap: highest log-likelihood class), `exact_match` (PopQA, 8 shots),
`word_perplexity`/`bits_per_byte` (GSM8K; headgame's token perplexity needs the tokenizer's
token counts, which lm-eval's rolling metrics do not report).
"""
