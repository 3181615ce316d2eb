"""Hardening basics: security headers, CORS (closed by default), strict JSON,
login-free routes limited to health and metrics, the metrics token."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from strata.api.middleware import RequestContextMiddleware
from strata.security.hardening import CorsSettings, HardeningSettings, token_matches
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread

PUBLIC = {"/healthz", "/readyz", "/metrics"}
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
ALLOWED = "https://app.example.com"


def assert_security_headers(r: httpx.Response) -> None:
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-request-id"]


def no_cors(r: httpx.Response) -> None:
    assert not [h for h in r.headers if h.startswith("access-control-")], dict(r.headers)


@pytest.mark.parametrize(
    ("method", "path", "auth", "body", "status"),
    [
        ("POST", "/v1/chat/completions", True, CHAT, 200),  # fast lane
        ("POST", "/v1/chat/completions", False, CHAT, 401),  # fast lane, error
        ("GET", "/v1/models", True, None, 200),  # FastAPI
        ("GET", "/v1/models", False, None, 401),
        ("GET", "/healthz", False, None, 200),
        ("GET", "/nope", False, None, 404),
    ],
)
def test_every_response_has_security_headers(
    server: ServerThread,
    api_key: NewKey,
    method: str,
    path: str,
    auth: bool,
    body: Any,
    status: int,
) -> None:
    headers = {"authorization": f"Bearer {api_key.key}"} if auth else {}
    r = httpx.request(method, server.base_url + path, json=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert_security_headers(r)


def test_a_too_large_body_is_413_with_headers(server: ServerThread, api_key: NewKey) -> None:
    big = b"x" * (server.settings.max_body_bytes + 1)
    r = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=big,
        headers={"authorization": f"Bearer {api_key.key}"},
        timeout=30,
    )
    assert r.status_code == 413
    assert_security_headers(r)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/models"])
def test_cors_is_closed_by_default(server: ServerThread, api_key: NewKey, path: str) -> None:
    pre = httpx.options(
        server.base_url + path,
        headers={"origin": ALLOWED, "access-control-request-method": "POST"},
        timeout=30,
    )
    assert pre.status_code != 204
    no_cors(pre)
    r = httpx.get(
        server.base_url + "/v1/models",
        headers={"origin": ALLOWED, "authorization": f"Bearer {api_key.key}"},
        timeout=30,
    )
    no_cors(r)


@pytest.fixture(scope="module")
def hardened(
    server: ServerThread,
    start_server: Callable[..., ServerThread],
    tmp_path_factory: pytest.TempPathFactory,
) -> ServerThread:
    token = tmp_path_factory.mktemp("metrics") / "token"
    token.write_text("metrics-secret-123\n")
    return start_server(
        # The same data dir as the session server: one local master key, so both
        # servers can open the data keys they share in the database.
        data_dir=server.settings.data_dir,
        hardening={
            "cors": {"allow_origins": [ALLOWED, "https://other.example.com/"]},
            "metrics_token": f"file:{token}",
        },
    )


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/v1/admin/keys"])
def test_cors_preflight_for_an_allowed_origin(hardened: ServerThread, path: str) -> None:
    r = httpx.options(
        hardened.base_url + path,
        headers={
            "origin": ALLOWED,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
        timeout=30,
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in r.headers
    assert r.headers["vary"] == "origin"
    assert_security_headers(r)


def test_cors_disallowed_origin_gets_no_cors_headers(hardened: ServerThread) -> None:
    for origin in ("https://evil.example.com", "null", ALLOWED + ".evil.com"):
        pre = httpx.options(
            hardened.base_url + "/v1/chat/completions",
            headers={"origin": origin, "access-control-request-method": "POST"},
            timeout=30,
        )
        assert pre.status_code != 204
        no_cors(pre)


def test_cors_actual_requests_fast_lane_and_fastapi(
    hardened: ServerThread, new_key: Callable[..., NewKey]
) -> None:
    key = new_key(tenant="cors", user="web")
    auth = {"authorization": f"Bearer {key.key}"}
    chat = httpx.post(
        hardened.base_url + "/v1/chat/completions",
        json=CHAT,
        headers={**auth, "origin": "https://other.example.com"},
        timeout=30,
    )
    assert chat.status_code == 200
    assert chat.headers["access-control-allow-origin"] == "https://other.example.com"
    assert "x-request-id" in chat.headers["access-control-expose-headers"]
    models = httpx.get(hardened.base_url + "/v1/models", headers={**auth, "origin": ALLOWED})
    assert models.headers["access-control-allow-origin"] == ALLOWED
    assert "access-control-allow-methods" not in models.headers  # only on preflights
    evil = httpx.get(
        hardened.base_url + "/v1/models", headers={**auth, "origin": "https://evil.example"}
    )
    assert evil.status_code == 200
    no_cors(evil)


def test_metrics_token(hardened: ServerThread, server: ServerThread) -> None:
    url = hardened.base_url + "/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert "metrics-secret" not in httpx.get(url).text
    ok = httpx.get(url, headers={"authorization": "Bearer metrics-secret-123"})
    assert ok.status_code == 200 and "strata_" in ok.text
    assert httpx.get(server.base_url + "/metrics").status_code == 200  # no token: open


def test_metrics_token_guards_the_separate_metrics_port(
    server: ServerThread,
    start_server: Callable[..., ServerThread],
    tmp_path: Path,
) -> None:
    from tests.upstreams import free_port

    token = tmp_path / "token"
    token.write_text("port-secret-456\n")
    port = free_port()
    start_server(
        data_dir=server.settings.data_dir,
        observability={"metrics": {"port": port}},
        hardening={"metrics_token": f"file:{token}"},
    )
    url = f"http://127.0.0.1:{port}/metrics"
    denied = httpx.get(url, timeout=30)
    assert denied.status_code == 401
    assert denied.json()["error"]["type"] == "authentication_error"
    assert "port-secret" not in denied.text
    assert httpx.get(url, headers={"authorization": "Bearer nope"}, timeout=30).status_code == 401
    ok = httpx.get(url, headers={"authorization": "Bearer port-secret-456"}, timeout=30)
    assert ok.status_code == 200 and "strata_" in ok.text


def test_token_matches() -> None:
    assert token_matches("Bearer abc", "abc") and token_matches("bearer  abc ", "abc")
    assert not token_matches("Bearer abd", "abc") and not token_matches(None, "abc")
    assert not token_matches("Basic abc", "abc") and not token_matches("Bearer ", "abc")


def test_wildcard_origin_with_credentials_is_refused() -> None:
    with pytest.raises(ValueError, match="allow_credentials"):
        CorsSettings(allow_origins=["*"], allow_credentials=True)


async def test_credentials_echo_the_origin_never_a_wildcard() -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    hardening = HardeningSettings(
        cors=CorsSettings(allow_origins=[ALLOWED], allow_credentials=True)
    )
    mw = RequestContextMiddleware(app, 1000, hardening)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "headers": [(b"origin", ALLOWED.encode())],
    }
    await mw(scope, receive, send)
    headers = dict(sent[0]["headers"])
    assert headers[b"access-control-allow-origin"] == ALLOWED.encode()
    assert headers[b"access-control-allow-credentials"] == b"true"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "fake", "messages": [], "temperature": NaN}',
        b'{"model": "fake", "messages": [], "temperature": Infinity}',
        b'{"model": "fake", "messages": [],}',
        b'{"model": "fake", /* c */ "messages": []}',
        b'{"model": "\xff"}',
    ],
)
def test_strict_json_on_the_fast_lane(server: ServerThread, api_key: NewKey, raw: bytes) -> None:
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        r = httpx.post(
            server.base_url + path,
            content=raw,
            headers={"authorization": f"Bearer {api_key.key}"},
            timeout=30,
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_duplicate_keys_last_wins(server: ServerThread, api_key: NewKey) -> None:
    raw = (
        b'{"model": "no-such-model", "model": "fake",'
        b' "messages": [{"role": "user", "content": "hi"}]}'
    )
    r = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=raw,
        headers={"authorization": f"Bearer {api_key.key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def iter_routes(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, through included routers (FastAPI keeps
    them nested since 0.16x)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            more = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            yield from iter_routes(inner.routes, prefix + more)
        elif isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    yield method, prefix + route.path


def _every_route(srv: ServerThread) -> list[tuple[str, str]]:
    return sorted({*srv.app.fast_routes, *iter_routes(srv.app.routes)})


def test_only_health_and_metrics_are_login_free(server: ServerThread, tmp_path: Path) -> None:
    routes = _every_route(server)
    assert ("POST", "/v1/chat/completions") in routes and ("GET", "/v1/usage") in routes
    free = []
    for method, path in routes:
        url = re.sub(r"\{[^}]*\}", "x", path)
        body = b"{}" if method in ("POST", "PUT", "PATCH") else None
        r = httpx.request(method, server.base_url + url, content=body, timeout=30)
        if r.status_code != 401:
            free.append((method, path, r.status_code))
        if path not in PUBLIC:
            assert r.status_code == 401, f"{method} {path}: {r.status_code} {r.text[:200]}"
    assert {p for _, p, _ in free} <= PUBLIC, free
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert httpx.get(server.base_url + path).status_code == 404
