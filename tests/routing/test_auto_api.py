"""The 'auto' alias end to end: scoring, forced tiers, stickiness, per-key switch."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from strata.storage.repositories.keys import NewKey
from tests.conftest import TEST_CONFIG, ServerThread, usage_rows

SIMPLE = "What is the capital of France?"
HARD = (
    "Design a distributed rate limiter in Python for a multi-region API gateway. "
    "First explain the trade-offs between token bucket and GCRA, then write the code "
    "with Redis Lua scripts, then prove that concurrent requests cannot exceed the limit, "
    "and finally give a step by step test plan as a JSON table."
)


@pytest.fixture(scope="module")
def auto_server(start_server: Callable[..., ServerThread]) -> ServerThread:
    providers = {
        **TEST_CONFIG["providers"],
        "cheap": {"type": "fake", "reply": "cheap answer"},
        "strong": {"type": "fake", "reply": "strong answer"},
    }
    models = {
        **TEST_CONFIG["models"],
        "cheap-tier": {"provider": "cheap", "model": "small"},
        "strong-tier": {"provider": "strong", "model": "large"},
        "auto": {"route": {"cheap": "cheap-tier", "strong": "strong-tier", "threshold": 0.5}},
        "auto-features": {
            "route": {"cheap": "cheap-tier", "strong": "strong-tier", "embeddings": None}
        },
    }
    return start_server(providers=providers, models=models)


async def ask(
    srv: ServerThread, key: NewKey, messages: list[dict[str, Any]], model: str = "auto", **kw: Any
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key.key}", **kw.pop("headers", {})}
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(
            srv.base_url + "/v1/chat/completions",
            json={"model": model, "messages": messages, **kw},
            headers=headers,
        )


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text + " " + uuid.uuid4().hex[:6]}


@pytest.mark.parametrize("model", ["auto", "auto-features"])
async def test_simple_goes_cheap_and_hard_goes_strong(
    auto_server: ServerThread, api_key: NewKey, model: str
) -> None:
    easy = await ask(auto_server, api_key, [user(SIMPLE)], model)
    hard = await ask(auto_server, api_key, [user(HARD)], model)
    assert easy.status_code == 200 and hard.status_code == 200, (easy.text, hard.text)
    assert easy.json()["choices"][0]["message"]["content"] == "cheap answer"
    assert hard.json()["choices"][0]["message"]["content"] == "strong answer"
    assert easy.headers["x-strata-route"].startswith("cheap; reason=score; score=")
    assert hard.headers["x-strata-route"].startswith("strong; reason=score; score=")
    assert hard.headers["x-strata-model"] == "strong/large"


async def test_decision_is_on_the_usage_record(
    auto_server: ServerThread, api_key: NewKey, database_url: str
) -> None:
    rid = "auto-" + uuid.uuid4().hex
    r = await ask(auto_server, api_key, [user(HARD)], headers={"x-request-id": rid})
    assert r.status_code == 200
    [row] = await usage_rows(database_url, rid)
    assert row.alias == "auto" and row.provider == "strong" and row.model == "large"
    assert row.route.startswith("strong:score:")


async def test_forced_tiers(auto_server: ServerThread, api_key: NewKey) -> None:
    r = await ask(auto_server, api_key, [user(HARD)], headers={"x-strata-tier": "cheap"})
    assert r.headers["x-strata-route"] == "cheap; reason=forced"
    r = await ask(auto_server, api_key, [user(SIMPLE)], metadata={"strata_tier": "strong"})
    assert r.headers["x-strata-route"] == "strong; reason=forced"
    r = await ask(auto_server, api_key, [user(SIMPLE)], headers={"x-strata-tier": "medium"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-strata-tier"


async def test_an_escalated_conversation_stays_strong(
    auto_server: ServerThread, api_key: NewKey
) -> None:
    first = user(HARD)
    r1 = await ask(auto_server, api_key, [first])
    assert r1.headers["x-strata-route"].startswith("strong")
    follow_up = [first, {"role": "assistant", "content": "Here it is."}, user("Thanks! Shorter?")]
    r2 = await ask(auto_server, api_key, follow_up)
    assert r2.headers["x-strata-route"] == "strong; reason=sticky"
    # Another conversation with the same simple follow-up is scored on its own.
    other = [user("Say hi."), {"role": "assistant", "content": "Hi."}, user("Thanks! Shorter?")]
    r3 = await ask(auto_server, api_key, other)
    assert r3.headers["x-strata-route"].startswith("cheap; reason=score")


async def test_operator_can_turn_routing_off_per_key(
    auto_server: ServerThread, new_key: Callable[..., NewKey], database_url: str
) -> None:
    from strata.storage.engine import make_engine
    from strata.storage.repositories import keys as key_repo

    key = new_key(tenant="acme", user="no-routing")
    engine = make_engine(database_url, pool_size=1)
    try:
        assert await key_repo.set_auto_routing(engine, key.id, False)
    finally:
        await engine.dispose()
    r = await ask(auto_server, key, [user(HARD)])
    assert r.status_code == 200
    assert r.headers["x-strata-route"] == "cheap; reason=disabled"


async def test_models_lists_the_route(auto_server: ServerThread, api_key: NewKey) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            auto_server.base_url + "/v1/models/auto",
            headers={"authorization": f"Bearer {api_key.key}"},
        )
    assert r.json()["route"]["strong"] == "strong-tier"
    assert r.json()["deployments"] == []


def test_route_config_errors_name_the_path() -> None:
    from strata.errors import ConfigError
    from strata.settings import load_settings

    with pytest.raises(ConfigError, match=r"models\.auto\.route\.strong"):
        load_settings(
            None,
            providers={"p": {"type": "fake"}},
            models={
                "c": {"provider": "p", "model": "m"},
                "auto": {"route": {"cheap": "c", "strong": "nope", "embeddings": None}},
            },
        )
