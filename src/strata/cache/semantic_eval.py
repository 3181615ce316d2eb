"""How precise a semantic cache hit is: the labelled pairs and the arithmetic.

A semantic cache answers a request from an earlier one when the embeddings of
their user texts have a cosine similarity of at least a threshold. The labelled
set (``bench/cache/pairs.jsonl``, see its README) holds question pairs that
deserve the same answer (``same``) and near-misses that must not share one.
For a threshold, a *hit* is a pair whose similarity reaches it; precision is
the share of hits that are ``same`` pairs, recall the share of ``same`` pairs
that hit. With a ``guard`` (a ``(a, b) -> bool`` such as
:func:`strata.cache.guard.compatible`), a hit must also pass the guard.

Pure library: the embedding function is passed in (a sync
``list[str] -> list[list[float]]``), so nothing here loads a model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PAIRS = Path(__file__).resolve().parents[3] / "bench" / "cache" / "pairs.jsonl"

EmbedFn = Callable[[list[str]], list[list[float]]]
Guard = Callable[[str, str], bool]


@dataclass(frozen=True, slots=True)
class Pair:
    a: str
    b: str
    same: bool
    kind: str = ""
    domain: str = ""


@dataclass(frozen=True, slots=True)
class Row:
    threshold: float
    hits: int
    false_hits: int
    precision: float  # 1.0 when there are no hits: nothing wrong was served
    recall: float


def load_pairs(path: Path | None = None) -> list[Pair]:
    """The pairs in a JSONL file (default: the shipped set); ValueError names a bad line."""
    path = path or DEFAULT_PAIRS
    pairs: list[Pair] = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                a, b, same = obj["a"], obj["b"], obj["same"]
                if not (isinstance(a, str) and isinstance(b, str) and isinstance(same, bool)):
                    raise TypeError("a and b must be strings and same a boolean")
                pairs.append(Pair(a, b, same, str(obj.get("kind", "")), str(obj.get("domain", ""))))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None
    return pairs


def _unit(vec: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec] if norm else list(vec)


def similarities(
    pairs: Sequence[Pair],
    embed_fn: EmbedFn,
    *,
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> list[float]:
    """Cosine similarity of each pair's two texts, embedding each distinct text once.

    ``on_batch`` is called with the number of texts embedded after each batch
    (for a progress bar).
    """
    texts = list(dict.fromkeys(t for p in pairs for t in (p.a, p.b)))
    vecs: dict[str, list[float]] = {}
    for i in range(0, len(texts), batch_size):
        batch = texts[i : i + batch_size]
        out = embed_fn(batch)
        if len(out) != len(batch):
            raise ValueError(f"embed_fn returned {len(out)} vectors for {len(batch)} texts")
        vecs.update(zip(batch, (_unit(v) for v in out), strict=True))
        if on_batch is not None:
            on_batch(len(batch))
    return [sum(x * y for x, y in zip(vecs[p.a], vecs[p.b], strict=True)) for p in pairs]


def _allowed(pairs: Sequence[Pair], guard: Guard | None) -> list[bool]:
    return [True] * len(pairs) if guard is None else [guard(p.a, p.b) for p in pairs]


def _row(
    pairs: Sequence[Pair], sims: Sequence[float], allowed: Sequence[bool], threshold: float
) -> Row:
    positives = sum(p.same for p in pairs)
    hits = good = 0
    for p, s, ok in zip(pairs, sims, allowed, strict=True):
        if ok and s >= threshold:
            hits += 1
            good += p.same
    return Row(
        threshold=threshold,
        hits=hits,
        false_hits=hits - good,
        precision=good / hits if hits else 1.0,
        recall=good / positives if positives else 0.0,
    )


def evaluate(
    pairs: Sequence[Pair],
    sims: Sequence[float],
    thresholds: Sequence[float],
    guard: Guard | None = None,
) -> list[Row]:
    """Hits, false hits, precision and recall of ``sim >= threshold`` (and, with a
    ``guard``, ``guard(a, b)``), per threshold."""
    if len(pairs) != len(sims):
        raise ValueError(f"{len(pairs)} pairs but {len(sims)} similarities")
    allowed = _allowed(pairs, guard)
    return [_row(pairs, sims, allowed, t) for t in thresholds]


def pick_threshold(
    pairs: Sequence[Pair],
    sims: Sequence[float],
    min_precision: float = 0.99,
    guard: Guard | None = None,
) -> float:
    """The lowest threshold whose hits reach ``min_precision``: the best recall there.

    Candidates are the observed similarities (recall only changes at them); with
    a ``guard``, those of the pairs it lets through. When none qualifies, the
    result lies just above every similarity: no hits at all.
    """
    if len(pairs) != len(sims):
        raise ValueError(f"{len(pairs)} pairs but {len(sims)} similarities")
    if not sims:
        return 1.0
    allowed = _allowed(pairs, guard)
    ranked = sorted(
        ((s, p.same) for p, s, ok in zip(pairs, sims, allowed, strict=True) if ok),
        key=lambda sv: -sv[0],
    )
    best = math.nextafter(max(sims), math.inf)
    hits = good = 0
    # Sweep from the top: after consuming every pair with similarity >= s, the
    # counts are those of threshold s. Ties are consumed together.
    for i, (s, same) in enumerate(ranked):
        hits += 1
        good += same
        if i + 1 < len(ranked) and ranked[i + 1][0] == s:
            continue
        if good / hits >= min_precision:
            best = s
    return best


def split_by_anchor(pairs: Sequence[Pair]) -> tuple[list[Pair], list[Pair]]:
    """A development and a held-out half: pairs grouped by their ``a`` text (the
    anchor), anchors numbered in order of first appearance; even-numbered
    anchors go to the first list, odd ones to the second. No anchor is in both."""
    number: dict[str, int] = {}
    dev: list[Pair] = []
    test: list[Pair] = []
    for p in pairs:
        k = number.setdefault(p.a, len(number))
        (dev if k % 2 == 0 else test).append(p)
    return dev, test


def guard_timings(
    pairs: Sequence[Pair], guard: Guard, *, reset: Callable[[], None] | None = None
) -> list[float]:
    """Seconds ``guard`` takes on each pair; ``reset`` (say, clearing the guard's
    caches) runs before each call, untimed, so that every call starts cold."""
    out: list[float] = []
    for p in pairs:
        if reset is not None:
            reset()
        t0 = time.perf_counter()
        guard(p.a, p.b)
        out.append(time.perf_counter() - t0)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 <= q <= 1) of non-empty ``values``."""
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, math.ceil(q * len(ranked)) - 1))]


def query_latencies(embed_fn: EmbedFn, texts: Sequence[str], *, warmup: int = 3) -> list[float]:
    """Seconds to embed each text alone, as a cache lookup does (after ``warmup`` calls)."""
    for text in texts[:warmup]:
        embed_fn([text])
    out: list[float] = []
    for text in texts:
        t0 = time.perf_counter()
        embed_fn([text])
        out.append(time.perf_counter() - t0)
    return out
