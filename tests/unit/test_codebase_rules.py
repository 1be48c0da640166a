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
