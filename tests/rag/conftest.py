"""RAG test helpers: HTTP calls with a key, a fresh tenant, a collection per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread

BASE = "/v1/rag/collections"


def call(server: ServerThread, key: NewKey, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(
        method,
        server.base_url + path,
        headers={"authorization": f"Bearer {key.key}", **kw.pop("headers", {})},
        timeout=120,
        **kw,
    )


@pytest.fixture(scope="module")
def tenant_key(new_key: Callable[..., NewKey]) -> NewKey:
    return new_key(tenant="rag-" + uuid.uuid4().hex[:10], user="writer-" + uuid.uuid4().hex[:6])


@pytest.fixture
def collection(server: ServerThread, tenant_key: NewKey) -> dict[str, Any]:
    r = call(server, tenant_key, "POST", BASE, json={"name": "c-" + uuid.uuid4().hex[:10]})
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def add(
    server: ServerThread, key: NewKey, col: dict[str, Any], *docs: dict[str, Any]
) -> list[dict[str, Any]]:
    r = call(server, key, "POST", f"{BASE}/{col['id']}/documents", json={"documents": list(docs)})
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()["data"]
    return data


def search(
    server: ServerThread, key: NewKey, col: dict[str, Any], query: str, **kw: Any
) -> list[dict[str, Any]]:
    r = call(server, key, "POST", f"{BASE}/{col['id']}/search", json={"query": query, **kw})
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()["data"]
    return data
