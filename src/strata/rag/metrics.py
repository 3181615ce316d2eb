"""Retrieval quality metrics for one query: recall@k, reciprocal rank, nDCG@k.

``ranked`` is the retrieved document ids, best first (duplicates count once, at
their best rank); ``relevant`` maps a relevant id to its grade (> 0). nDCG uses
the exponential gain 2^grade - 1 and log2(rank + 1) discounts (Järvelin &
Kekäläinen; the form BEIR and TREC tools report).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def dedupe(ranked: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ranked))


def recall_at(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    if not relevant:
        return 0.0
    found = {d for d in dedupe(ranked)[:k] if relevant.get(d, 0) > 0}
    return len(found) / sum(1 for g in relevant.values() if g > 0)


def reciprocal_rank(ranked: Sequence[str], relevant: Mapping[str, float]) -> float:
    for rank, d in enumerate(dedupe(ranked), 1):
        if relevant.get(d, 0) > 0:
            return 1.0 / rank
    return 0.0


def ndcg_at(ranked: Sequence[str], relevant: Mapping[str, float], k: int = 10) -> float:
    def dcg(grades: Sequence[float]) -> float:
        return sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(grades))

    ideal = dcg(sorted((g for g in relevant.values() if g > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg([relevant.get(d, 0) for d in dedupe(ranked)[:k]]) / ideal
