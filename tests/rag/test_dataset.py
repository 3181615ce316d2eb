"""The labelled retrieval set in bench/rag/ is what its builder makes, and sound."""

from __future__ import annotations

import json

from bench.rag.build import CORPUS, QUERIES, build, render


def test_committed_files_are_the_builders_output() -> None:
    docs, queries = build()
    assert CORPUS.read_text() == render(docs), "run: python -m bench.rag.build"
    assert QUERIES.read_text() == render(queries), "run: python -m bench.rag.build"


def test_sizes_and_judgments() -> None:
    docs = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    queries = [json.loads(line) for line in QUERIES.read_text().splitlines()]
    assert len(docs) >= 300 and len(queries) >= 100
    ids = {d["id"] for d in docs}
    assert len(ids) == len(docs)
    for q in queries:
        assert q["relevant"] and set(q["relevant"]) <= ids, q
        assert sorted(q["relevant"].values()) == [1, 2]
    assert {q["kind"] for q in queries} == {"question", "lookup"}
    # A lookup's identifier is in exactly one article: the one judged 2.
    for q in (q for q in queries if q["kind"] == "lookup"):
        ident = q["query"].split()[1] if q["query"].startswith("version") else q["query"].split()[0]
        holders = [d["id"] for d in docs if ident in d["text"]]
        best = next(d for d, g in q["relevant"].items() if g == 2)
        assert holders == [best], (q, holders)
