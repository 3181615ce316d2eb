"""Reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009).

score(d) = sum over rankings r of 1 / (k + rank_r(d)), ranks from 1. Scores of
different retrievers (cosine similarity, ts_rank) are not comparable; ranks are.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

from strata.rag.config import RRF_K

T = TypeVar("T", bound=Hashable)


def rrf(rankings: Sequence[Sequence[T]], k: int = RRF_K) -> list[tuple[T, float]]:
    """Items of every ranking by fused score, best first (ties: first seen first)."""
    scores: dict[T, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    order = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))
