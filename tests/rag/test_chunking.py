"""Extraction keeps structure; chunking respects sections, the budget and overlap."""

from __future__ import annotations

import itertools
import re

import pytest

from strata.errors import InvalidRequest
from strata.rag.chunking import chunk_sections, count_tokens
from strata.rag.extract import Section, detect_format, extract, html_sections, markdown_sections
from tests.rag.pdf import make_pdf

MARKDOWN = """# Guide

Intro paragraph.

## Install

Run the installer.

```
# not a heading
pip install strata
```

### Linux

Use the package.

## Use

Start it.
"""


def test_markdown_sections_keep_heading_paths() -> None:
    sections = markdown_sections(MARKDOWN)
    assert [s.heading for s in sections] == [
        ("Guide",),
        ("Guide", "Install"),
        ("Guide", "Install", "Linux"),
        ("Guide", "Use"),
    ]
    install = sections[1].paragraphs
    assert install[0] == "Run the installer."
    assert "# not a heading" in install[1]  # fenced code is no heading


def test_html_sections_drop_scripts_and_follow_headings() -> None:
    html = (
        "<html><head><title>t</title><style>p{}</style></head><body>"
        "<h1>Top</h1><p>One &amp; two.</p><script>alert(1)</script>"
        "<h2>Sub</h2><ul><li>first</li><li>second</li></ul><h1>Other</h1><div>x</div>"
        "</body></html>"
    )
    sections = html_sections(html)
    assert [(s.heading, s.paragraphs) for s in sections] == [
        (("Top",), ["One & two."]),
        (("Top", "Sub"), ["first", "second"]),
        (("Other",), ["x"]),
    ]


def test_pdf_pages_become_sections() -> None:
    data = make_pdf([["Hello from page one."], ["Second page text (here)."]])
    (doc,) = extract(data, "pdf")
    assert [s.heading for s in doc.sections] == [("page 1",), ("page 2",)]
    assert "Hello from page one." in doc.text
    assert "Second page text (here)." in doc.text


def test_bad_pdf_and_bad_utf8_are_400s() -> None:
    with pytest.raises(InvalidRequest, match="PDF"):
        extract(b"%PDF-1.4 garbage", "pdf")
    with pytest.raises(InvalidRequest, match="UTF-8"):
        extract(b"\xff\xfe\xfa", "text")
    with pytest.raises(InvalidRequest, match="unknown format"):
        extract(b"x", "docx")


def test_jsonl_one_document_per_line() -> None:
    data = (
        b'{"id": "a1", "title": "First", "text": "Alpha text.", "lang": "en", "n": 3}\n'
        b"\n"
        b'{"content": "Beta text.", "metadata": {"team": "x"}, "nested": {"no": 1}}\n'
    )
    docs = extract(data, "jsonl")
    assert [d.key for d in docs] == ["a1", "3"]
    assert docs[0].sections[0].heading == ("First",)
    assert docs[0].metadata == {"lang": "en", "n": 3}
    assert docs[1].metadata == {"team": "x"}
    with pytest.raises(InvalidRequest, match="line 1"):
        extract(b'{"title": "no text"}', "jsonl")
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        extract(b"{nope", "jsonl")


def test_detect_format() -> None:
    assert detect_format("a/b/README.md") == "markdown"
    assert detect_format("x.PDF") == "pdf"
    assert detect_format("x.bin", "text/html; charset=utf-8") == "html"
    assert detect_format(None, None) == "text"


def _sentences(n: int, prefix: str = "s") -> str:
    return " ".join(f"Sentence {prefix}{i} has exactly seven words." for i in range(n))


def test_chunks_respect_the_budget_and_overlap() -> None:
    section = Section(("Doc", "Part"), [_sentences(60)])
    chunks = chunk_sections([section], max_tokens=60, overlap_tokens=16)
    assert len(chunks) > 5
    assert [c.position for c in chunks] == list(range(len(chunks)))
    heading_tokens = count_tokens("Doc > Part")
    for c in chunks:
        assert c.tokens <= 60 - heading_tokens
        assert c.heading == ("Doc", "Part")
        assert c.embed_text.startswith("Doc > Part\n\n")
    for a, b in itertools.pairwise(chunks):
        # The next chunk starts with the previous one's last sentences, up to 16 tokens.
        ids_a, ids_b = re.findall(r"s(\d+) ", a.text), re.findall(r"s(\d+) ", b.text)
        shared = [x for x in ids_b if x in ids_a]
        assert shared == ids_a[-len(shared) :] == ids_b[: len(shared)]
        assert 1 <= len(shared) <= 16 // 7  # seven tokens a sentence
    # Nothing is lost: every sentence is in some chunk.
    text = " ".join(c.text for c in chunks)
    assert all(f"s{i} " in text for i in range(60))


def test_chunks_never_span_sections_and_small_paragraphs_pack() -> None:
    sections = [
        Section(("A",), ["one.", "two.", "three."]),
        Section(("B",), ["four."]),
    ]
    chunks = chunk_sections(sections, max_tokens=100, overlap_tokens=10)
    assert [(c.heading, c.text) for c in chunks] == [
        (("A",), "one.\n\ntwo.\n\nthree."),
        (("B",), "four."),
    ]


def test_a_giant_sentence_is_cut_at_words() -> None:
    words = " ".join(f"w{i}" for i in range(500))
    chunks = chunk_sections([Section((), [words])], max_tokens=50, overlap_tokens=0)
    assert all(c.tokens <= 50 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == words.split()
