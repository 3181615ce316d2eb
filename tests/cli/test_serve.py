"""`strata serve` end to end: embedded services, first-run key, clean Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.conftest import free_port

CONFIG = """
providers:
  fake: {type: fake}
models:
  chat: {provider: fake, model: fake-1}
"""
STRATA = str(Path(sys.executable).with_name("strata"))


def start(tmp: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    env["COLUMNS"] = "200"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                STRATA,
                "serve",
                "--config",
                str(tmp / "strata.yaml"),
                "--port",
                str(port),
                "--data-dir",
                str(tmp / "data"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail("strata serve did not become ready:\n" + log.read_text()[-3000:])


def stop(proc: subprocess.Popen[bytes], data: Path) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    left = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if any(str(data) in part for part in (p.info["cmdline"] or []))
    ]
    assert left == [], f"still running after Ctrl-C: {left}"


def test_serve_first_run_key_and_clean_shutdown(tmp_path: Path) -> None:
    (tmp_path / "strata.yaml").write_text(CONFIG)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start(tmp_path, port, log)
    try:
        keys = re.findall(r"sk-strata-[A-Za-z0-9_-]{43}", log.read_text())
        assert len(keys) == 1, "the admin key is printed exactly once"
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=keys[0], max_retries=0
        ) as client:
            assert client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        stop(proc, tmp_path / "data")
    # The key is stored only as a hash.
    assert keys[0].encode() not in b"".join(
        p.read_bytes()
        for p in (tmp_path / "data").rglob("*")
        if p.is_file() and p.stat().st_size < 50e6
    )

    # Second run: data persisted, no new key, the old key still works.
    size = log.stat().st_size
    proc = start(tmp_path, port, log)
    try:
        assert "sk-strata-" not in log.read_text()[size:]
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=keys[0], max_retries=0
        ) as client:
            assert [m.id for m in client.models.list()] == ["chat"]
    finally:
        stop(proc, tmp_path / "data")


def test_serve_refuses_a_bad_config_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "strata.yaml").write_text(
        "providers:\n  up: {type: openai_compat, base_url: 'http://x', api_key: 'env:NOPE_KEY_X'}\n"
        "models:\n  m: {provider: up, model: m}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_") and k != "NOPE_KEY_X"}
    r = subprocess.run(
        [
            STRATA,
            "serve",
            "--config",
            str(tmp_path / "strata.yaml"),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 2
    assert "NOPE_KEY_X" in r.stderr and "export NOPE_KEY_X" in r.stderr.replace("\n", " ")
    assert "Traceback" not in r.stderr + r.stdout
