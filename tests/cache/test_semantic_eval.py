"""The labelled pairs for semantic caching, and the precision/recall arithmetic."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.cache import guard as guard_mod
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


# A guard that refuses the near-miss at 0.97 and the paraphrase at 0.90.
REFUSED = {("c", "d"), ("g", "h")}


def tiny_guard(a: str, b: str) -> bool:
    return (a, b) not in REFUSED


def test_evaluate_with_a_guard_counts_only_pairs_it_lets_through() -> None:
    rows = se.evaluate(TP, TS, [0.99, 0.95, 0.85, 0.0], guard=tiny_guard)
    assert [(r.hits, r.false_hits) for r in rows] == [(1, 0), (2, 0), (3, 1), (5, 2)]
    assert [r.precision for r in rows] == pytest.approx([1.0, 1.0, 2 / 3, 3 / 5])
    # Recall is over every same pair, refused ones included.
    assert [r.recall for r in rows] == pytest.approx([1 / 4, 2 / 4, 2 / 4, 3 / 4])
    # Without a guard, the same call is the plain cosine evaluation.
    assert se.evaluate(TP, TS, [0.95]) == se.evaluate(TP, TS, [0.95], guard=None)
    assert se.evaluate(TP, TS, [0.95])[0].hits == 3


def test_pick_threshold_with_a_guard() -> None:
    # Cosine alone: 100% only at 0.99. With the guard, 0.95 is clean (2/2).
    assert se.pick_threshold(TP, TS, 0.99) == 0.99
    assert se.pick_threshold(TP, TS, 0.99, guard=tiny_guard) == 0.95
    # 0.80 gives 3/4 with the guard (0.85 brings the false pair, 0.80 a same one).
    assert se.pick_threshold(TP, TS, 0.75, guard=tiny_guard) == 0.80


def test_pick_threshold_when_the_guard_refuses_everything() -> None:
    t = se.pick_threshold(TP, TS, 0.99, guard=lambda a, b: False)
    assert t > max(TS)
    assert se.evaluate(TP, TS, [t])[0].hits == 0


def test_split_by_anchor_alternates_anchors() -> None:
    pairs = [
        Pair("q1", "x", True),
        Pair("q1", "y", False),
        Pair("q2", "x", True),
        Pair("q2", "z", False),
        Pair("q3", "w", True),
        Pair("q1", "v", True),
    ]
    dev, test = se.split_by_anchor(pairs)
    assert [p.a for p in dev] == ["q1", "q1", "q3", "q1"]
    assert [p.a for p in test] == ["q2", "q2"]
    shipped_dev, shipped_test = se.split_by_anchor(se.load_pairs())
    assert not {p.a for p in shipped_dev} & {p.a for p in shipped_test}
    assert abs(len(shipped_dev) - len(shipped_test)) <= 2


def test_guard_timings_reset_before_each_call() -> None:
    calls: list[str] = []

    def guard(a: str, b: str) -> bool:
        calls.append(a)
        return True

    out = se.guard_timings(TP[:3], guard, reset=lambda: calls.append("reset"))
    assert calls == ["reset", "a", "reset", "c", "reset", "e"]
    assert len(out) == 3 and all(t >= 0 for t in out)


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


@pytest.fixture(scope="module")
def shipped(embed: se.EmbedFn) -> tuple[list[Pair], list[float]]:
    pairs = se.load_pairs()
    return pairs, se.similarities(pairs, embed)


def test_chosen_threshold_is_precise_on_the_shipped_set(
    shipped: tuple[list[Pair], list[float]],
) -> None:
    pairs, sims = shipped
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


def test_default_threshold_with_the_guard_is_precise_on_the_shipped_set(
    shipped: tuple[list[Pair], list[float]],
) -> None:
    pairs, sims = shipped
    guard = guard_mod.compatible
    picked = se.pick_threshold(pairs, sims, 0.99, guard=guard)
    # The default is the pick rounded down to two decimals, with the same hits.
    assert math.floor(picked * 100) / 100 == guard_mod.DEFAULT_THRESHOLD
    at_pick, at_default = se.evaluate(pairs, sims, [picked, guard_mod.DEFAULT_THRESHOLD], guard)
    assert at_default.hits == at_pick.hits
    assert at_default.precision >= 0.99
    # The guard is what makes the precision: cosine alone is far below it there,
    # and the guard keeps a useful share of the paraphrases.
    (cosine,) = se.evaluate(pairs, sims, [guard_mod.DEFAULT_THRESHOLD])
    assert cosine.precision < 0.9
    assert at_default.recall >= 0.3
    # Precise on both halves, not only on the whole.
    sim_of = dict(zip(pairs, sims, strict=True))
    for half in se.split_by_anchor(pairs):
        (row,) = se.evaluate(half, [sim_of[p] for p in half], [guard_mod.DEFAULT_THRESHOLD], guard)
        assert row.precision >= 0.97
        assert row.recall >= 0.25


def test_cache_eval_command_prints_both_tables(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from strata.cli.cache_cmd import app

    path = tmp_path / "pairs.jsonl"
    rows = [
        {"a": "How do I convert JSON to YAML?", "b": "How to convert JSON to YAML?", "same": True},
        {
            "a": "How do I convert JSON to YAML?",
            "b": "How do I convert YAML to JSON?",
            "same": False,
        },
        {"a": "What is 20% of 50?", "b": "Calculate 20 percent of 50.", "same": True},
        {"a": "What is 20% of 50?", "b": "What is 50% of 20?", "same": False},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = CliRunner().invoke(app, ["eval", str(path), "--thresholds", "0.5,0.9"])
    assert out.exit_code == 0, out.output
    assert "by cosine alone" in out.output
    assert "by cosine + guard" in out.output
    assert "cosine + guard, threshold for precision >= 99%" in out.output
    assert "recall 100.0%, 2 hits, 0 false" in out.output  # the guard keeps both paraphrases
    assert f"DEFAULT_THRESHOLD) {guard_mod.DEFAULT_THRESHOLD:.2f}" in out.output
    assert "guard CPU per pair" in out.output
