"""An SSE response that cancels the upstream when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from starlette.responses import Response

from strata.gateway.chat import ChatStream

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Tell nginx-style proxies not to buffer the stream.
    (b"x-accel-buffering", b"no"),
]


class SSEResponse(Response):
    def __init__(self, stream: ChatStream) -> None:
        self.stream = stream
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": list(HEADERS)})
            pump = asyncio.create_task(self._pump(send))
            watch = asyncio.create_task(_wait_disconnect(receive))
            try:
                await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, watch):
                    task.cancel()
                    # OSError: the client is gone (ASGI 2.4 send raises it).
                    with contextlib.suppress(asyncio.CancelledError, OSError):
                        await task
        finally:
            # Settles the meter as cancelled if the stream did not finish.
            await self.stream.close()

    async def _pump(self, send: Any) -> None:
        events: AsyncGenerator[bytes, None] = self.stream.events()
        try:
            async for data in events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await events.aclose()


async def _wait_disconnect(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
