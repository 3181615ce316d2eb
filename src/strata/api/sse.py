"""An SSE response that cancels the upstream when the client goes away."""

from __future__ import annotations

import asyncio
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
    def __init__(self, stream: ChatStream, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        self.stream = stream
        self.extra = extra or []
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # The stream is pumped in this task; a watcher task cancels it if the
        # client disconnects (uvicorn's send() to a gone client does nothing,
        # so without it an idle upstream would keep generating).
        current = asyncio.current_task()
        state = {"finished": False, "disconnected": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["finished"] and current is not None:
                state["disconnected"] = True
                current.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": [*HEADERS, *self.extra]}
            )
            await self._pump(send)
            state["finished"] = True
        except asyncio.CancelledError:
            if not state["disconnected"] or current is None:
                raise
            current.uncancel()
        except OSError:
            pass  # the client is gone (ASGI 2.4 servers raise it from send)
        finally:
            state["finished"] = True
            watcher.cancel()
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
