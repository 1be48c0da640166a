"""``headgame eval``: load the model (and adapter), run the tasks, write ``eval.json``.

Plain functions (DESIGN.md): :func:`load_for_eval` → :func:`build_scorer` → :func:`run_tasks`
(tasks → requests → one model call per request kind, identical requests of different tasks
scored once → per-item records → scores) → :func:`write_results`.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headgame.dist import all_gather, finish, world
from headgame.system import package_versions
from headgame.errors import HeadgameError
from headgame.evaluate.config import EvalConfig
from headgame.evaluate.live import LiveScores
from headgame.evaluate.requests import GenerateRequest, LanguageModel, LoglikelihoodRequest, RollingRequest
from headgame.evaluate.stats import stderr
from headgame.evaluate.tasks import TASKS, Task, TaskOptions, sample_indices
from headgame.io import write_json_atomic, write_text_atomic
from headgame.outdir import claims_out

FORMAT = "headgame-eval/1"
ARTEFACTS = ("eval.json", "config.yaml")
"""What ``headgame eval`` writes into --out (the main result first); a fresh run clears them."""
Say = Callable[[str], None]


def load_for_eval(cfg: EvalConfig, say: Say = print) -> tuple[Any, Any, dict]:
    """The model (adapter applied, merged if asked), its tokenizer and a description."""
    from headgame.config import resolve_device
    from headgame.models.load import load_model as load  # pruned-model folders too

    device = resolve_device(cfg.device)  # a GPU asked for and absent fails before the model loads
    loaded = load(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    model, tokenizer = loaded.model, loaded.tokenizer
    if not loaded.layout.causal:
        raise HeadgameError(f"--model {cfg.model} is not a causal language model ({loaded.layout.architecture}); headgame eval needs a decoder-only model such as smollm2-135m")
    info = {k: v for k, v in loaded.info.items() if k in ("spec", "source", "kind", "hash", "package", "layout")}
    info["max_positions"] = loaded.layout.max_positions
    from headgame.models.identity import base_of

    if (base := base_of(loaded.info)) is not None:
        info["base"] = base  # a merged model: the base it was trained from
    if cfg.adapter:
        from headgame.models.adapters import apply_adapter

        model, info["adapter"] = apply_adapter(model, cfg.adapter, merge=cfg.merge_adapter, model_name=cfg.model,
                                               model_hash=loaded.info.get("hash"))
    model.to(device)
    info["device"] = str(device)
    return model, tokenizer, info


def build_scorer(cfg: EvalConfig, model, tokenizer, info: dict, notes: list[str], say: Say = print):
    from headgame.evaluate.decoding import make_method
    from headgame.models.layout import unwrap_peft
    from headgame.evaluate.scorer import HFScorer, ScorerConfig

    chat = cfg.chat_template
    if chat and not getattr(tokenizer, "chat_template", None):
        note = f"{cfg.model} has no chat template: plain prompts are used"
        say(f"note: {note}")
        notes.append(note)
        chat = False
    max_pos = info.get("max_positions") or 2048
    max_length = min(cfg.max_length or 2048, max_pos)
    tied = bool(getattr(unwrap_peft(model).config, "tie_word_embeddings", False))
    method = make_method(
        cfg.decoding, alpha=cfg.cad_alpha if cfg.decoding == "cad" else cfg.actdec_alpha, layers=cfg.dola_layers,
        relative_top=cfg.relative_top, tied_embeddings=tied, layer=cfg.actdec_layer,
    )
    scfg = ScorerConfig(max_length=max_length, batch_tokens=cfg.batch_tokens, gen_batch=cfg.gen_batch)
    scorer = HFScorer(model, tokenizer, method, scfg, chat_template=chat)
    if cfg.compile:  # the decoder in place (inductor); the LM head and the decoding maths stay eager
        from headgame.models.device import compile_in_place

        compile_in_place(scorer.parts.decoder, dynamic=True)  # batch, length and cache size change at every call
    return scorer


_KINDS: tuple[tuple[str, type, str], ...] = (
    ("loglikelihood", LoglikelihoodRequest, "loglikelihood"),
    ("rolling", RollingRequest, "loglikelihood_rolling"),
    ("generate", GenerateRequest, "generate_until"),
)


def run_tasks(cfg: EvalConfig, lm: LanguageModel, *, say: Say = print, progress: Callable[[str, int], Callable[[int, str], None]] | None = None,
              ids: dict[str, list[int]] | None = None) -> dict:
    """Score every task of ``cfg`` with ``lm``; returns the ``tasks`` part of eval.json.

    ``ids`` gives the item ids of some tasks (benchmarks score chosen items; default: the seeded draw).

    ``progress(kind, n_requests)`` returns ``update(done, live_text)`` for one request kind; the
    text is items/s and the running score of the task being finished (:mod:`headgame.evaluate.live`)."""
    options = TaskOptions(data_dir=cfg.data_dir, seed=cfg.seed, mmlu_shots=cfg.mmlu_shots,
                          truthfulqa_version=cfg.truthfulqa_version, max_new_tokens=cfg.max_new_tokens,
                          truthfulqa_mc2_rule=cfg.truthfulqa_mc2_rule)
    tasks: dict[str, Task] = {}
    chosen: dict[str, tuple[list[int], list[dict], list[list[Any]]]] = {}
    for name in cfg.task_names():
        task = TASKS.get(name)(options)
        docs = task.docs()
        if not docs:
            raise HeadgameError(f"task {name} found no items in {task.found.source if task.found else 'its data'}; check the data files")
        chosen_ids = list((ids or {}).get(name) or sample_indices(len(docs), cfg.n_items, cfg.seed, cfg.limit))
        picked = [docs[i] for i in chosen_ids]
        tasks[name] = task
        chosen[name] = (chosen_ids, picked, [task.requests(d) for d in picked])
    answers: dict[Any, Any] = {}
    timing: dict[str, dict] = {}
    live = LiveScores(tasks, chosen) if progress else None  # the bar's running score; never feeds results
    for kind, cls, method in _KINDS:
        unique = list(dict.fromkeys(r for _, _, reqs in chosen.values() for rs in reqs for r in rs if isinstance(r, cls)))
        if not unique:
            continue
        t0 = time.perf_counter()
        bar = tick = None
        if progress and live is not None:
            bar = progress(kind, len(unique))
            live.start()

            def tick(done: int, finished: dict[int, Any] | None = None, bar=bar, unique=unique) -> None:
                live.add({unique[i]: r for i, r in (finished or {}).items()})
                bar(done, live.text())
        results = getattr(lm, method)(unique, tick) if tick is not None and _accepts_progress(lm, method) else getattr(lm, method)(unique)
        timing[kind] = {"requests": len(unique), "seconds": round(time.perf_counter() - t0, 3)}
        answers.update(zip(unique, results))
        if bar is not None and live is not None:
            live.add(dict(zip(unique, results)))
            bar(len(unique), live.text())
    out: dict[str, dict] = {}
    for name, task in tasks.items():
        ids, picked, reqs = chosen[name]
        records = []
        for i, doc, rs in zip(ids, picked, reqs):
            rec = task.process(doc, [answers[r] for r in rs])
            records.append({"id": i, **rec})
        entry = task.info()
        num, den = [r["num"] for r in records], [r["den"] for r in records]
        entry.update({
            "score": task.score(records), "stderr": stderr(num, den, task.transform, seed=cfg.seed),
            "n": len(records), "secondary": task.secondary(records), "items": records,
        })
        if task.kind == "generate":
            empty = sum(1 for r in records if r.get("empty"))
            entry["n_empty"] = empty
            if empty:
                say(f"warning: {name}: {empty} of {len(records)} generations were empty (the model stopped at once); they count as wrong")
        out[name] = entry
    return {"tasks": out, "timing": timing}


def _accepts_progress(lm: Any, method: str) -> bool:
    import inspect

    try:
        return len(inspect.signature(getattr(lm, method)).parameters) >= 2
    except (TypeError, ValueError):
        return False


def run_eval(cfg: EvalConfig, *, say: Say = print, progress: Callable[[str, int], Callable[[int, str], None]] | None = None,
             lm: LanguageModel | None = None, write: bool = True) -> dict:
    """The whole command: returns the eval.json dict (also written to ``cfg.out``).

    The inputs are checked first (EvalConfig, then --out, the model, the adapter and the decoding
    method against it, nothing written); only then is --out claimed (``claims_out`` decorates
    :func:`_eval`), so a bad input leaves no trace."""
    from headgame.config import check_out_path

    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    world()  # several processes (headgame.dist): each scores its share of every request kind
    notes: list[str] = []
    model_info: dict = {"spec": cfg.model}
    scorer = None
    if write:
        check_out_path(cfg.out)
    if lm is None:
        model, tokenizer, model_info = load_for_eval(cfg, say)
        scorer = lm = build_scorer(cfg, model, tokenizer, model_info, notes, say)
        model_info["max_length"] = scorer.cfg.max_length
        model_info["chat_template"] = scorer.tokens.chat
    result = _eval(cfg, lm, scorer, model_info, notes, started, t0, say=say, progress=progress, write=write)
    finish()  # several processes: all of them are done before any exits
    return result


run_eval.artefacts = ARTEFACTS  # type: ignore[attr-defined]


@claims_out("eval", ARTEFACTS)
def _eval(cfg: EvalConfig, lm: LanguageModel, scorer: Any, model_info: dict, notes: list[str], started: str, t0: float, *,
          say: Say, progress: Any, write: bool) -> dict:
    decoding = scorer.method.describe() if scorer is not None else {"name": cfg.decoding}
    body = run_tasks(cfg, lm, say=say, progress=progress)
    result = {
        "format": FORMAT, "model": model_info, "decoding": decoding, "config": cfg.to_dict(),
        "versions": package_versions(), "started": started, "seconds": round(time.perf_counter() - t0, 3),
        "notes": notes, "timing": body["timing"], "tasks": body["tasks"],
    }
    if scorer is not None:
        parts = all_gather(dict(scorer.stats))  # every process's share of the work
        result["engine"] = {k: sum(p[k] for p in parts) for k in scorer.stats}
    if write and world()[0] == 0:  # only rank 0 writes
        write_results(result, cfg)
    return result


def write_results(result: dict, cfg: EvalConfig) -> Path:
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HeadgameError(f"cannot create the output folder {out} ({exc.strerror}); pass a writable --out") from None
    write_text_atomic(out / "config.yaml", cfg.to_yaml())
    return write_json_atomic(out / "eval.json", result)
