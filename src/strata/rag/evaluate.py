"""Evaluate retrieval on a labelled query set: recall@k, MRR, nDCG@10 per mode.

A dataset is JSONL, one query a line: ``{"id": "q1", "query": "...", "relevant":
{"DOC": grade, ...}}`` (grade > 0; 1 = partly, 2 = fully relevant). ``DOC`` names
a document by its source as ingested (``strata ingest`` uses the path relative to
the directory, e.g. ``guides/setup.md``) or, for JSONL records, by the record id
(the part after ``#`` in ``kb.jsonl#kb-017``). bench/rag/ holds the shipped set.

Chunks are ranked, documents judged: each query retrieves ``CHUNKS`` chunks and
keeps each document at its best chunk's rank. The similarity floor is off
(evaluation measures ranking, not the cut-off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import orjson

from strata.rag import metrics
from strata.rag.retrieve import search
from strata.rag.service import RagService
from strata.storage.repositories.rag import CollectionRow

CHUNKS = 30
RECALL_AT = (1, 5, 10)


@dataclass(frozen=True)
class Judged:
    id: str
    query: str
    relevant: dict[str, float]


@dataclass
class Scores:
    mode: str
    queries: int = 0
    recall: dict[int, float] = field(default_factory=dict)
    mrr: float = 0.0
    ndcg10: float = 0.0
    per_query: dict[str, float] = field(default_factory=dict)  # nDCG@10 by query id

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "queries": self.queries,
            **{f"recall@{k}": round(v, 4) for k, v in self.recall.items()},
            "mrr": round(self.mrr, 4),
            "ndcg@10": round(self.ndcg10, 4),
        }


def load_queries(path: Path) -> list[Judged]:
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
            rel = {str(k): float(v) for k, v in row["relevant"].items() if float(v) > 0}
            out.append(Judged(str(row.get("id", n)), str(row["query"]), rel))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(
                f'{path}:{n}: expected {{"query": str, "relevant": {{doc: grade}}}}'
            ) from None
    if not out:
        raise ValueError(f"{path}: no queries")
    return out


def doc_key(source: str | None, relevant: dict[str, float]) -> str | None:
    """The judged name of a retrieved document's source (full source or record id)."""
    if source is None:
        return None
    if source in relevant:
        return source
    tail = source.rsplit("#", 1)[-1]
    return tail if "#" in source else source


async def evaluate(
    rag: RagService,
    col: CollectionRow,
    queries: list[Judged],
    mode: str,
    on_query: Callable[[], None] | None = None,
) -> Scores:
    recalls: dict[int, list[float]] = {k: [] for k in RECALL_AT}
    rr, ndcg = [], []
    scores = Scores(mode)
    for q in queries:
        found = await search(rag, col, q.query, top_k=CHUNKS, mode=mode, min_similarity=-1)  # type: ignore[arg-type]
        ranked = [d for h in found.hits if (d := doc_key(h.source, q.relevant)) is not None]
        for k in RECALL_AT:
            recalls[k].append(metrics.recall_at(ranked, q.relevant, k))
        rr.append(metrics.reciprocal_rank(ranked, q.relevant))
        ndcg.append(metrics.ndcg_at(ranked, q.relevant, 10))
        scores.per_query[q.id] = ndcg[-1]
        if on_query is not None:
            on_query()
    scores.queries = len(queries)
    scores.recall = {k: fmean(v) for k, v in recalls.items()}
    scores.mrr = fmean(rr)
    scores.ndcg10 = fmean(ndcg)
    return scores
