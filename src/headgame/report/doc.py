"""A small document model rendered twice, as Markdown and as one self-contained HTML page
(figures inlined as data URIs): headings, paragraphs, tables and figures, in order."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table cell: NaN and None as '–', small p in scientific notation."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–" if math.isnan(x) else ("∞" if x > 0 else "−∞")
        if digits >= 1 and x != 0 and abs(x) < 10 ** -digits:
            return f"{x:.1e}"
        return f"{x:.{digits}f}"
    return str(x)


@dataclass
class Doc:
    title: str
    parts: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, text: str, level: int = 2) -> None:
        self.parts.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.parts.append(("p", text))

    def table(self, headers: list[str], rows: list[list[Any]], note: str | None = None) -> None:
        self.parts.append(("table", (headers, [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows], note)))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.parts.append(("figure", (name, png, caption)))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, val in self.parts:
            if kind == "h":
                out += [f"{'#' * val[0]} {val[1]}", ""]
            elif kind == "p":
                out += [val, ""]
            elif kind == "table":
                headers, rows, note = val
                out.append("| " + " | ".join(headers) + " |")
                out.append("|" + "|".join("---" for _ in headers) + "|")
                out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
                out += (["", note] if note else []) + [""]
            elif kind == "figure":
                name, _, caption = val
                out += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for kind, val in self.parts:
            if kind == "h":
                body.append(f"<h{val[0]}>{e(val[1])}</h{val[0]}>")
            elif kind == "p":
                body.append(f"<p>{e(val)}</p>")
            elif kind == "table":
                headers, rows, note = val
                head = "".join(f"<th>{e(h)}</th>" for h in headers)
                cells = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
                if note:
                    body.append(f"<p class='note'>{e(note)}</p>")
            elif kind == "figure":
                name, png, caption = val
                uri = "data:image/png;base64," + base64.b64encode(png).decode()
                body.append(f"<figure><img src='{uri}' alt='{e(name)}'><figcaption>{e(caption)}</figcaption></figure>")
        style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;"
                 "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
                 ".note{font-size:.85em;color:#555}img{max-width:100%}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(self.title)}</title><style>{style}</style>"
                f"</head><body>{''.join(body)}</body></html>")

    def write(self, out: Path, stem: str = "report") -> list[Path]:
        """``stem.md``, ``stem.html`` and every figure as a PNG beside them (atomic writes)."""
        from headgame.io import write_text_atomic

        paths = []
        for kind, val in self.parts:
            if kind == "figure":
                path = out / val[0]
                tmp = path.with_suffix(".png.tmp")
                tmp.write_bytes(val[1])
                tmp.replace(path)
                paths.append(path)
        for suffix, text in ((".md", self.markdown()), (".html", self.html())):
            path = out / f"{stem}{suffix}"
            write_text_atomic(path, text)
            paths.append(path)
        return paths
