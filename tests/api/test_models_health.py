"""Model listing and health endpoints."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import TEST_CONFIG, ServerThread


def test_models_list_shows_configured_aliases(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == list(TEST_CONFIG["models"])


def test_models_retrieve(client: openai.OpenAI) -> None:
    assert client.models.retrieve("default").id == "default"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_healthz_needs_no_key(server: ServerThread) -> None:
    r = httpx.get(server.base_url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_readyz_checks_database_redis_and_models(server: ServerThread) -> None:
    # Models load in the background after start-up; readiness waits for them.
    deadline = time.monotonic() + 120
    while (r := httpx.get(server.base_url + "/readyz")).status_code != 200:
        assert r.status_code == 503 and "loading" in r.text, r.text
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    checks = r.json()["checks"]
    assert checks == {
        "database": "ok",
        "redis": "ok",
        "model:default": "ok",
        "model:embed-default": "ok",
    }


def test_readyz_is_503_when_redis_is_unreachable(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(redis_url="redis://127.0.0.1:1/0")
    r = httpx.get(srv.base_url + "/readyz", timeout=10)
    assert r.status_code == 503
    assert r.json()["checks"]["redis"].startswith("unavailable")
    # Liveness is unaffected.
    assert httpx.get(srv.base_url + "/healthz").status_code == 200
