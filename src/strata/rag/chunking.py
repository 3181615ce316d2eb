"""Chunking: by structure first (sections, paragraphs), then by a token budget with
overlap.

A chunk never spans two sections, so its heading path is exact. Within a
section paragraphs are packed greedily up to the budget; a paragraph larger than
the budget is cut at sentence ends, a sentence larger than it at words. Each new
chunk of a section repeats the last sentences of the previous one, up to
``overlap_tokens``, so a fact cut at a boundary is whole in one of them.

Tokens are *estimated* (words and punctuation marks): no model tokenizer is
needed, the count is the same for every embedding model, and for English prose it
sits about 10-20% under a WordPiece count, which the default budget allows for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from strata.rag.extract import Section

_TOKEN = re.compile(r"\w+|[^\w\s]")
_SENTENCE = re.compile(r"(?<=[.!?;])\s+")
HEADING_SEP = " > "


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


@dataclass(frozen=True, slots=True)
class Chunk:
    position: int
    heading: tuple[str, ...]
    text: str
    tokens: int

    @property
    def heading_text(self) -> str:
        return HEADING_SEP.join(self.heading)

    @property
    def embed_text(self) -> str:
        """What is embedded and indexed: the heading path gives a chunk its topic."""
        return f"{self.heading_text}\n\n{self.text}" if self.heading else self.text


@dataclass(frozen=True, slots=True)
class _Unit:
    text: str
    tokens: int
    new_paragraph: bool


def _words(sentence: str, budget: int) -> Iterable[str]:
    out: list[str] = []
    n = 0
    for word in sentence.split():
        t = count_tokens(word) or 1
        if out and n + t > budget:
            yield " ".join(out)
            out, n = [], 0
        out.append(word)
        n += t
    if out:
        yield " ".join(out)


def _units(paragraphs: list[str], budget: int) -> list[_Unit]:
    units = []
    for para in paragraphs:
        tokens = count_tokens(para)
        if tokens <= budget:
            units.append(_Unit(para, tokens, True))
            continue
        first = True
        for sentence in _SENTENCE.split(para):
            pieces = [sentence] if count_tokens(sentence) <= budget else _words(sentence, budget)
            for piece in pieces:
                units.append(_Unit(piece, count_tokens(piece), first))
                first = False
    return units


def _join(units: list[_Unit]) -> str:
    out = ""
    for i, u in enumerate(units):
        sep = "" if i == 0 else ("\n\n" if u.new_paragraph else " ")
        out += sep + u.text
    return out


def _pack(units: list[_Unit], budget: int, overlap: int) -> Iterable[list[_Unit]]:
    current: list[_Unit] = []
    size = 0
    fresh = 0  # units in `current` not carried over from the previous chunk
    for u in units:
        if current and size + u.tokens > budget:
            if fresh:
                yield current
            carry: list[_Unit] = []
            kept = 0
            for prev in reversed(current):
                if kept + prev.tokens > overlap or len(carry) + 1 >= len(current):
                    break
                carry.insert(0, prev)
                kept += prev.tokens
            if kept + u.tokens > budget:
                carry, kept = [], 0
            current, size, fresh = carry, kept, 0
        current.append(u)
        size += u.tokens
        fresh += 1
    if current and fresh:
        yield current


def chunk_sections(sections: list[Section], max_tokens: int, overlap_tokens: int) -> list[Chunk]:
    """The chunks of a document, numbered from 0 in reading order."""
    chunks: list[Chunk] = []
    for section in sections:
        heading_tokens = count_tokens(HEADING_SEP.join(section.heading))
        # The heading is embedded with every chunk: it spends part of the budget,
        # never more than half of it.
        budget = max(max_tokens // 2, max_tokens - heading_tokens)
        overlap = min(overlap_tokens, budget // 2)
        for group in _pack(_units(section.paragraphs, budget), budget, overlap):
            text = _join(group)
            chunks.append(Chunk(len(chunks), section.heading, text, count_tokens(text)))
    return chunks
