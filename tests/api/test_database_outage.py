"""PostgreSQL goes away mid-traffic: requests keep being served, no usage record is lost."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable
from typing import Any

import openai
from sqlalchemy.engine import make_url

from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread, free_port, usage_rows


class CuttableProxy:
    """A loopback TCP proxy to PostgreSQL that a test can cut and restore."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        host = url.query.get("host")
        self.unix = f"{host}/.s.PGSQL.{url.port or 5432}" if host else None
        self.target = (url.host or "127.0.0.1", url.port or 5432)
        self.port = free_port()
        self.url = url.set(host="127.0.0.1", port=self.port, query={}).render_as_string(
            hide_password=False
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def up(self) -> None:
        self._call(self._up())

    def down(self) -> None:
        self._call(self._down())

    def close(self) -> None:
        self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def _up(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.close()
        await asyncio.sleep(0.05)  # let the transports finish closing
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self._server is None:  # accepted just as the proxy went down
            writer.close()
            return
        try:
            if self.unix:
                up_reader, up_writer = await asyncio.open_unix_connection(self.unix)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_outage_keeps_serving_and_loses_nothing(
    start_server: Callable[..., ServerThread],
    new_key: Callable[..., NewKey],
    database_url: str,
    sdk: Callable[..., openai.OpenAI],
) -> None:
    proxy = CuttableProxy(database_url)
    proxy.up()
    try:
        srv = start_server(
            database_url=proxy.url,
            usage={"flush_interval_s": 0.1, "buffer_max": 4, "batch_size": 2},
        )
        key = new_key(tenant="outage", user="ops")
        client = sdk(srv, key.key)
        warm = "warm-" + uuid.uuid4().hex
        await asyncio.to_thread(
            client.chat.completions.create,
            model="fake",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": warm},
        )
        assert len(await usage_rows(database_url, warm)) == 1

        proxy.down()
        prefix = "outage-" + uuid.uuid4().hex
        for i in range(10):
            r = await asyncio.to_thread(
                client.chat.completions.create,
                model="fake",
                messages=[{"role": "user", "content": f"request {i}"}],
                extra_headers={"x-request-id": f"{prefix}-{i}"},
            )
            assert r.choices[0].message.content
        await asyncio.sleep(0.5)
        recorder = srv.runtime.recorder
        spill = srv.settings.data_dir / "usage-spill.jsonl"
        assert recorder.write_failures > 0
        replaying = spill.with_suffix(".replaying")
        assert spill.exists() or replaying.exists(), "records beyond buffer_max must spill"

        proxy.up()
        for i in range(10):
            rows = await usage_rows(database_url, f"{prefix}-{i}", wait_s=30)
            assert len(rows) == 1, f"request {i}: {len(rows)} records"
            assert rows[0].status == "ok"
        assert not spill.exists() and not replaying.exists()
    finally:
        proxy.close()
