"""Full-text search over keyed hashes of lexemes: the index holds no plaintext.

PostgreSQL does the linguistics (``to_tsvector``: parsing, stop words,
stemming); the plaintext is only a query parameter, never stored. Each lexeme is
then replaced by a short keyed hash (HMAC-SHA256 under a key derived from the
master key, see ``Crypto.blind_index``), positions kept, and the result stored as
a ``tsvector``: ``ts_rank`` and the GIN index work unchanged. A query's lexemes
are hashed the same way and OR-ed into a ``tsquery``.

What this leaks, and what it does not: equal words in different rows have equal
hashes (needed for matching), so someone with the database alone can count term
frequencies, but cannot read a word without the master key, nor test a guess
(the hash is keyed). 12 hex characters (48 bits) make collisions between the
words of one corpus negligible.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Protocol

HASH_CHARS = 12
# One text search configuration for every collection: stems English, and for
# other languages still splits words (unstemmed matches only).
TS_CONFIG = "english"

LEXEMES_SQL = """
SELECT t.i, l.lexeme, l.positions
FROM unnest($1::text[]) WITH ORDINALITY AS t(txt, i),
     unnest(to_tsvector($2::regconfig, t.txt)) AS l
"""
QUERY_LEXEMES_SQL = "SELECT lexeme FROM unnest(to_tsvector($2::regconfig, $1::text))"


class Indexer(Protocol):
    def blind_index(self, text: str) -> str: ...


class Lexicon:
    """Lexeme -> hash, memoised (a corpus repeats a few thousand words endlessly)."""

    MAX_MEMO = 200_000

    def __init__(self, crypto: Indexer) -> None:
        self._crypto = crypto
        self._memo: dict[str, str] = {}

    def hash(self, lexeme: str) -> str:
        h = self._memo.get(lexeme)
        if h is None:
            h = self._crypto.blind_index("rag-lexeme\0" + lexeme)[:HASH_CHARS]
            if len(self._memo) >= self.MAX_MEMO:
                self._memo.clear()
            self._memo[lexeme] = h
        return h

    def tsvectors(self, rows: list[Any], count: int) -> list[str]:
        """``(ordinal, lexeme, positions)`` rows of LEXEMES_SQL for ``count`` texts ->
        one tsvector literal per text (an empty one for a text without words)."""
        per: dict[int, list[str]] = defaultdict(list)
        for i, lexeme, positions in rows:
            pos = ",".join(str(p) for p in positions or ()) or "1"
            per[int(i)].append(f"'{self.hash(lexeme)}':{pos}")
        return [" ".join(per.get(i, ())) for i in range(1, count + 1)]

    def tsquery(self, lexemes: list[str]) -> str | None:
        """A tsquery literal matching any of the lexemes; None without any."""
        hashes = sorted({self.hash(x) for x in lexemes})
        return " | ".join(f"'{h}'" for h in hashes) or None


async def tsvectors(conn: Any, lexicon: Lexicon, texts: list[str]) -> list[str]:
    """Hashed tsvector literals of ``texts`` (one round trip)."""
    if not texts:
        return []
    rows = await conn.fetch(LEXEMES_SQL, texts, TS_CONFIG)
    return lexicon.tsvectors([(r["i"], r["lexeme"], r["positions"]) for r in rows], len(texts))


async def tsquery(conn: Any, lexicon: Lexicon, query: str) -> str | None:
    rows = await conn.fetch(QUERY_LEXEMES_SQL, query, TS_CONFIG)
    return lexicon.tsquery([r["lexeme"] for r in rows])
