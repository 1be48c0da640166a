"""Where text comes from: files, folders, the data directory, the packaged corpus, the hub.

:func:`iter_texts` turns one ``source`` string into a lazy, deterministic stream of
documents. Resolution happens at call time, so a wrong path or a missing package is reported
before any work starts; files are read only as the consumer asks for more documents, so a
small token budget never reads a large corpus.

Source forms, tried in this order (write ``./default`` for a local file named ``default``):

* ``"default"`` – the packaged corpus (:mod:`headgame.data.corpus`), duplicates removed.
* ``"gutenberg"`` – ``DATA_DIR/corpus/gutenberg/*.txt.xz``.
* ``"data:RELPATH"`` – a file or folder relative to the data directory.
* ``"hf:NAME[:CONFIG][:SPLIT]"`` – a Hugging Face dataset (needs the ``hub`` extra;
  see :func:`headgame.data.corpus.parse_hf_source`).
* a file: ``.txt``/``.md`` (the whole file is ONE document: books and articles keep their
  long-range context; the packer tokenizes long documents in paragraph pieces so a budget
  still streams), ``.jsonl`` (one object per line), ``.json`` (a list of strings or
  objects; a ``.json`` file that is really JSON lines is read as such), each optionally
  ``.xz``-compressed. A file named explicitly with another suffix is read as plain text.
* a folder: every supported file below it, recursively, in sorted path order (hidden
  files and folders skipped).

Documents that are empty or whitespace-only are skipped. A source that yields no document at
all raises :func:`no_text_error` when its stream ends.
"""

from __future__ import annotations

import json
import lzma
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from headgame.data.corpus import (
    CORPUS_TEXT_FIELD,
    default_corpus_files,
    gutenberg_dir,
    load_hf_dataset,
)
from headgame.data.datadir import resolve_data_dir
from headgame.errors import HeadgameError

# Suffix (inside an optional .xz) -> reader; a folder takes only these files.
_KINDS = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".json": "json"}
SUPPORTED = "a .txt, .md, .jsonl or .json file (optionally .xz-compressed)"

_SNIFF_BYTES = 8192  # NUL bytes this early mean binary data (the same test git uses)


def no_text_error(source: str) -> HeadgameError:
    """The error for a source that yielded no non-whitespace text (shared with the packer)."""
    return HeadgameError(
        f"data source {source} contains no text; pass files with non-empty documents "
        "(for JSON/JSONL check --text-field)"
    )


def iter_texts(
    source: str, *, text_field: str = "text", data_dir: str | os.PathLike[str] | None = None
) -> Iterator[str]:
    """Yield the documents of ``source`` lazily, in a deterministic order.

    Args:
        source: one of the forms listed in the module docstring.
        text_field: the field holding the text in JSON/JSONL records and hub datasets
            (ignored for ``default``, whose field is fixed).
        data_dir: the data directory for ``gutenberg`` and ``data:``; defaults to
            ``$HEADGAME_DATA_DIR``.

    Raises:
        HeadgameError: at call time when the source cannot be resolved; while iterating when
            a file is binary, malformed, lacks ``text_field``, or the source has no text.
    """
    docs = _resolve(source, text_field, data_dir)
    return _nonempty(docs, source)


def _nonempty(docs: Iterable[str], source: str) -> Iterator[str]:
    # Emptiness is only known at the end; checking here keeps the stream lazy.
    count = 0
    for doc in docs:
        if doc and not doc.isspace():
            count += 1
            yield doc
    if count == 0:
        raise no_text_error(source)


def _resolve(
    source: str, text_field: str, data_dir: str | os.PathLike[str] | None
) -> Iterable[str]:
    if source == "default":
        return _iter_default(default_corpus_files())
    if source == "gutenberg":
        return _iter_paths(_folder_files(gutenberg_dir(data_dir)), text_field)
    if source.startswith("data:"):
        return _iter_paths(_path_files(data_path(source, data_dir)), text_field)
    if source.startswith("hf:"):
        return _iter_rows(load_hf_dataset(source, text_field), source, text_field)
    path = Path(source).expanduser()
    if not path.exists():
        raise HeadgameError(
            f"data source {source} not found; pass a text file, folder, JSONL file, "
            "'default', or hf:NAME"
        )
    return _iter_paths(_path_files(path), text_field)


