"""Rules of the code base that a reviewer would otherwise check by eye (DEVELOPERS.md, Conventions).

Each rule names the one place a concern lives; a violation lists the offending lines.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "headgame"
FILES = sorted(SRC.rglob("*.py"))


def _grep(pattern: str, allowed: tuple[str, ...] = ()) -> list[str]:
    rx = re.compile(pattern)
    hits = []
    for path in FILES:
        rel = path.relative_to(SRC).as_posix()
        if any(rel == a or rel.startswith(a.rstrip("/") + "/") for a in allowed):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if rx.search(line):
                hits.append(f"{rel}:{n}: {line.strip()}")
    return hits


def test_the_rules_see_the_package():
    assert len(FILES) > 50 and (SRC / "models" / "tap.py") in FILES


def test_no_file_over_400_lines():
    long = [f"{p.relative_to(SRC)}: {n}" for p in FILES if (n := len(p.read_text().splitlines())) > 400]
    assert not long, long


@pytest.mark.parametrize("pattern, home", [
    (r"register_(forward_pre_|forward_|full_backward_|)hook\(|\.register_hook\(", ("models/tap.py",)),
    (r"\bfamily\s*(==|!=|in\b)|\.family\s*(==|!=)", ("models/families",)),
    (r"cfg\.method\s*(==|!=|in\b)|self\.method\s*(==|!=)", ("train/methods.py",)),
    (r"weights_only\s*=\s*False", ()),
    (r"spec (game-lora|gt-fep)|spec §", ()),
])
def test_each_concern_has_one_home(pattern, home):
    assert not _grep(pattern, home), "\n".join(_grep(pattern, home))


def test_no_two_modules_import_each_other():
    """Also through imports inside functions (grimp reads every import statement); imports under
    TYPE_CHECKING run only for type checkers and do not count."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("headgame", exclude_type_checking_imports=True)
    pairs = sorted({tuple(sorted((m, i))) for m in graph.modules for i in graph.find_modules_directly_imported_by(m)
                    if m != i and m in graph.find_modules_directly_imported_by(i)})
    assert not pairs, pairs


def test_formulas_document_names_code_and_tests_that_exist():
    """docs/formulas.md names, for each formula, the function and the test: both must exist."""
    root = SRC.parents[1]
    doc = (root / "docs" / "formulas.md").read_text()
    missing = []
    for dotted in sorted(set(re.findall(r"`(headgame(?:\.[A-Za-z_]\w*)+)`", doc))):
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            mod = root / "src" / Path(*parts[:i])
            path = mod.with_suffix(".py") if mod.with_suffix(".py").exists() else mod / "__init__.py"
            if path.exists():
                rest = parts[i:]
                if rest and not re.search(rf"(def|class)\s+{re.escape(rest[0])}\b|^{re.escape(rest[0])}\s*[:=]", path.read_text(), re.M):
                    missing.append(dotted)
                break
        else:
            missing.append(dotted)
    for path, name in sorted(set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", doc))):
        file = root / path
        if not file.exists() or not re.search(rf"def {re.escape(name)}\b", file.read_text()):
            missing.append(f"{path}::{name}")
    assert not missing, missing
