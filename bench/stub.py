"""The upstream: a static OpenAI-compatible stub served by nginx on 127.0.0.1.

One nginx server, two base URLs: ``/json/v1`` answers POST /chat/completions with
a fixed ``chat.completion`` object; ``/sse/v1`` with a fixed ``text/event-stream``
body of content chunks, a usage chunk and ``data: [DONE]``.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from bench.procs import free_port, stop_process, wait_http

CREATED = 1_700_000_000
WORDS = ["Hello", "!", " How", " can", " I", " help", " you", " today", "?", " 🙂"]
USAGE = {"prompt_tokens": 9, "completion_tokens": len(WORDS), "total_tokens": 9 + len(WORDS)}


def completion_body() -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": CREATED,
        "model": "stub-model",
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(WORDS)},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    return json.dumps(body, ensure_ascii=False).encode()


def _chunk(choices: list[dict[str, object]], usage: dict[str, int] | None = None) -> str:
    out: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "stub-model",
        "system_fingerprint": "fp_bench",
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = usage
    return "data: " + json.dumps(out, ensure_ascii=False) + "\n\n"


def sse_body() -> bytes:
    parts = []
    for i, word in enumerate(WORDS):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        last = i == len(WORDS) - 1
        parts.append(
            _chunk(
                [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": "stop" if last else None,
                    }
                ]
            )
        )
    parts.append(_chunk([], USAGE))
    parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


NGINX_CONF = """\
worker_processes 1;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 65s;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    server {{
        listen 127.0.0.1:{port};
        location = /json/v1/chat/completions {{
            default_type application/json;
            return 200 '{json}';
        }}
        location = /sse/v1/chat/completions {{
            default_type text/event-stream;
            return 200 '{sse}';
        }}
        # An OTLP/HTTP trace receiver that accepts and drops (BENCH_TRACING).
        location = /otlp/v1/traces {{
            default_type application/x-protobuf;
            return 200 '';
        }}
        location / {{ return 404; }}
    }}
}}
"""


def nginx_string(body: bytes) -> str:
    """``body`` as the inside of a single-quoted nginx string (no variables in it)."""
    text = body.decode()
    if "$" in text:
        raise ValueError("'$' would be read as an nginx variable")
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


class NginxStub:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "nginx"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, kind: str) -> str:
        """The chat completions URL of one kind, ``json`` or ``sse``."""
        return f"{self.base}/{kind}/v1/chat/completions"

    def start(self) -> None:
        (self.dir / "tmp").mkdir(parents=True)
        self.port = free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                dir=self.dir,
                port=self.port,
                json=nginx_string(completion_body()),
                sse=nginx_string(sse_body()),
            )
        )
        global_directives = f"daemon off; master_process on; pid {self.dir}/nginx.pid;"
        with open(self.dir / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(
                ["nginx", "-p", str(self.dir), "-c", str(conf), "-g", global_directives],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        if not wait_http(self.base + "/", self.proc, timeout_s=10, any_status=True):
            raise RuntimeError(f"nginx did not start; see {self.dir}/stderr.log and error.log")

    def stop(self) -> None:
        if self.proc is not None:
            # SIGQUIT: graceful shutdown of master and worker.
            stop_process(self.proc, signal.SIGQUIT, timeout_s=10)
            self.proc = None
