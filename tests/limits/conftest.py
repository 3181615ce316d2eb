"""Fixtures for limits tests: real Redis, a unique key prefix per test, injected
clocks, clients that count their round trips, and a TCP proxy that can "stop" Redis.

Redis: STRATA_TEST_REDIS_URL, else redis://127.0.0.1:6379/0, else the session's
embedded Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def limits_redis_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("STRATA_TEST_REDIS_URL")
    if url:
        return url
    if _reachable(LOCAL_REDIS):
        return LOCAL_REDIS
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def make_redis(
    limits_redis_url: str,
) -> AsyncIterator[Callable[..., aioredis.Redis]]:
    """New clients (each its own pool: separate "servers"); closed after the test."""
    made: list[aioredis.Redis] = []

    def make(url: str | None = None, **kwargs: Any) -> aioredis.Redis:
        r = aioredis.from_url(url or limits_redis_url, **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        await r.aclose()


@pytest.fixture
async def prefix(limits_redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    p = f"test:{uuid.uuid4().hex[:12]}"
    yield p
    r = aioredis.from_url(limits_redis_url)
    try:
        keys = [k async for k in r.scan_iter(match=p + ":*", count=1000)]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


def count_calls(r: aioredis.Redis) -> list[str]:
    """Record the name of every command ``r`` sends (one entry per round trip)."""
    calls: list[str] = []
    original = r.execute_command

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]).upper())
        return await original(*args, **kwargs)

    r.execute_command = counted  # type: ignore[method-assign]
    return calls


class Clock:
    """Seconds since the epoch, moved by hand (``time.time`` for tests)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class DateClock:
    """An aware UTC datetime, moved by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


class Proxy:
    """A TCP relay in front of Redis: ``stop()`` is Redis going away, ``start()`` back."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._parts = parts
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # True: Redis gets every command, its replies are dropped (a reply lost).
        self.muted = False

    @property
    def url(self) -> str:
        auth = self._parts.netloc.rpartition("@")[0]
        netloc = (auth + "@" if auth else "") + f"127.0.0.1:{self.port}"
        return urlunsplit(self._parts._replace(netloc=netloc))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in list(self._writers):
            with contextlib.suppress(ConnectionError, OSError):
                await w.wait_closed()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        for r, w, replies in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.create_task(self._pipe(r, w, replies))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if replies and self.muted:
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def proxy(limits_redis_url: str) -> AsyncIterator[Proxy]:
    p = Proxy(limits_redis_url)
    await p.start()
    yield p
    await p.stop()


def count_round_trips(r: aioredis.Redis) -> list[list[str]]:
    """Record every network write of ``r``'s connections: one entry per round trip
    (a pipeline is one), holding the names of the commands it carried."""
    trips: list[list[str]] = []
    pool = r.connection_pool
    original_get = pool.get_connection

    def counted(conn: Any) -> Any:
        send = conn.send_packed_command
        if getattr(send, "_counted", False):
            return conn

        async def send_packed_command(command: Any, *args: Any, **kwargs: Any) -> Any:
            raw = command if isinstance(command, bytes) else b"".join(command)
            trips.append(_command_names(raw))
            return await send(command, *args, **kwargs)

        send_packed_command._counted = True  # type: ignore[attr-defined]
        conn.send_packed_command = send_packed_command
        return conn

    async def get_connection(*args: Any, **kwargs: Any) -> Any:
        return counted(await original_get(*args, **kwargs))

    pool.get_connection = get_connection  # type: ignore[method-assign]
    return trips


def _command_names(raw: bytes) -> list[str]:
    """The command names in RESP bytes (``*<n>`` then n ``$<len>`` bulk strings each)."""
    names, i = [], 0
    while i < len(raw):
        end = raw.index(b"\r\n", i)
        count = int(raw[i + 1 : end])
        i = end + 2
        args = []
        for _ in range(count):
            end = raw.index(b"\r\n", i)
            size = int(raw[i + 1 : end])
            args.append(raw[end + 2 : end + 2 + size])
            i = end + 2 + size + 2
        name = args[0].decode().upper()
        if name == "SCRIPT":
            name += " " + args[1].decode().upper()
        names.append(name)
    return names
