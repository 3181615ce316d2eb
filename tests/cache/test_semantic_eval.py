"""The labelled pairs for semantic caching, and the precision/recall arithmetic."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.cache import semantic_eval as se
from strata.cache.semantic_eval import Pair


def test_shipped_set_is_large_balanced_and_unique() -> None:
    pairs = se.load_pairs()
    assert len(pairs) >= 500
    same = sum(p.same for p in pairs)
    assert 0.4 <= same / len(pairs) <= 0.6
    keys = [frozenset((p.a.strip().lower(), p.b.strip().lower())) for p in pairs]
    assert len(set(keys)) == len(keys), "duplicate pair"
    assert all(p.a.strip() and p.b.strip() and p.a != p.b for p in pairs)
    assert all(p.kind for p in pairs)
    assert len({p.domain for p in pairs}) >= 10


def test_load_pairs_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    good = json.dumps({"a": "x", "b": "y", "same": True, "kind": "reword"})
    path.write_text(good + "\n\n" + json.dumps({"a": "x", "same": "yes"}) + "\n")
    with pytest.raises(ValueError, match=r"p\.jsonl:3"):
        se.load_pairs(path)
    path.write_text(good + "\n")
    assert se.load_pairs(path) == [Pair("x", "y", True, "reword")]


# Four same pairs and three near-misses, with hand-picked similarities.
TINY = [
    (Pair("a", "b", True), 0.99),
    (Pair("c", "d", False), 0.97),
    (Pair("e", "f", True), 0.95),
    (Pair("g", "h", True), 0.90),
    (Pair("i", "j", False), 0.85),
    (Pair("k", "l", True), 0.80),
    (Pair("m", "n", False), 0.70),
]
TP = [p for p, _ in TINY]
TS = [s for _, s in TINY]


def test_evaluate_counts_hits_precision_and_recall() -> None:
    rows = se.evaluate(TP, TS, [0.995, 0.99, 0.95, 0.85, 0.0])
    assert [(r.hits, r.false_hits) for r in rows] == [(0, 0), (1, 0), (3, 1), (5, 2), (7, 3)]
    assert [r.precision for r in rows] == pytest.approx([1.0, 1.0, 2 / 3, 3 / 5, 4 / 7])
    assert [r.recall for r in rows] == pytest.approx([0.0, 1 / 4, 2 / 4, 3 / 4, 1.0])
    with pytest.raises(ValueError):
        se.evaluate(TP, TS[:-1], [0.5])


def test_pick_threshold_is_the_lowest_reaching_the_precision() -> None:
    assert se.pick_threshold(TP, TS, 0.99) == 0.99
    # 0.90 gives 3/4 = 75%; 0.80 gives 4/6 = 67%; 0.95 only 67%: the lowest wins.
    assert se.pick_threshold(TP, TS, 0.75) == 0.90
    assert se.pick_threshold(TP, TS, 0.6) == 0.80
    assert se.pick_threshold(TP, TS, 0.5) == 0.70


def test_pick_threshold_when_nothing_qualifies_serves_no_hits() -> None:
    pairs = [Pair("a", "b", False), Pair("c", "d", True)]
    t = se.pick_threshold(pairs, [0.9, 0.8], 0.99)
    assert t > 0.9
    assert se.evaluate(pairs, [0.9, 0.8], [t])[0].hits == 0


def test_pick_threshold_keeps_ties_together() -> None:
    pairs = [Pair("a", "b", True), Pair("c", "d", False), Pair("e", "f", True)]
    # At 0.9 both tied pairs hit (1/2), never the first alone (1/1); at 0.5, 2/3.
    assert se.pick_threshold(pairs, [0.9, 0.9, 0.5], 0.7) > 0.9
    assert se.pick_threshold(pairs, [0.9, 0.9, 0.5], 0.6) == 0.5


def test_similarities_are_cosines_and_embed_each_text_once() -> None:
    vecs = {"x": [1.0, 0.0], "y": [3.0, 4.0], "z": [0.0, 2.0]}
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return [vecs[t] for t in texts]

    pairs = [Pair("x", "y", True), Pair("y", "z", False), Pair("x", "x", True)]
    seen: list[int] = []
    sims = se.similarities(pairs, embed, batch_size=2, on_batch=seen.append)
    assert sims == pytest.approx([0.6, 0.8, 1.0])
    assert sorted(t for c in calls for t in c) == ["x", "y", "z"]
    assert seen == [2, 1]


def test_percentile() -> None:
    assert se.percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert se.percentile([3.0, 1.0, 2.0, 4.0], 0.95) == 4.0
    assert se.percentile([5.0], 0.0) == 5.0


@pytest.fixture(scope="module")
def embed() -> Iterator[se.EmbedFn]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from strata.providers.local_embed import default_model_dir

    model = SentenceTransformer(str(default_model_dir()), device="cpu", local_files_only=True)

    def fn(texts: list[str]) -> list[list[float]]:
        return model.encode(texts, convert_to_numpy=True, normalize_embeddings=True).tolist()

    yield fn


def test_chosen_threshold_is_precise_on_the_shipped_set(embed: se.EmbedFn) -> None:
    pairs = se.load_pairs()
    sims = se.similarities(pairs, embed)
    assert all(-1.0001 <= s <= 1.0001 for s in sims)
    threshold = se.pick_threshold(pairs, sims, 0.99)
    (row,) = se.evaluate(pairs, sims, [threshold])
    hits = [p for p, s in zip(pairs, sims, strict=True) if s >= threshold]
    assert row.hits == len(hits)
    assert row.precision >= 0.99
    if hits:
        assert sum(p.same for p in hits) / len(hits) >= 0.99
    positives = sum(p.same for p in pairs)
    assert row.recall == pytest.approx(sum(p.same for p in hits) / positives)
    # No lower observed similarity reaches the precision with more recall.
    for s in sorted(set(sims)):
        if s >= threshold:
            break
        assert se.evaluate(pairs, sims, [s])[0].precision < 0.99
    # Paraphrases are, on the whole, closer than near-misses: the model is measured.
    same = [s for p, s in zip(pairs, sims, strict=True) if p.same]
    diff = [s for p, s in zip(pairs, sims, strict=True) if not p.same]
    assert sum(same) / len(same) > sum(diff) / len(diff)
