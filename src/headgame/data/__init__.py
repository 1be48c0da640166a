"""Every reader of text and benchmark files, the one data-directory resolver, and packing.

* :mod:`~headgame.data.datadir`: ``resolve_data_dir`` (``--data-dir`` or ``$HEADGAME_DATA_DIR``)
  and ``data_file``, the only code that decides where the public data files live;
* :mod:`~headgame.data.sources` and :mod:`~headgame.data.corpus`: ``iter_texts(source)`` streams
  documents from a file, folder, the data directory, the packaged default corpus or the hub;
* :mod:`~headgame.data.packing`: ``pack_blocks`` turns them into ``Blocks`` of ``seq_len`` tokens
  under a token budget; ``iter_batches`` slices those into batches;
* :mod:`~headgame.data.chat`: chat and instruction JSONL (``messages`` or ``prompt``/``completion``)
  for ``headgame train``, one conversation per padded row with labels on the assistant tokens;
* :mod:`~headgame.data.texts`: GSM8K problems and WikiText-2 as right-padded ``Sequences``, one
  text per sequence (GT-FEP observations and perplexity sets);
* :mod:`~headgame.data.benchmarks`: where each benchmark's files are found (data directory,
  offline package, hub) and readers that name the file and line of a bad record.

``chat``, ``texts`` and ``benchmarks`` are imported on use (``from headgame.data.texts import ...``).
"""

from __future__ import annotations

from headgame.data.corpus import (
    CORPUS_DESCRIPTION,
    CORPUS_PACKAGE,
    CORPUS_VERSION,
    INSTALL_COMMAND,
    default_corpus_files,
    gutenberg_dir,
    load_hf_dataset,
    parse_hf_source,
)
from headgame.data.datadir import DATA_DIR_ENV, data_file, resolve_data_dir
from headgame.data.packing import Blocks, iter_batches, load_blocks, pack_blocks
from headgame.data.sources import check_source, iter_texts, no_text_error

__all__ = [
    "CORPUS_DESCRIPTION",
    "CORPUS_PACKAGE",
    "CORPUS_VERSION",
    "DATA_DIR_ENV",
    "INSTALL_COMMAND",
    "Blocks",
    "check_source",
    "data_file",
    "default_corpus_files",
    "gutenberg_dir",
    "iter_batches",
    "iter_texts",
    "load_blocks",
    "load_hf_dataset",
    "no_text_error",
    "pack_blocks",
    "parse_hf_source",
    "resolve_data_dir",
]
