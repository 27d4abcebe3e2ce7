"""A report as a list of blocks, written as markdown (linked images) and as one
self-contained HTML file (images embedded as base64)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Document:
    """Headings, paragraphs, bullet lists, tables and images, in order."""

    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("bullets", list(items)))

    def table(self, df: pd.DataFrame) -> None:
        self.blocks.append(("table", df))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("image", (Path(path), alt)))


def _cell(v: object) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def to_markdown(doc: Document, out_dir: Path) -> str:
    """Markdown text; images are linked relative to ``out_dir`` (where report.md lives)."""
    parts: list[str] = []
    for kind, body in doc.blocks:
        if kind == "heading":
            level, text = body
            parts.append(f"{'#' * level} {text}")
        elif kind == "para":
            parts.append(str(body))
        elif kind == "bullets":
            parts.append("\n".join(f"- {b}" for b in body))
        elif kind == "table":
            parts.append(markdown_table(body))
        elif kind == "image":
            path, alt = body
            rel = path.relative_to(out_dir).as_posix()
            parts.append(f"![{alt}]({rel})")
    return "\n\n".join(parts) + "\n"


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (pipes in cells escaped)."""
    if df.empty:
        return "_(no rows)_"
    cols = [str(c) for c in df.columns]

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(esc(_cell(v)) for v in row) + " |")
    return "\n".join(lines)


_INLINE = [
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)\*(?!\w)"), r"<em>\1</em>"),
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
]


def _inline(text: str) -> str:
    out = html.escape(text)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3} tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;border:1px solid #eee} code{background:#f3f3f3;padding:0 3px}
"""


def to_html(doc: Document, title: str) -> str:
    """One HTML file with every image embedded (PNG as base64 data URIs)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
    ]
    for kind, body in doc.blocks:
        if kind == "heading":
            level, text = body
            parts.append(f"<h{level}>{_inline(text)}</h{level}>")
        elif kind == "para":
            parts.append(f"<p>{_inline(str(body))}</p>")
        elif kind == "bullets":
            parts.append("<ul>" + "".join(f"<li>{_inline(b)}</li>" for b in body) + "</ul>")
        elif kind == "table":
            parts.append(_html_table(body))
        elif kind == "image":
            path, alt = body
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(alt)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>(no rows)</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_inline(_cell(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
