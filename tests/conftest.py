"""Shared fixtures: real PostgreSQL and Redis, and a real Strata server on loopback.

PostgreSQL: embedded (pgserver, pgvector) in a fresh temp dir per session, or
STRATA_TEST_DATABASE_URL. Redis: STRATA_TEST_REDIS_URL (CI uses the machine's),
else embedded. The server runs in a thread on a free port; API tests talk to it
with the official openai SDK.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import uvicorn

from strata.app import create_app
from strata.security.keys import Principal
from strata.settings import Settings, load_settings
from strata.storage import migrate
from strata.storage.embedded import EmbeddedPostgres, EmbeddedRedis
from strata.storage.engine import make_engine
from strata.storage.repositories import keys as key_repo

# Real and scripted upstreams (llama.cpp server, aiohttp scripts), for any test.
pytest_plugins = ["tests.upstreams"]

# One master key for every server of the session (they share one database; with a
# key per data dir, each would refuse the others' data keys, as separate instances
# without a shared crypto.master_key do).
os.environ.setdefault("STRATA_TEST_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())

# Models every test server knows: the embedded defaults plus scripted fakes.
TEST_CONFIG: dict[str, Any] = {
    "providers": {
        "local": {"type": "local_llama"},
        "local-embed": {"type": "local_embed"},
        "fake": {"type": "fake", "price": {"input_per_1m": "1.00", "output_per_1m": "2.00"}},
        "fake-slow": {"type": "fake", "chunk_delay_s": 0.05, "reply": " ".join(["word"] * 200)},
        "fake-down": {"type": "fake", "error_status": 503},
    },
    "models": {
        # Uncached: tests of the real model must reach the model every time.
        "default": {
            "provider": "local",
            "model": "smollm2-135m-instruct",
            "cache": {"enabled": False},
        },
        "embed-default": {
            "kind": "embedding",
            "provider": "local-embed",
            "model": "all-minilm-l6-v2",
        },
        "fake": {"provider": "fake", "model": "fake-1"},
        "fake-sem": {"provider": "fake", "model": "fake-1", "cache": {"semantic": True}},
        "fake-sem-turns": {
            "provider": "fake",
            "model": "fake-1",
            "cache": {"semantic": True, "multi_turn": True},
        },
        "fake-slow": {"provider": "fake-slow", "model": "fake-slow-1"},
        "fake-down": {"provider": "fake-down", "model": "fake-down-1"},
    },
    # Flush usage often so tests can read their records quickly.
    "usage": {"flush_interval_s": 0.1},
    # Limits stay on (every request takes the limiter's path) but do not throttle
    # the suite, whose tests share a few users; tests of limits set their own.
    "limits": {"user": {"requests_per_second": 1000}},
    "crypto": {"master_key": "env:STRATA_TEST_MASTER_KEY"},
    # No job worker in test servers: servers of every module share one Redis, and a
    # batch must run on the server (settings) its test made. Batch tests start
    # servers with a worker on a queue of their own.
    "jobs": {"embedded_worker": False},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("STRATA_TEST_DATABASE_URL")
    if url:
        migrate.upgrade(url)
        yield url
        return
    # A fresh cluster per session: concurrent sessions never share one.
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("services"))
    url = pg.start()
    migrate.upgrade(url)
    yield url
    pg.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("STRATA_TEST_REDIS_URL")
    if url:
        yield url
        return
    rd = EmbeddedRedis(tmp_path_factory.mktemp("services"))
    yield rd.start()
    rd.stop()


@pytest.fixture(scope="session")
def settings_factory(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        data = {"database_url": database_url, "redis_url": redis_url, **TEST_CONFIG, **overrides}
        data.setdefault("data_dir", tmp_path_factory.mktemp("data"))
        return load_settings(None, **data)

    return make


class ServerThread:
    """A real uvicorn server for one app, on a free loopback port, in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_config=None, access_log=False
        )
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve())
        finally:
            self.loop.close()

    def call(self, coro: Any, timeout_s: float = 30.0) -> Any:
        """Run a coroutine on the server's event loop (its runtime lives there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def acall(self, coro: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime


@pytest.fixture(scope="session")
def server(settings_factory: Callable[..., Settings]) -> Iterator[ServerThread]:
    srv = ServerThread(settings_factory()).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def start_server(
    settings_factory: Callable[..., Settings],
) -> Iterator[Callable[..., ServerThread]]:
    """Start an extra server with settings overrides; stopped at session end."""
    started: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        srv = ServerThread(settings_factory(**overrides)).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def _create_key(database_url: str, **kwargs: Any) -> key_repo.NewKey:
    async def run() -> key_repo.NewKey:
        engine = make_engine(database_url, pool_size=1)
        try:
            return await key_repo.create_key(engine, **kwargs)
        finally:
            await engine.dispose()

    # A thread of its own, so sync and async tests can both call it.
    out: list[key_repo.NewKey] = []
    t = threading.Thread(target=lambda: out.append(asyncio.run(run())))
    t.start()
    t.join(60)
    return out[0]


@pytest.fixture(scope="session")
def new_key(database_url: str) -> Callable[..., key_repo.NewKey]:
    """Create keys in the test database: new_key(tenant="t", user="u", is_admin=False)."""

    def make(
        tenant: str = "acme", user: str | None = None, is_admin: bool = False
    ) -> key_repo.NewKey:
        user = user or "user-" + os.urandom(4).hex()
        return _create_key(database_url, tenant_id=tenant, user_id=user, is_admin=is_admin)

    return make


@pytest.fixture(scope="session")
def api_key(new_key: Callable[..., key_repo.NewKey]) -> key_repo.NewKey:
    return new_key(tenant="acme", user="alice")


@pytest.fixture
def sdk() -> Iterator[Callable[[ServerThread, str], openai.OpenAI]]:
    """openai.OpenAI clients for a server and key, closed after the test."""
    made: list[openai.OpenAI] = []

    def make(server: ServerThread, key: str) -> openai.OpenAI:
        c = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def client(
    server: ServerThread,
    api_key: key_repo.NewKey,
    sdk: Callable[[ServerThread, str], openai.OpenAI],
) -> openai.OpenAI:
    return sdk(server, api_key.key)


async def usage_rows(
    database_url: str, request_id: str, *, want: int = 1, wait_s: float = 10.0
) -> list[Any]:
    """Usage rows for a request id, waiting (bounded) for the background flush."""
    from sqlalchemy import select

    from strata.storage.models import UsageRecord

    engine = make_engine(database_url, pool_size=1)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(UsageRecord).where(UsageRecord.request_id == request_id)
                    )
                ).all()
            if len(rows) >= want or time.monotonic() > deadline:
                return list(rows)
            await asyncio.sleep(0.1)
    finally:
        await engine.dispose()


def principal_of(key: key_repo.NewKey) -> Principal:
    return Principal(
        key_id=key.id, tenant_id=key.tenant_id, user_id=key.user_id, is_admin=key.is_admin
    )
