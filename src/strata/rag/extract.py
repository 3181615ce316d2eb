"""Text out of uploaded files, kept in its structure: sections (a heading path) of
paragraphs. Formats: plain text, Markdown, HTML, PDF (pypdf) and JSONL (one
document per line).

Every failure is an InvalidRequest naming what was wrong with the file: an
upload is user input, and a bad one must never become a 500.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import orjson

from strata.errors import InvalidRequest

FORMATS = ("text", "markdown", "html", "pdf", "jsonl")
_EXT = {
    "txt": "text",
    "text": "text",
    "md": "markdown",
    "markdown": "markdown",
    "html": "html",
    "htm": "html",
    "pdf": "pdf",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
}
_MIME = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/jsonl": "jsonl",
    "application/x-ndjson": "jsonl",
    "application/jsonlines": "jsonl",
}
# JSONL fields that hold a record's text, title and id (first present wins).
TEXT_FIELDS = ("text", "content", "body")
TITLE_FIELDS = ("title", "heading", "name")
ID_FIELDS = ("id", "_id", "doc_id")
_ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_BLANK = re.compile(r"\n\s*\n")


@dataclass
class Section:
    heading: tuple[str, ...]
    paragraphs: list[str] = field(default_factory=list)


@dataclass
class Extracted:
    """One document's text: its sections; for a JSONL line also its key and fields."""

    sections: list[Section]
    key: str | None = None  # JSONL: the record's id (or line number)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        parts = []
        for s in self.sections:
            if s.heading:
                parts.append(s.heading[-1])
            parts.extend(s.paragraphs)
        return "\n\n".join(parts)


def detect_format(filename: str | None, content_type: str | None = None) -> str:
    """A format from a file name's extension, else a MIME type, else plain text."""
    if filename and "." in filename:
        fmt = _EXT.get(filename.rsplit(".", 1)[1].lower())
        if fmt:
            return fmt
    if content_type:
        fmt = _MIME.get(content_type.split(";")[0].strip().lower())
        if fmt:
            return fmt
    return "text"


def extract(data: bytes, fmt: str) -> list[Extracted]:
    """The documents in one upload (several for JSONL, else one)."""
    if fmt == "pdf":
        return [Extracted(_pdf(data))]
    text = _decode(data)
    if fmt == "markdown":
        return [Extracted(markdown_sections(text))]
    if fmt == "html":
        return [Extracted(html_sections(text))]
    if fmt == "jsonl":
        return _jsonl(text)
    if fmt == "text":
        return [Extracted([Section((), paragraphs(text))])]
    raise InvalidRequest(f"unknown format {fmt!r}; one of: {', '.join(FORMATS)}", param="format")


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest("the document is not valid UTF-8 text") from None


def paragraphs(text: str) -> list[str]:
    out = []
    for block in _BLANK.split(text.replace("\r\n", "\n")):
        block = " ".join(block.split())
        if block:
            out.append(block)
    return out


def markdown_sections(text: str) -> list[Section]:
    """ATX headings (``#``..``######``) open sections; a heading's level sets its
    place in the path. Fenced code stays one paragraph (a ``#`` in it is no heading)."""
    sections = [Section(())]
    path: list[tuple[int, str]] = []
    block: list[str] = []
    in_fence = False

    def flush() -> None:
        if block:
            sections[-1].paragraphs.extend(paragraphs("\n".join(block)))
            block.clear()

    for line in text.replace("\r\n", "\n").split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            block.append(line)
            continue
        m = None if in_fence else _ATX.match(line)
        if m is None:
            block.append(line)
            continue
        flush()
        level, title = len(m.group(1)), m.group(2).strip()
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, title))
        sections.append(Section(tuple(t for _, t in path)))
    flush()
    return [s for s in sections if s.paragraphs]


_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCKS = {
    "p", "div", "li", "br", "tr", "pre", "blockquote", "section", "article", "td", "th",
    "dd", "dt", "table", "ul", "ol", "header", "footer", "main", "aside", "figcaption",
}  # fmt: skip
_SKIP = {"script", "style", "noscript", "template", "head", "svg"}


class _HtmlSections(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections = [Section(())]
        self.path: list[tuple[int, str]] = []
        self.text: list[str] = []
        self.heading: int | None = None
        self.skip = 0

    def _flush(self) -> None:
        para = " ".join("".join(self.text).split())
        self.text = []
        if not para:
            return
        if self.heading is not None:
            while self.path and self.path[-1][0] >= self.heading:
                self.path.pop()
            self.path.append((self.heading, para))
            self.sections.append(Section(tuple(t for _, t in self.path)))
        else:
            self.sections[-1].paragraphs.append(para)

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in _SKIP:
            self.skip += 1
        elif tag in _HEADINGS:
            self._flush()
            self.heading = _HEADINGS[tag]
        elif tag in _BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in _HEADINGS:
            self._flush()
            self.heading = None
        elif tag in _BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.text.append(data)


def html_sections(text: str) -> list[Section]:
    parser = _HtmlSections()
    parser.feed(text)
    parser.close()
    parser._flush()
    return [s for s in parser.sections if s.paragraphs]


def _pdf(data: bytes) -> list[Section]:
    """One section per page ("page N"), paragraphs as pypdf lays out the text."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise InvalidRequest("the PDF is encrypted; upload an unencrypted copy")
        pages = [page.extract_text() or "" for page in reader.pages]
    except InvalidRequest:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise InvalidRequest(f"the PDF could not be read ({type(exc).__name__})") from None
    out = []
    for i, page in enumerate(pages, 1):
        paras = paragraphs(page)
        if len(paras) == 1 and "\n" in page:  # no blank lines: one paragraph per line
            paras = [" ".join(line.split()) for line in page.splitlines() if line.strip()]
        if paras:
            out.append(Section((f"page {i}",), paras))
    return out


def _scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) and not (isinstance(v, str) and len(v) > 200)


def _jsonl(text: str) -> list[Extracted]:
    """One document per non-empty line: a JSON object with a text field; its id (or
    line number) becomes the key, its title a heading, other short scalar fields
    metadata."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise InvalidRequest(f"JSONL line {n} is not valid JSON") from None
        if not isinstance(rec, dict):
            raise InvalidRequest(f"JSONL line {n} is not a JSON object")
        body = next((rec[f] for f in TEXT_FIELDS if isinstance(rec.get(f), str)), None)
        if body is None:
            raise InvalidRequest(
                f"JSONL line {n} has no text field (one of: {', '.join(TEXT_FIELDS)})"
            )
        title = next((rec[f] for f in TITLE_FIELDS if isinstance(rec.get(f), str)), None)
        key = next((str(rec[f]) for f in ID_FIELDS if rec.get(f) is not None), str(n))
        used = {*TEXT_FIELDS, *TITLE_FIELDS, *ID_FIELDS}
        meta = {k: v for k, v in rec.items() if k not in used and _scalar(v)}
        if isinstance(rec.get("metadata"), dict):
            meta |= {k: v for k, v in rec["metadata"].items() if _scalar(v)}
        out.append(Extracted([Section((title,) if title else (), paragraphs(body))], key, meta))
    if not out:
        raise InvalidRequest("the JSONL upload holds no records")
    return out
