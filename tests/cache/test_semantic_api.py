"""The semantic cache end to end: real embeddings (MiniLM), real pgvector, the SDK's
wire format. Each test uses its own tenant, so entries never leak between tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from strata.storage.engine import make_engine
from strata.storage.repositories import keys as key_repo
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread, usage_rows

Msgs = list[dict[str, str]]


def user(text: str, system: str = "You are a helpful assistant.") -> Msgs:
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


async def ask(
    srv: ServerThread,
    key: NewKey,
    messages: Msgs,
    model: str = "fake-sem",
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(
            srv.base_url + "/v1/chat/completions",
            json={"model": model, "messages": messages, "temperature": 0, **kw},
            headers={"authorization": f"Bearer {key.key}", **(headers or {})},
        )


@pytest.fixture
def key(server: ServerThread, new_key: Callable[..., NewKey]) -> NewKey:
    # Lookups while the embedding model loads time out (a miss): wait for it.
    embedder = server.runtime.providers["local-embed"]
    deadline = time.monotonic() + 120
    while not embedder.ready():
        assert time.monotonic() < deadline, "the embedding model did not load"
        time.sleep(0.05)
    return new_key(tenant="sem-" + uuid.uuid4().hex[:8], user="sam")


async def settle(srv: ServerThread) -> None:
    """Wait (bounded) for the background cache writes of the requests made so far."""
    chat = srv.runtime.chat
    for _ in range(200):
        if not chat.semantic._pending and not chat.cache._pending:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("cache writes did not finish")


async def test_a_paraphrase_is_a_semantic_hit_that_costs_nothing(
    server: ServerThread, key: NewKey, database_url: str
) -> None:
    r1, r2 = "s1-" + uuid.uuid4().hex, "s2-" + uuid.uuid4().hex
    first = await ask(
        server, key, user("How do I reset my password?"), headers={"x-request-id": r1}
    )
    assert first.headers["x-strata-cache"] == "miss"
    await settle(server)
    second = await ask(
        server, key, user("How can I reset my password?"), headers={"x-request-id": r2}
    )
    assert second.headers["x-strata-cache"] == "hit-semantic"
    similarity = float(second.headers["x-strata-cache-similarity"])
    assert server.settings.cache.semantic.threshold <= similarity < 1.0
    assert second.json() == first.json()  # the stored answer, id and all
    [miss] = await usage_rows(database_url, r1)
    [hit] = await usage_rows(database_url, r2)
    assert hit.cache == "hit-semantic" and hit.cost_usd == 0 and hit.saved_usd == miss.cost_usd


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            "How do I convert a string to an integer in Java?",
            "How do I convert an integer to a string in Java?",
        ),
        ("What is 15% of 80?", "What is 15% of 90?"),
        ("Can I bring a laptop in my carry-on bag?", "Can I not bring a laptop in my carry-on?"),
    ],
)
async def test_near_misses_are_not_served_each_others_answers(
    server: ServerThread, key: NewKey, a: str, b: str
) -> None:
    assert (await ask(server, key, user(a))).headers["x-strata-cache"] == "miss"
    await settle(server)
    assert (await ask(server, key, user(b))).headers["x-strata-cache"] == "miss"


async def test_opt_in_by_alias_key_and_request(
    server: ServerThread, key: NewKey, database_url: str
) -> None:
    q1, q2 = user("What is the capital of Australia?"), user("Tell me the capital of Australia.")
    # Alias "fake" has no semantic cache: a paraphrase misses ...
    assert (await ask(server, key, q1, "fake")).headers["x-strata-cache"] == "miss"
    await settle(server)
    assert (await ask(server, key, q2, "fake")).headers["x-strata-cache"] == "miss"
    # ... unless the request opts in.
    semantic = {"x-strata-cache": "semantic"}
    await ask(server, key, q1, "fake", semantic, max_tokens=50)
    await settle(server)
    r = await ask(server, key, q2, "fake", semantic, max_tokens=50)
    assert r.headers["x-strata-cache"] == "hit-semantic"
    # A request can opt out on an alias that opted in.
    await ask(server, key, q1)
    await settle(server)
    no_store = {"x-strata-cache": "no-semantic", "cache-control": "no-store"}
    off = await ask(server, key, q2, headers=no_store)
    assert off.headers["x-strata-cache"] == "miss"
    # A key opted out is never served semantically on that alias.
    engine = make_engine(database_url, pool_size=1)
    try:
        await key_repo.set_semantic_cache(engine, key.id, False)
    finally:
        await engine.dispose()
    server.runtime.auth.evict(key_repo.hash_key(key.key))
    assert (await ask(server, key, q2)).headers["x-strata-cache"] == "miss"


async def test_tenants_and_contexts_never_share_answers(
    server: ServerThread, key: NewKey, new_key: Callable[..., NewKey]
) -> None:
    await ask(server, key, user("How many days are in a leap year?"))
    await settle(server)
    paraphrase = user("how many days does a leap year have?")
    other = new_key(tenant="sem-other-" + uuid.uuid4().hex[:6], user="eve")
    assert (await ask(server, other, paraphrase)).headers["x-strata-cache"] == "miss"
    # Another system prompt or another parameter is another context.
    pirate = user("how many days does a leap year have?", system="Answer like a pirate.")
    assert (await ask(server, key, pirate)).headers["x-strata-cache"] == "miss"
    assert (await ask(server, key, paraphrase, max_tokens=5)).headers["x-strata-cache"] == "miss"
    assert (await ask(server, key, paraphrase)).headers["x-strata-cache"] == "hit-semantic"


async def test_multi_turn_only_when_the_earlier_turns_match(
    server: ServerThread, key: NewKey
) -> None:
    history = [
        {"role": "user", "content": "I am planning a trip to Japan."},
        {"role": "assistant", "content": "Great! How can I help?"},
    ]
    q1 = [*history, {"role": "user", "content": "What is the best month to visit?"}]
    q2 = [*history, {"role": "user", "content": "Which month is the best to visit?"}]
    # Single-turn alias: multi-turn requests are never semantically cached.
    await ask(server, key, q1)
    await settle(server)
    assert (await ask(server, key, q2)).headers["x-strata-cache"] == "miss"
    # Multi-turn alias: a hit with the same history, a miss with another.
    await ask(server, key, q1, "fake-sem-turns")
    await settle(server)
    hit = await ask(server, key, q2, "fake-sem-turns")
    assert hit.headers["x-strata-cache"] == "hit-semantic"
    korea = [{**history[0], "content": "I am planning a trip to Korea."}, *q2[1:]]
    assert (await ask(server, key, korea, "fake-sem-turns")).headers["x-strata-cache"] == "miss"


async def test_a_semantic_hit_replays_as_a_stream(server: ServerThread, key: NewKey) -> None:
    first = await ask(server, key, user("Explain what a mutex is."))
    await settle(server)
    r = await ask(
        server,
        key,
        user("What is a mutex?"),
        stream=True,
        stream_options={"include_usage": True},
    )
    assert r.headers["x-strata-cache"] == "hit-semantic"
    chunks = [orjson.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == first.json()["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"]["prompt_tokens"] == first.json()["usage"]["prompt_tokens"]


async def test_unknown_cache_control_is_a_clear_error(server: ServerThread, key: NewKey) -> None:
    r = await ask(server, key, user("hello there"), headers={"x-strata-cache": "semantik"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "x-strata-cache" and "semantik" in err["message"]


def test_forget_erases_a_users_entries(
    server: ServerThread,
    key: NewKey,
    redis_url: str,
    database_url: str,
    monkeypatch: Any,
) -> None:
    from typer.testing import CliRunner

    from strata.cli.main import app

    async def run(text: str) -> str:
        r = await ask(server, key, user(text))
        await settle(server)
        return r.headers["x-strata-cache"]

    assert asyncio.run(run("How do I boil an egg?")) == "miss"
    assert asyncio.run(run("How do I boil an egg?")) == "hit-exact"
    monkeypatch.setenv("STRATA_DATABASE_URL", database_url)
    monkeypatch.setenv("STRATA_REDIS_URL", redis_url)
    runner = CliRunner()
    stats = runner.invoke(app, ["cache", "stats"], catch_exceptions=False)
    assert stats.exit_code == 0 and "semantic" in stats.stdout and key.tenant_id in stats.stdout
    out = runner.invoke(
        app,
        ["cache", "forget", "--tenant", key.tenant_id, "--user", key.user_id],
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.stdout
    assert "forgot 1 exact and 1 semantic" in out.stdout
    assert asyncio.run(run("how do i boil an egg")) == "miss"
