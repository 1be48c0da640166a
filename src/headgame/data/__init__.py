"""Text data: where documents come from and how they become packed token blocks.

``iter_texts(source)`` streams documents from a file, folder, the data directory, the
packaged default corpus or the hub; ``pack_blocks`` turns them into ``Blocks`` of
``seq_len`` tokens under a token budget; ``iter_batches`` slices those into batches.
"""

from __future__ import annotations

from headgame.data.corpus import (
    CORPUS_DESCRIPTION,
    CORPUS_PACKAGE,
    CORPUS_VERSION,
    DATA_DIR_ENV,
    INSTALL_COMMAND,
    default_corpus_files,
    gutenberg_dir,
    load_hf_dataset,
    parse_hf_source,
    resolve_data_dir,
)
from headgame.data.packing import Blocks, iter_batches, load_blocks, pack_blocks
from headgame.data.sources import iter_texts, no_text_error

__all__ = [
    "CORPUS_DESCRIPTION",
    "CORPUS_PACKAGE",
    "CORPUS_VERSION",
    "DATA_DIR_ENV",
    "INSTALL_COMMAND",
    "Blocks",
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
