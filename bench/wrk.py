"""Drive a URL with ``wrk --latency`` and parse what it prints."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_NUM = r"([\d.]+)\s*(us|ms|s|m)\b"


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def request_body(model: str, stream: bool, temperature: float | None = None) -> bytes:
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        body["stream"] = True
    if temperature is not None:
        body["temperature"] = temperature
    return json.dumps(body).encode()


def lua_script(path: Path, body: bytes, key: str | None) -> Path:
    """Write a wrk script that POSTs ``body`` (with a bearer key if given)."""
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    # A Lua long string holds the JSON verbatim.
    path.write_text(LUA.format(body="[==[" + body.decode() + "]==]", auth=auth))
    return path


def run(
    url: str,
    script: Path,
    *,
    connections: int,
    threads: int,
    duration_s: float,
    timeout_s: float = 10,
) -> WrkResult:
    threads = max(1, min(threads, connections))
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={round(timeout_s)}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
    return parse(proc.stdout)


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse(out: str) -> WrkResult:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not done or not rps:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    pct = {p: _ms(v, u) for p, v, u in re.findall(r"^\s+(50|75|90|99)%\s+" + _NUM, out, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, errs.groups()), strict=True))
        if errs
        else {}
    )
    return WrkResult(
        requests=int(done.group(1)),
        duration_s=_ms(done.group(2), done.group(3)) / 1000.0,
        rps=float(rps.group(1)),
        p50_ms=pct.get("50", float("nan")),
        p75_ms=pct.get("75", float("nan")),
        p90_ms=pct.get("90", float("nan")),
        p99_ms=pct.get("99", float("nan")),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )
