"""Write a small chat dataset from the public-domain Gutenberg corpus of the data directory.

Each record is one exchange, labelled as generated: the user gives a paragraph of a book and
asks for the next one; the assistant's answer is the book's next paragraph. It is a stand-in
for an instruction set (no public instruction set installs offline from a package registry
here), good for checking that `headgame train --data chat.jsonl` learns on assistant tokens
only, not for measuring instruction following.

    python examples/gutenberg_chat.py --data-dir ../shared/data --n 400 --out /tmp/gutenberg_chat.jsonl
    headgame train --model smollm2-135m --data /tmp/gutenberg_chat.jsonl --max-tokens 20000 --out C

The file is written where --out says, never into the repository (the corpus stays in the data
directory).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import random
import re
from pathlib import Path


def paragraphs(text: str) -> list[str]:
    parts = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n"))]
    return [p for p in parts if 200 <= len(p) <= 900 and not p.isupper()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("HEADGAME_DATA_DIR"), help="the data directory (default $HEADGAME_DATA_DIR)")
    ap.add_argument("--n", type=int, default=400, help="records to write (default 400)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", required=True, help="JSONL file to write (outside the repository)")
    args = ap.parse_args()
    if not args.data_dir:
        ap.error("no data directory; pass --data-dir or set HEADGAME_DATA_DIR")
    books = sorted((Path(args.data_dir) / "corpus" / "gutenberg").glob("*.txt.xz"))
    if not books:
        ap.error(f"no corpus/gutenberg/*.txt.xz under {args.data_dir}")
    pairs = []
    for book in books:
        title = book.name.removesuffix(".txt.xz").replace("-", ", ").replace("_", " ")
        paras = paragraphs(lzma.open(book, "rt", encoding="latin-1").read())
        pairs += [(title, a, b) for a, b in zip(paras, paras[1:])]
    rng = random.Random(args.seed)
    chosen = rng.sample(pairs, min(args.n, len(pairs)))
    with open(args.out, "w") as fh:
        for title, a, b in chosen:
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"Here is a paragraph from {title}:\n\n{a}\n\nWrite the paragraph that follows it."},
                {"role": "assistant", "content": b},
            ], "source": f"generated from the Project Gutenberg corpus ({title}), public domain"}) + "\n")
    print(f"wrote {len(chosen)} records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
