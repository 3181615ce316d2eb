"""Authentication, error shape and status codes: nothing a client sends yields a 500."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import openai
import pytest
import redis

from strata.security.auth import REVOKED_CHANNEL
from strata.security.keys import hash_key
from strata.storage.engine import make_engine
from strata.storage.repositories import keys as key_repo
from tests.conftest import ServerThread

MSG = [{"role": "user", "content": "hi"}]


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def post(
    server: ServerThread, path: str, key: str | None, headers: dict | None = None, **kwargs: object
) -> httpx.Response:
    headers = {**(headers or {}), **({"authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(server.base_url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_missing_key_is_401(server: ServerThread) -> None:
    r = post(server, "/v1/chat/completions", None, json={"model": "fake", "messages": MSG})
    assert r.status_code == 401
    assert error_of(r)["type"] == "authentication_error"


def test_wrong_key_is_401_and_not_echoed(server: ServerThread) -> None:
    bogus = "sk-strata-" + "x" * 43
    r = post(server, "/v1/chat/completions", bogus, json={"model": "fake", "messages": MSG})
    assert r.status_code == 401
    assert bogus not in r.text


def test_openai_sdk_sees_authentication_error(
    server: ServerThread, sdk: Callable[..., openai.OpenAI]
) -> None:
    c = sdk(server, "sk-strata-" + "y" * 43)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MSG}, "model"),
        ({"model": "fake"}, "messages"),
        ({"model": "fake", "messages": []}, "messages"),
        ({"model": "fake", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "fake", "messages": MSG, "temperature": 7}, "temperature"),
        ({"model": "fake", "messages": MSG, "top_p": -1}, "top_p"),
        ({"model": "fake", "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"model": "fake", "messages": MSG, "max_tokens": "many"}, "max_tokens"),
        ({"model": "fake", "messages": MSG, "stream": "yes please"}, "stream"),
        ({"model": "fake", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "fake", "messages": "hello"}, "messages"),
        ({"model": 42, "messages": MSG}, "model"),
    ],
)
def test_invalid_parameters_are_400_naming_the_parameter(
    server: ServerThread, api_key: key_repo.NewKey, body: dict, param: str
) -> None:
    r = post(server, "/v1/chat/completions", api_key.key, json=body)
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[1, 2]", b"null", b"\xff\xfe", b'"just a string"', b"{" * 10000],
)
def test_malformed_bodies_are_400(
    server: ServerThread, api_key: key_repo.NewKey, raw: bytes
) -> None:
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        r = post(
            server, path, api_key.key, content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, (path, raw[:20], r.text)
        error_of(r)


def test_body_too_large_is_413(
    start_server: Callable[..., ServerThread], api_key: key_repo.NewKey
) -> None:
    srv = start_server(max_body_bytes=2048)
    big = {"model": "fake", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = post(srv, "/v1/chat/completions", api_key.key, json=big)
    assert r.status_code == 413
    assert error_of(r)["code"] == "request_too_large"

    # Without Content-Length (chunked upload), the limit still holds.
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 1000

    r = post(srv, "/v1/chat/completions", api_key.key, content=chunks())
    assert r.status_code == 413


def test_unknown_route_is_404_in_openai_shape(
    server: ServerThread, api_key: key_repo.NewKey
) -> None:
    r = post(server, "/v1/nothing-here", api_key.key, json={})
    assert r.status_code == 404
    assert error_of(r)["code"] == "unknown_url"


def test_wrong_method_is_405_in_openai_shape(
    server: ServerThread, api_key: key_repo.NewKey
) -> None:
    r = httpx.get(
        server.base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {api_key.key}"}
    )
    assert r.status_code == 405
    error_of(r)


def test_request_id_is_echoed_or_generated(server: ServerThread, api_key: key_repo.NewKey) -> None:
    rid = "test-" + uuid.uuid4().hex
    r = post(
        server,
        "/v1/chat/completions",
        api_key.key,
        json={"model": "fake", "messages": MSG},
        headers={"x-request-id": rid},
    )
    assert r.headers["x-request-id"] == rid
    r = post(server, "/v1/chat/completions", None, json={})
    assert len(r.headers["x-request-id"]) == 32
    # An unsafe id (log injection) is replaced, not echoed.
    for bad in ('a b"c', "x" * 300):
        r = httpx.get(server.base_url + "/healthz", headers={"x-request-id": bad})
        assert r.headers["x-request-id"] != bad


def test_revoked_key_stops_working_within_seconds(
    server: ServerThread,
    new_key: Callable[..., key_repo.NewKey],
    database_url: str,
    redis_url: str,
    sdk: Callable[..., openai.OpenAI],
) -> None:
    import asyncio

    k = new_key(tenant="acme", user="revokee")
    c = sdk(server, k.key)
    c.chat.completions.create(model="fake", messages=MSG)  # cached as valid now

    async def revoke() -> None:
        engine = make_engine(database_url, pool_size=1)
        try:
            assert await key_repo.revoke_key(engine, k.id) == hash_key(k.key)
        finally:
            await engine.dispose()

    asyncio.run(revoke())
    with redis.Redis.from_url(redis_url) as r:
        r.publish(REVOKED_CHANNEL, hash_key(k.key))
    deadline = time.monotonic() + 3
    while True:
        try:
            c.chat.completions.create(model="fake", messages=MSG)
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "revoked key still accepted"
        time.sleep(0.1)
