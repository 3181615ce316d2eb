"""Ranking metrics and reciprocal rank fusion, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from strata.rag.fusion import rrf
from strata.rag.lexemes import Lexicon
from strata.rag.metrics import ndcg_at, recall_at, reciprocal_rank


def test_recall_and_mrr() -> None:
    rel = {"a": 2.0, "b": 1.0}
    assert recall_at(["x", "a", "y", "b"], rel, 1) == 0
    assert recall_at(["x", "a", "y", "b"], rel, 2) == 0.5
    assert recall_at(["x", "a", "y", "b"], rel, 4) == 1
    assert reciprocal_rank(["x", "x", "b", "a"], rel) == pytest.approx(1 / 2)  # dedupe first
    assert reciprocal_rank(["x"], rel) == 0


def test_ndcg_matches_the_formula() -> None:
    rel = {"a": 2.0, "b": 1.0}
    ideal = 3 / math.log2(2) + 1 / math.log2(3)
    got = ndcg_at(["b", "x", "a"], rel, 10)
    assert got == pytest.approx((1 / math.log2(2) + 3 / math.log2(4)) / ideal)
    assert ndcg_at(["a", "b"], rel) == pytest.approx(1.0)
    assert ndcg_at([], rel) == 0
    assert ndcg_at(["a"], {}) == 0
    # Only the first k count.
    assert ndcg_at([f"x{i}" for i in range(10)] + ["a"], rel, 10) == 0


def test_rrf_rewards_agreement() -> None:
    fused = rrf([["a", "b", "c"], ["c", "d", "b"]], k=60)
    scores = dict(fused)
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 63)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["a"] == pytest.approx(1 / 61)
    # In both lists beats first in one.
    assert [x for x, _ in fused][:2] == ["c", "b"]
    assert rrf([[], []]) == []


class _Keys:
    def blind_index(self, text: str) -> str:
        import hashlib

        return hashlib.sha256(b"k" + text.encode()).hexdigest()


def test_lexicon_hashes_lexemes_and_keeps_positions() -> None:
    lex = Lexicon(_Keys())
    rows = [(1, "password", [2, 7]), (1, "reset", [1]), (3, "alic", [4])]
    tsv = lex.tsvectors(rows, 3)
    assert len(tsv) == 3 and tsv[1] == ""
    assert "password" not in tsv[0] and "reset" not in tsv[0]
    h = lex.hash("password")
    assert len(h) == 12 and f"'{h}':2,7" in tsv[0]
    q = lex.tsquery(["reset", "password", "reset"])
    assert q is not None and q.count("|") == 1 and "reset" not in q
    assert lex.tsquery([]) is None