def check_source(source: str, *, text_field: str = "text", data_dir: str | os.PathLike[str] | None = None) -> None:
    """Resolve ``source`` without reading a document: a missing file, an empty folder, a
    ``data:`` path outside the data directory or a missing package fail here, before a command
    loads its model. Hub datasets are only checked when they are read."""
    if not isinstance(source, str) or not source.strip():
        raise HeadgameError(f"--data must not be empty, got {source!r}; pass e.g. --data default")
    if source.startswith("hf:"):
        return
    _resolve(source, text_field, data_dir)  # a lazy stream: nothing is read yet


def data_path(source: str, data_dir: str | os.PathLike[str] | None) -> Path:
    """The file or folder of a ``data:RELPATH`` source, which must stay inside the data directory."""
    root = resolve_data_dir(data_dir)
    rel = source[len("data:") :]
    if not rel.strip():
        raise HeadgameError(f"data source {source} names no path; pass data:RELPATH, e.g. data:corpus/gutenberg")
    path = root / rel
    inside = root.resolve()
    if Path(rel).is_absolute() or not path.resolve().is_relative_to(inside):
        raise HeadgameError(
            f"data source {source} resolves outside the data directory {root}; pass a path inside it, "
            "or the file itself without data:"
        )
    if not path.exists():
        raise HeadgameError(
            f"data source {source} not found (looked for {path}); pass a path relative "
            "to the data directory"
        )
    return path


# --------------------------------------------------------------------------- files


def _kind(path: Path) -> str | None:
    """``"text"``, ``"jsonl"``, ``"json"`` or None, looking through a trailing ``.xz``."""
    return _KINDS.get(Path(path.name.lower().removesuffix(".xz")).suffix)


def _path_files(path: Path) -> list[Path]:
    # A file named explicitly is read even with an unknown suffix (WikiText's .raw, a
    # README): the user chose it, and the binary check still rejects non-text data.
    return _folder_files(path) if path.is_dir() else [path]


def _folder_files(folder: Path) -> list[Path]:
    # Hidden files and folders (.git, .cache) are never data; sorting by relative path
    # makes the document order identical on every machine.
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and _kind(p) is not None
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if not files:
        raise HeadgameError(
            f"data folder {folder} has no .txt, .md, .jsonl or .json files (optionally .xz); "
            "pass a folder that holds some"
        )
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _iter_paths(paths: list[Path], text_field: str) -> Iterator[str]:
    for path in paths:
        kind = _kind(path)
        if kind == "jsonl":
            yield from _iter_jsonl(path, text_field)
        elif kind == "json":
            yield from _iter_json(path, text_field)
        else:
            yield _read_text(path)


def _iter_default(paths: list[Path]) -> Iterator[str]:
    # BoolQ repeats a passage once per question about it; train on each passage once.
    seen: set[int] = set()
    for path in paths:
        for doc in _iter_jsonl(path, CORPUS_TEXT_FIELD):
            key = hash(doc)
            if key not in seen:
                seen.add(key)
                yield doc


def _open(path: Path) -> IO[bytes]:
    return lzma.open(path, "rb") if path.name.lower().endswith(".xz") else open(path, "rb")


def _binary_error(path: Path, why: str) -> HeadgameError:
    return HeadgameError(f"data file {path} is not text ({why}); pass {SUPPORTED}")


def _check_not_binary(path: Path) -> None:
    with _guard(path), _open(path) as fh:
        head = fh.read(_SNIFF_BYTES)
    if b"\0" in head:
        raise _binary_error(path, "it has NUL bytes")


@contextmanager
def _guard(path: Path) -> Iterator[None]:
    """Turn decompression and OS errors on ``path`` into one-line HeadgameErrors."""
    try:
        yield
    except (lzma.LZMAError, EOFError) as exc:
        raise HeadgameError(
            f"data file {path} is not a valid .xz archive ({exc or 'truncated'}); "
            "re-compress it with xz or pass the uncompressed file"
        ) from exc
    except OSError as exc:
        raise HeadgameError(
            f"data file {path} cannot be read ({exc.strerror or exc}); check its "
            "permissions or pass another file"
        ) from exc


