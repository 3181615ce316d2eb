"""Upstreams for provider tests: a real llama-cpp-python server and a scripted one.

``llama_server`` runs ``python -m llama_cpp.server`` with the embedded SmolLM2 GGUF
on a free loopback port for the whole session, behind an API key. ``upstream`` is a
tiny aiohttp app on loopback whose replies each test scripts, and which records
every request it receives.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from strata.providers.local_llama import default_gguf

LLAMA_START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LlamaServer:
    base_url: str  # ends in /v1
    api_key: str
    model: str  # the alias the server reports
    log: Path

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])


def _wait_for_models(
    url: str, api_key: str, proc: subprocess.Popen[bytes], srv: LlamaServer
) -> None:
    deadline = time.monotonic() + LLAMA_START_TIMEOUT_S
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {api_key}"})
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"llama_cpp.server exited with code {proc.returncode} before serving:\n"
                + srv.log_tail(),
                pytrace=False,
            )
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"llama_cpp.server did not answer GET /v1/models within "
                f"{LLAMA_START_TIMEOUT_S:.0f}s:\n" + srv.log_tail(),
                pytrace=False,
            )
        time.sleep(0.2)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    port = free_port()
    api_key = "llama-test-" + os.urandom(8).hex()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    srv = LlamaServer(f"http://127.0.0.1:{port}/v1", api_key, "smollm2-upstream", log)
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(default_gguf()),
        "--model_alias", srv.model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "2048",
        "--n_threads", "2",
        "--embedding", "True",
        "--api_key", api_key,
        "--verbose", "False",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_for_models(srv.base_url + "/models", api_key, proc, srv)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class ScriptedUpstream:
    """One aiohttp app on loopback; ``reply`` is the handler for the next requests."""

    base_url: str = ""
    reply: Handler | None = None
    received: list[Received] = field(default_factory=list)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(
            Received(
                request.method,
                request.path,
                {k.lower(): v for k, v in request.headers.items()},
                body,
            )
        )
        if self.reply is None:
            return web.json_response({"error": {"message": "no reply scripted"}}, status=500)
        return await self.reply(request)

    @property
    def last(self) -> Received:
        assert self.received, "the upstream received no request"
        return self.received[-1]


async def _serve(scripted: ScriptedUpstream) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.dispatch)
    # Cancel handlers whose client went away (timeout tests), and do not wait long for them.
    runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    scripted.base_url = f"http://{host}:{port}/v1"
    return runner


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    scripted = ScriptedUpstream()
    runner = await _serve(scripted)
    try:
        yield scripted
    finally:
        await runner.cleanup()


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[[], Awaitable[ScriptedUpstream]]]:
    """Start as many scripted upstreams as a test needs: ``await upstreams()``."""
    runners: list[web.AppRunner] = []

    async def make() -> ScriptedUpstream:
        scripted = ScriptedUpstream()
        runners.append(await _serve(scripted))
        return scripted

    try:
        yield make
    finally:
        for runner in runners:
            await runner.cleanup()


def sse_reply(events: list[Any], *, done: bool = True) -> Handler:
    """A handler streaming ``events`` as SSE ``data:`` lines: dicts are JSON-encoded,
    bytes are sent as they are, a float is a pause of that many seconds."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            if isinstance(event, float):  # a pause mid-stream
                await asyncio.sleep(event)
                continue
            data = event if isinstance(event, bytes) else orjson.dumps(event)
            await resp.write(b"data: " + data + b"\n\n")
        if done:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    return handler
