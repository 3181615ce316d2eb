"""Exactly one usage record per request, whatever its outcome; GET /v1/usage."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

import httpx
import openai
import pytest

from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread, usage_rows

MSG = [{"role": "user", "content": "one two three four"}]


def rid() -> str:
    return "t-" + uuid.uuid4().hex


async def test_success_is_recorded_with_cost(
    client: openai.OpenAI, api_key: NewKey, database_url: str
) -> None:
    r_id = rid()
    r = client.chat.completions.create(
        model="fake", messages=MSG, extra_headers={"x-request-id": r_id}
    )
    [row] = await usage_rows(database_url, r_id)
    assert row.status == "ok" and row.status_code == 200
    assert (row.tenant_id, row.user_id, row.key_id) == (
        api_key.tenant_id,
        api_key.user_id,
        api_key.id,
    )
    assert (row.alias, row.provider, row.model) == ("fake", "fake", "fake-1")
    assert r.usage is not None
    assert row.prompt_tokens == r.usage.prompt_tokens == 4
    assert row.completion_tokens == r.usage.completion_tokens
    # fake is priced at $1 / $2 per 1M input / output tokens.
    expected = (Decimal(4) * 1 + Decimal(row.completion_tokens) * 2) / 1_000_000
    assert row.cost_usd == expected
    assert row.latency_ms > 0 and row.ttft_ms is not None and not row.stream


async def test_stream_is_recorded_once(client: openai.OpenAI, database_url: str) -> None:
    r_id = rid()
    list(
        client.chat.completions.create(
            model="fake", messages=MSG, stream=True, extra_headers={"x-request-id": r_id}
        )
    )
    [row] = await usage_rows(database_url, r_id)
    assert row.stream and row.status == "ok" and row.completion_tokens > 0 and row.cost_usd > 0


async def test_provider_failure_is_recorded(client: openai.OpenAI, database_url: str) -> None:
    r_id = rid()
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="fake-down", messages=MSG, extra_headers={"x-request-id": r_id}
        )
    [row] = await usage_rows(database_url, r_id)
    assert row.status == "error" and row.status_code == 503
    assert row.error_type == "ProviderUnavailable" and row.cost_usd == 0


async def test_invalid_request_is_recorded(client: openai.OpenAI, database_url: str) -> None:
    r_id = rid()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="fake", messages=MSG, temperature=9, extra_headers={"x-request-id": r_id}
        )
    [row] = await usage_rows(database_url, r_id)
    assert row.status == "error" and row.status_code == 400


async def test_embeddings_are_recorded(client: openai.OpenAI, database_url: str) -> None:
    r_id = rid()
    client.embeddings.create(
        model="embed-default", input=["a b c"], extra_headers={"x-request-id": r_id}
    )
    [row] = await usage_rows(database_url, r_id)
    assert row.endpoint == "embeddings" and row.prompt_tokens == 5  # [CLS] a b c [SEP]


async def test_cancelled_stream_is_recorded_and_stops_upstream(
    server: ServerThread, api_key: NewKey, database_url: str
) -> None:
    r_id = rid()
    body = {"model": "fake-slow", "messages": MSG, "stream": True}
    headers = {"authorization": f"Bearer {api_key.key}", "x-request-id": r_id}
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream(
            "POST", server.base_url + "/v1/chat/completions", json=body, headers=headers
        ) as resp,
    ):
        assert resp.status_code == 200
        lines = 0
        async for line in resp.aiter_lines():
            lines += line.startswith("data:")
            if lines >= 5:
                break
    [row] = await usage_rows(database_url, r_id)
    assert row.status == "cancelled" and row.stream
    # 200 words at 50 ms each would take 10 s; we left after about 5.
    assert 0 < row.completion_tokens < 50
    assert row.latency_ms < 5000


def test_usage_endpoint_scopes_to_the_caller(
    server: ServerThread, new_key: Callable[..., NewKey], sdk: Callable[..., openai.OpenAI]
) -> None:
    tenant = "tenant-" + uuid.uuid4().hex[:8]
    bob = new_key(tenant=tenant, user="bob")
    carol = new_key(tenant=tenant, user="carol")
    admin = new_key(tenant=tenant, user="root", is_admin=True)
    outsider = new_key(tenant="other-" + uuid.uuid4().hex[:8], user="bob")

    for _ in range(3):
        sdk(server, bob.key).chat.completions.create(model="fake", messages=MSG)
    sdk(server, carol.key).chat.completions.create(model="fake", messages=MSG)
    sdk(server, outsider.key).chat.completions.create(model="fake", messages=MSG)

    def usage(k: NewKey, **params: str) -> httpx.Response:
        return httpx.get(
            server.base_url + "/v1/usage",
            params=params,
            headers={"authorization": f"Bearer {k.key}"},
        )

    mine = usage(bob).json()
    assert mine["total_requests"] == 3
    assert {d["user"] for d in mine["data"]} == {"bob"}
    assert Decimal(mine["total_cost_usd"]) > 0
    assert usage(bob, user="carol").status_code == 403
    everyone = usage(admin).json()
    assert everyone["total_requests"] == 4  # the outsider's tenant is invisible
    assert usage(admin, user="carol").json()["total_requests"] == 1
    assert usage(admin, model="default").json()["total_requests"] == 0
    assert usage(bob, start="2000-01-01", end="2000-01-02").json()["total_requests"] == 0
    assert usage(bob, start="2030-01-02", end="2030-01-01").status_code == 400
    assert usage(bob, day="not-a-date").status_code == 400