def _decode(raw: bytes, path: Path, where: str = "") -> str:
    try:
        # utf-8-sig drops a byte-order mark that Windows editors write.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        legacy = _decode_legacy(raw)
        if legacy is not None:
            return legacy
        at = f"{where}, " if where else ""
        raise _binary_error(path, f"{at}byte {exc.start} is not UTF-8") from exc


def _decode_legacy(raw: bytes) -> str | None:
    """Windows-1252/Latin-1 text (older Gutenberg books such as NLTK's), else None.

    Binary data fails here: cp1252 leaves five byte values undefined, and arbitrary bytes
    are about 11% control characters where text has almost none.
    """
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError:
        return None
    controls = sum(1 for ch in text if ch < " " and ch not in "\t\n\r\f")
    return text if controls <= len(text) // 1000 else None


def _read_text(path: Path) -> str:
    _check_not_binary(path)
    with _guard(path), _open(path) as fh:
        raw = fh.read()
    # One line-ending convention, so CRLF files tokenize like LF ones.
    return _decode(raw, path).replace("\r\n", "\n")


def json_records(
    source: str, *, text_field: str = "text", data_dir: str | os.PathLike[str] | None = None
) -> Iterator[tuple[str, Any]] | None:
    """The raw records of a source that is one JSON/JSONL file, as ``(where, record)`` with
    ``where`` naming the file and line for errors; None for any other source (nothing is read)."""
    if source in ("default", "gutenberg") or source.startswith("hf:"):
        return None
    path = data_path(source, data_dir) if source.startswith("data:") else Path(source).expanduser()
    if not path.is_file():
        return None
    kind = _kind(path)
    if kind == "jsonl":
        return _jsonl_records(path)
    return _json_records(path, text_field) if kind == "json" else None


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    _check_not_binary(path)
    with _guard(path), _open(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = _decode(raw, path, f"line {lineno}").strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HeadgameError(
                    f"data file {path} line {lineno} is not valid JSON ({exc.msg}); "
                    "fix or remove that line"
                ) from exc
            yield f"data file {path} line {lineno}", record


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    for where, record in _jsonl_records(path):
        text = _record_text(record, where, text_field)
        if text is not None:
            yield text


def _iter_json(path: Path, text_field: str) -> Iterator[str]:
    for where, record in _json_records(path, text_field):
        doc = _record_text(record, where, text_field)
        if doc is not None:
            yield doc


def _json_records(path: Path, text_field: str) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # Many ".json" files are really JSON lines; read them as such.
            yield from _jsonl_records(path)
            return
        raise HeadgameError(
            f"data file {path} is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}); fix the file or save it as JSON lines (.jsonl)"
        ) from exc
    if isinstance(data, dict) and text_field in data:
        data = [data]
    if not isinstance(data, list):
        raise HeadgameError(
            f"data file {path} holds a JSON {type(data).__name__}, not a list; pass a list of "
            f"strings or of objects with a '{text_field}' field"
        )
    for index, record in enumerate(data, start=1):
        yield f"data file {path} item {index}", record


def _record_text(record: Any, where: str, text_field: str) -> str | None:
    """The text of one record (``where`` names it in errors); None for a null text."""
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise HeadgameError(
            f"{where} is a JSON {type(record).__name__}, not an object or "
            f"string; give each record a '{text_field}' field"
        )
    if text_field not in record:
        keys = ", ".join(list(map(str, record))[:12]) or "none"
        raise HeadgameError(
            f"{where} has no field '{text_field}' (its keys: {keys}); "
            "pass --text-field with the field that holds the text"
        )
    value = record[text_field]
    if value is None or isinstance(value, str):
        return value
    raise HeadgameError(
        f"{where} field '{text_field}' is a {type(value).__name__}, not a "
        "string; pass --text-field naming a text field"
    )


def _iter_rows(rows: Iterable[Any], source: str, text_field: str) -> Iterator[str]:
    for index, row in enumerate(rows, start=1):
        doc = _record_text(row, f"data source {source} row {index}", text_field)
        if doc is not None:
            yield doc
