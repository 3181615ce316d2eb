"""Semantic cache rules without a server: eligibility, opt-in order, failure policy."""

from __future__ import annotations

from typing import Any

from strata.cache.semantic import SemanticCache, opted_in, split_request
from strata.security.keys import Principal
from strata.settings import Alias, SemanticCacheSettings
from strata.storage.engine import make_engine

P = Principal("key_1", "acme", "alice", False)


def alias(**cache: Any) -> Alias:
    return Alias.model_validate({"provider": "fake", "model": "m", "cache": cache})


def body(*messages: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"model": "x", "messages": list(messages), **kw}


SYS = {"role": "system", "content": "be brief"}


def test_only_the_last_user_text_varies() -> None:
    a = split_request(body(SYS, {"role": "user", "content": "hi"}), multi_turn=False)
    b = split_request(body(SYS, {"role": "user", "content": "hello"}), multi_turn=False)
    assert a is not None and b is not None
    assert a[0] == "hi" and b[0] == "hello" and a[1] == b[1]
    c = split_request(body(SYS, {"role": "user", "content": "hi"}, max_tokens=3), False)
    d = split_request(body({"role": "user", "content": "hi"}), False)
    assert c is not None and d is not None and len({a[1], c[1], d[1]}) == 3
    # Output-neutral fields do not split the context.
    e = split_request(body(SYS, {"role": "user", "content": "yo"}, user="u", stream=True), False)
    assert e is not None and e[1] == a[1]


def test_what_is_not_eligible() -> None:
    turns = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert split_request(body(*turns), multi_turn=False) is None
    assert split_request(body(*turns), multi_turn=True) is not None
    assert split_request(body({"role": "assistant", "content": "x"}), True) is None
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    assert split_request(body({"role": "user", "content": [image]}), True) is None
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert split_request(body({"role": "user", "content": parts}), True) == (
        "a\nb",
        split_request(body({"role": "user", "content": "zzz"}), True)[1],  # type: ignore[index]
    )
    assert split_request(body({"role": "user", "content": "  "}), True) is None


def test_request_beats_key_beats_alias() -> None:
    on, off = alias(semantic=True), alias()
    assert opted_in(on, P, None) and not opted_in(off, P, None)
    key_off = Principal("k", "t", "u", False, semantic_cache=False)
    key_on = Principal("k", "t", "u", False, semantic_cache=True)
    assert not opted_in(on, key_off, None) and opted_in(off, key_on, None)
    assert opted_in(off, key_off, "semantic") and not opted_in(on, key_on, "refresh, no-semantic")


async def test_a_dead_database_is_a_miss_not_a_failure() -> None:
    engine = make_engine("postgresql://u:p@127.0.0.1:1/none", pool_size=1)
    calls: list[str] = []

    async def embed(texts: list[str]) -> list[list[float]]:
        calls.extend(texts)
        return [[1.0, 0.0]]

    cache = SemanticCache(engine, SemanticCacheSettings(), 60.0, embed, "e", lambda a, b: True)
    try:
        plan = cache.plan(
            P,
            "acme",
            "a",
            alias(semantic=True),
            ["d"],
            body(SYS, {"role": "user", "content": "q"}),
            True,
            True,
            None,
        )
        assert plan is not None
        assert await cache.get(plan) is None
        assert plan.failed and cache.errors == 1
        # Backed off: the next lookup does not even embed.
        plan2 = cache.plan(
            P,
            "acme",
            "a",
            alias(semantic=True),
            ["d"],
            body(SYS, {"role": "user", "content": "q2"}),
            True,
            True,
            None,
        )
        assert plan2 is not None and await cache.get(plan2) is None
        assert calls == ["q"]
    finally:
        await engine.dispose()


def test_no_embedding_model_means_no_semantic_plan() -> None:
    cache = SemanticCache(None, SemanticCacheSettings(), 60.0, None, "", None)  # type: ignore[arg-type]
    a = alias(semantic=True)
    assert (
        cache.plan(P, "acme", "a", a, [], body({"role": "user", "content": "q"}), True, True, None)
        is None
    )
