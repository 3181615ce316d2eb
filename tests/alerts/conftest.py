"""Local receivers for alerts: an aiohttp webhook server (also the fake Slack) and
an SMTP server (aiosmtpd), both on the test loop; dispatchers on real Redis and
PostgreSQL, closed after each test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.alerts.config import AlertsSettings
from strata.alerts.dispatcher import AlertDispatcher
from strata.storage.engine import make_engine
from tests.conftest import free_port


class Receiver:
    """Records JSON POSTs per path. ``fail[path] = n``: the first n POSTs get 503;
    ``status[path]``: every POST gets it; ``gate[path]``: POSTs wait for the event."""

    def __init__(self) -> None:
        self.posts: dict[str, list[Any]] = {}
        self.headers: dict[str, list[dict[str, str]]] = {}
        self.fail: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.gate: dict[str, asyncio.Event] = {}
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def handle(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = await request.json()
        if path in self.gate:
            await self.gate[path].wait()
        if self.fail.get(path, 0) > 0:
            self.fail[path] -= 1
            return web.Response(status=503)
        if path in self.status:
            return web.Response(status=self.status[path])
        self.posts.setdefault(path, []).append(body)
        self.headers.setdefault(path, []).append(dict(request.headers))
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        for ev in self.gate.values():
            ev.set()
        if self.runner is not None:
            await self.runner.cleanup()


class Mailbox:
    """aiosmtpd handler: keeps every accepted message."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        content = envelope.original_content or b""
        self.messages.append(message_from_bytes(content))
        return "250 OK"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(box, hostname="localhost"), "127.0.0.1", port)
    yield box, port
    server.close()
    await server.wait_closed()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    e = make_engine(database_url, pool_size=2)
    yield e
    await e.dispose()


@pytest.fixture
async def make_dispatcher(
    redis_url: str, database_url: str, engine: AsyncEngine
) -> AsyncIterator[Callable[..., AlertDispatcher]]:
    """make_dispatcher(settings, redis=None, database=None): one "instance" with its own Redis
    client and engine. All instances of one test share a Redis key prefix."""
    prefix = f"test:alert:{uuid.uuid4().hex[:8]}:"
    made: list[tuple[AlertDispatcher, Any, AsyncEngine]] = []

    def make(
        settings: AlertsSettings,
        *,
        redis: str | None = None,
        database: str | None = None,
        **kw: Any,
    ) -> AlertDispatcher:
        client = aioredis.from_url(redis or redis_url, socket_timeout=2, socket_connect_timeout=2)
        eng = make_engine(database or database_url, pool_size=2)
        d = AlertDispatcher(client, eng, settings, prefix=prefix, **kw)
        made.append((d, client, eng))
        return d

    yield make
    for d, client, eng in made:
        await d.aclose()
        await client.aclose()
        await eng.dispose()


def scope_id() -> str:
    """A budget owner no other test uses (the deliveries table is shared)."""
    return "u-" + uuid.uuid4().hex[:10]
