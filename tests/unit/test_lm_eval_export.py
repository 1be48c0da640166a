"""``headgame eval --export-lm-eval``: lm-eval task configs of headgame's own tasks (fixture slices).

The generated ``utils.py`` is imported on its own (no headgame in it) and checked against
headgame's tasks: the same prompts, the same judge / exact-match outcomes on hand-made and
many generated cases. With lm-eval installed, lm-eval runs the exported folder (``include_path``,
the ``headgame`` group) on tiny-llama and its per-item outcomes equal headgame's."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import yaml

from headgame.cli import main
from headgame.errors import HeadgameError
from headgame.evaluate.lm_eval_export import EXPORTED, export_tasks
from headgame.evaluate.tasks import TASKS, TaskOptions
from headgame.evaluate.tasks.base import exact_match
from headgame.evaluate.tasks.halueval import judged
from tests.conftest import run_cli

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
HAS_LM_EVAL = importlib.util.find_spec("lm_eval") is not None


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_Loader)


def import_utils(folder: Path):
    spec = importlib.util.spec_from_file_location(f"hg_utils_{abs(hash(str(folder)))}", folder / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "X"
    assert main(["eval", "--data-dir", str(FIX), "--limit", "2", "--seed", "7", "--export-lm-eval", str(out)]) == 0
    return out


def test_export_writes_every_file_and_scores_nothing(exported):
    names = {p.name for p in exported.iterdir()}
    assert {"utils.py", "headgame.yaml", "README.md", "export.json", "data"} <= names
    assert {f"hg_{t}.yaml" for t in EXPORTED} <= names
    assert not (exported / "eval.json").exists()
    readme = (exported / "README.md").read_text()
    assert f"--include_path {exported.resolve()}" in readme and "--tasks headgame" in readme
    assert "import headgame" not in (exported / "utils.py").read_text() and "from headgame" not in (exported / "utils.py").read_text()


def test_yamls_parse_and_point_at_the_items(exported):
    utils = import_utils(exported)
    group = load(exported / "headgame.yaml")
    assert group["group"] == "headgame" and sorted(group["task"]) == sorted(f"hg_{t}" for t in EXPORTED)
    manifest = json.loads((exported / "export.json").read_text())
    for name in EXPORTED:
        cfg = load(exported / f"hg_{name}.yaml")
        assert cfg["task"] == f"hg_{name}" and cfg["test_split"] == "test"
        for key, value in cfg.items():
            if isinstance(value, tuple):  # a !function hook must exist in utils.py
                assert value[1].startswith("utils.") and callable(getattr(utils, value[1][len("utils."):])), (name, key)
        rows = [json.loads(line) for line in Path(cfg["dataset_kwargs"]["data_files"]["test"]).read_text().splitlines()]
        assert [r["id"] for r in rows] == manifest["tasks"][name]["ids"]
        assert 0 < len(rows) <= 2
    halu = load(exported / "hg_halueval_qa.yaml")
    assert halu["output_type"] == "generate_until"
    assert halu["generation_kwargs"] == {"until": ["\n", "."], "max_gen_toks": 16, "do_sample": False, "temperature": 0.0}
    pop = load(exported / "hg_popqa.yaml")
    assert pop["generation_kwargs"]["until"] == ["\n", ".", ","] and pop["generation_kwargs"]["max_gen_toks"] == 32
    assert pop["num_fewshot"] == 8 and pop["description"] == "Answer these questions:\n\n"
    memo = load(exported / "hg_memotrap.yaml")
    assert (memo["output_type"], memo["doc_to_text"], memo["doc_to_choice"], memo["doc_to_target"], memo["target_delimiter"]) == \
        ("multiple_choice", "prompt", "classes", "answer_index", "")


def test_same_items_as_headgame_eval(exported, tmp_path, capsys):
    out = tmp_path / "E"
    code, _, _ = run_cli(["eval", "--model", "tiny-llama", "--data-dir", str(FIX), "--limit", "2", "--seed", "7",
                          "--tasks", ",".join(EXPORTED), "--out", str(out), "--no-progress"], capsys)
    assert code == 0
    ran = json.loads((out / "eval.json").read_text())["tasks"]
    manifest = json.loads((exported / "export.json").read_text())["tasks"]
    for name in EXPORTED:
        assert manifest[name]["ids"] == [it["id"] for it in ran[name]["items"]], name


def _task(name: str, seed: int = 7):
    task = TASKS.get(name)(TaskOptions(data_dir=str(FIX), seed=seed))
    return task, task.docs()


def _rows(folder: Path, name: str, split: str = "test") -> list[dict]:
    return [json.loads(l) for l in (folder / "data" / name / f"{split}.jsonl").read_text().splitlines()]


def test_utils_prompts_are_headgames(tmp_path):
    out = tmp_path / "all"
    export_tasks(list(EXPORTED), out, data_dir=str(FIX), seed=7)  # every fixture item
    utils = import_utils(out)
    for name in ("halueval_qa", "halueval_dialogue", "halueval_summarization"):
        task, docs = _task(name)
        rows = _rows(out, name)
        assert len(rows) == len(docs)
        for row in rows:
            (req,) = task.requests(docs[row["id"]])
            assert getattr(utils, f"{name}_doc_to_text")(row) == req.context, (name, row["id"])
            assert utils.halueval_doc_to_target(row) == ("Yes" if docs[row["id"]]["hallucinated"] else "No")
    row = _rows(out, "halueval_qa")[0]  # a prompt read off independently: the fixture's first item
    shown = "The Seine flows through London." if row["hallucinated"] else "The Thames"
    assert utils.halueval_qa_doc_to_text(row).endswith(
        f"#Knowledge#: The river Thames flows through London.\n#Question#: Which river flows through London?\n#Answer#: {shown}\n#Your Judgement#:")
    # PopQA as lm-eval assembles it: description, the shots (text, " ", target, "\n"), then the question
    task, docs = _task("popqa")
    shots = _rows(out, "popqa", "train")
    prefix = "Answer these questions:\n\n" + "".join(utils.popqa_doc_to_text(s) + " " + utils.popqa_doc_to_target(s) + "\n" for s in shots)
    for row in _rows(out, "popqa"):
        (req,) = task.requests(docs[row["id"]])
        assert prefix + utils.popqa_doc_to_text(row) == req.context
    assert utils.popqa_doc_to_text({"question": "What is the capital of Italy?"}) == "Q: What is the capital of Italy?\nA:"
    assert utils.popqa_doc_to_text({"question": " Who wrote Hamlet "}) == "Q: Who wrote Hamlet?\nA:"
    task, docs = _task("gsm8k_ppl")
    for row in _rows(out, "gsm8k_ppl"):
        (req,) = task.requests(docs[row["id"]])
        assert utils.gsm8k_ppl_doc_to_target(row) == req.text
    ll, text = -12.5, "Question: a b\nAnswer: c"
    assert utils.gsm8k_ppl_process_results({"question": "a b", "answer": "c"}, [ll]) == {
        "word_perplexity": (ll, 5), "byte_perplexity": (ll, len(text)), "bits_per_byte": (ll, len(text))}


def test_utils_judge_rule_matches_headgame(tmp_path):
    export_tasks(["halueval_qa"], tmp_path, data_dir=str(FIX))
    utils = import_utils(tmp_path)
    cases = [(" Yes", True, 1.0), (" Yes", False, 0.0), (" No", False, 1.0), (" No", True, 0.0), (" Yes, No", True, 0.0),
             ("", False, 0.0), (" yes", True, 0.0), (" Nope", False, 1.0), ("Yesterday", True, 1.0), (" Maybe", False, 0.0)]
    for text, gold, want in cases:
        assert utils.judged(text, gold) == want, (text, gold)
        assert utils.halueval_process_results({"hallucinated": gold}, [text]) == {"acc": want}
    rng = random.Random(0)
    words = ["Yes", "No", "yes", "no", "Not", "Yesterday", "None", " ", ",", "maybe", "\n", "."]
    for _ in range(2000):
        text = "".join(rng.choice(words) for _ in range(rng.randint(0, 5)))
        gold = rng.random() < 0.5
        assert utils.judged(text, gold) == judged(text, gold)[0], (text, gold)


def test_utils_exact_match_matches_headgame(tmp_path):
    export_tasks(["popqa"], tmp_path, data_dir=str(FIX))
    utils = import_utils(tmp_path)
    cases = [("  The Thames", ["Thames"], 1.0), (" Rome.", ["Rome"], 1.0), (" rome", ["Roma", "Rome"], 1.0), (" Paris", ["Rome"], 0.0),
             (" An apple", ["apple"], 1.0), (" Theatre", ["atre"], 0.0), ("", ["x"], 0.0), (" U.S.A", ["USA"], 1.0), (" Rome ", ["Rome"], 0.0)]
    for pred, answers, want in cases:
        assert utils.exact_match(pred, answers) == want, (pred, answers)
        assert utils.popqa_process_results({"answers": answers}, [pred]) == {"exact_match": want}
    rng = random.Random(1)
    words = ["The ", "the ", "A ", "an ", "Rome", "rome", ".", ",", " ", "'s", "Paris", "X-Men", "\u00e9"]
    for _ in range(2000):
        pred = "".join(rng.choice(words) for _ in range(rng.randint(0, 4)))
        answers = ["".join(rng.choice(words) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
        assert utils.exact_match(pred, answers) == float(exact_match(pred, answers)), (pred, answers)


def test_bad_export_requests_fail_with_a_fix(tmp_path, capsys):
    with pytest.raises(HeadgameError, match="no lm-eval export.*exportable tasks"):
        export_tasks(["mmlu"], tmp_path, data_dir=str(FIX))
    code, _, err = run_cli(["eval", "--data-dir", str(FIX), "--tasks", "mmlu", "--export-lm-eval", str(tmp_path / "Y")], capsys)
    assert code != 0 and "lm-eval has them built in" in err and not (tmp_path / "Y").exists()


@pytest.mark.skipif(not HAS_LM_EVAL, reason="lm-eval not installed (pip install lm-eval==0.4.13)")
def test_memotrap_config_is_lm_evals(exported):
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    builtin = load_yaml(Path(lm_eval.__file__).parent / "tasks" / "inverse_scaling" / "inverse_scaling_memo_trap.yaml",
                        resolve_func=False, recursive=True)
    ours = load(exported / "hg_memotrap.yaml")
    for key in ("output_type", "doc_to_text", "doc_to_choice", "doc_to_target", "target_delimiter"):
        assert ours[key] == builtin[key], key


@pytest.mark.skipif(not HAS_LM_EVAL, reason="lm-eval not installed (pip install lm-eval==0.4.13)")
def test_lm_eval_runs_the_export_like_headgame(exported, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from headgame.evaluate.config import EvalConfig
    from headgame.evaluate.runner import build_scorer, load_for_eval, run_tasks

    cfg = EvalConfig(model="tiny-llama", tasks=",".join(EXPORTED), data_dir=str(FIX), limit=2, seed=7, device="cpu")
    model, tok, info = load_for_eval(cfg)
    scorer = build_scorer(cfg, model, tok, info, [])
    ours = run_tasks(cfg, scorer, say=lambda m: None)["tasks"]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=scorer.cfg.max_length, device="cpu")
    res = simple_evaluate(model=lm, tasks=["headgame"], task_manager=TaskManager(include_path=str(exported)),
                          log_samples=True, bootstrap_iters=0)
    manifest = json.loads((exported / "export.json").read_text())["tasks"]
    for name in EXPORTED:
        samples = sorted(res["samples"][f"hg_{name}"], key=lambda s: s["doc_id"])
        assert len(samples) == len(ours[name]["items"]) == len(manifest[name]["ids"])
        task, docs = _task(name)
        for item, s in zip(ours[name]["items"], samples):
            assert s["doc"]["id"] == item["id"]
            reqs = task.requests(docs[item["id"]])  # the very strings lm-eval sent to the model
            if name == "gsm8k_ppl":
                assert s["arguments"][0][0] == reqs[0].text
            elif name == "memotrap":
                assert [tuple(a[:2]) for a in s["arguments"]] == [(r.context, r.continuation) for r in reqs]
            else:
                assert s["arguments"][0][0] == reqs[0].context, name
                assert s["arguments"][0][1]["until"] == list(reqs[0].until) and s["arguments"][0][1]["max_gen_toks"] == reqs[0].max_new_tokens
            if name == "gsm8k_ppl":
                assert -s["word_perplexity"][0] == pytest.approx(item["num"], rel=1e-4)
            elif name == "memotrap":
                assert float(s["acc"]) == item["num"]
                assert [r[0] for r in s["filtered_resps"]] == pytest.approx(item["lls"], abs=1e-3)
            else:
                assert s["filtered_resps"][0] == item["pred"], name
                assert float(s["acc" if name.startswith("halueval") else "exact_match"]) == item["num"], name
