"""Secrets: vault: references against a local KV v2 server, refresh, masking, no leaks.

A real Vault is not available here: ``FakeVault`` is an aiohttp app, run on its own
event loop in a thread (the resolver is synchronous, as at start-up), implementing
the two endpoints Strata uses: ``GET /v1/<mount>/data/<path>`` (KV v2 read, checked
against ``X-Vault-Token``, 403 otherwise) and ``POST /v1/auth/approle/login``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from typer.testing import CliRunner

from strata.errors import ConfigError, ProviderAuthError
from strata.providers.openai_compat import OpenAICompatProvider
from strata.security.credentials import SecretRef, resolve_secret
from strata.security.secrets import SecretsSettings, refresh_secrets
from strata.settings import ProviderConfig, Settings, load_settings
from tests.upstreams import ScriptedUpstream, free_port

TOKEN = "hvs.test-root-token-0123"
ROLE_ID = "role-7d1e"
SECRET_ID = "secret-id-55aa-do-not-print"
VALUE = "sk-vault-Kq2-recognisable-secret-v1"
VALUE2 = "sk-vault-Kq2-recognisable-secret-v2"
REF = "vault:secret/data/strata#openai"
WHERE = "providers.openai.api_key"


class FakeVault:
    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, Any]] = {"secret/data/strata": {"openai": VALUE}}
        self.tokens = {TOKEN}
        self.logins = 0
        self.reads: list[str] = []
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _read(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Vault-Token") not in self.tokens:
            return web.json_response({"errors": ["permission denied"]}, status=403)
        path = request.match_info["path"]
        self.reads.append(path)
        if path not in self.secrets:
            return web.json_response({"errors": []}, status=404)
        return web.json_response(
            {"data": {"data": self.secrets[path], "metadata": {"version": 1}}, "lease_id": ""}
        )

    async def _login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if (body.get("role_id"), body.get("secret_id")) != (ROLE_ID, SECRET_ID):
            return web.json_response({"errors": ["invalid role or secret ID"]}, status=400)
        self.logins += 1
        token = f"hvs.approle-{self.logins}"
        self.tokens.add(token)
        return web.json_response({"auth": {"client_token": token, "lease_duration": 3600}})

    async def _start(self) -> None:
        webapp = web.Application()
        webapp.router.add_post("/v1/auth/approle/login", self._login)
        webapp.router.add_get("/v1/{path:.*}", self._read)
        self._runner = web.AppRunner(webapp, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def vault(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVault]:
    fake = FakeVault()
    fake.start()
    for name in ("VAULT_TOKEN", "VAULT_ROLE_ID", "VAULT_SECRET_ID", "VAULT_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("VAULT_CACERT", raising=False)
    monkeypatch.setenv("VAULT_ADDR", fake.addr)
    monkeypatch.setenv("VAULT_TOKEN", TOKEN)
    try:
        yield fake
    finally:
        fake.close()


def use_approle(monkeypatch: pytest.MonkeyPatch, secret_id: str = SECRET_ID) -> None:
    monkeypatch.delenv("VAULT_TOKEN")
    monkeypatch.setenv("VAULT_ROLE_ID", ROLE_ID)
    monkeypatch.setenv("VAULT_SECRET_ID", secret_id)


def config_error(ref: str, where: str = WHERE) -> str:
    with pytest.raises(ConfigError) as info:
        resolve_secret(ref, where)
    msg = info.value.message
    assert where in msg and ref in msg
    for secret in (VALUE, VALUE2, TOKEN, SECRET_ID):
        assert secret not in msg
    return msg


# --------------------------------------------------------------------------- resolving


def test_token_auth_reads_the_kv2_field(vault: FakeVault) -> None:
    secret = resolve_secret(REF, WHERE)
    assert isinstance(secret, SecretRef)
    assert secret.reveal() == VALUE
    assert VALUE not in repr(secret) and VALUE not in str(secret)
    assert vault.reads == ["secret/data/strata"]


def test_wrong_token_is_a_403_naming_the_fix(
    vault: FakeVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "hvs.wrong")
    msg = config_error(REF)
    assert "403" in msg and "policy" in msg
    assert "hvs.wrong" not in msg


def test_approle_logs_in_and_reads(vault: FakeVault, monkeypatch: pytest.MonkeyPatch) -> None:
    use_approle(monkeypatch)
    assert resolve_secret(REF, WHERE).reveal() == VALUE
    assert vault.logins == 1


def test_approle_logs_in_again_when_its_token_is_revoked(
    vault: FakeVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_approle(monkeypatch)
    secret = resolve_secret(REF, WHERE)
    logins = vault.logins
    vault.tokens = {TOKEN}  # the AppRole token expired
    vault.secrets["secret/data/strata"]["openai"] = VALUE2
    assert secret.refresh() is True
    assert secret.reveal() == VALUE2
    assert vault.logins == logins + 1


def test_approle_with_a_wrong_secret_id_names_the_variables(
    vault: FakeVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_approle(monkeypatch, secret_id="secret-id-wrong")
    msg = config_error(REF)
    assert "VAULT_ROLE_ID" in msg and "VAULT_SECRET_ID" in msg
    assert "secret-id-wrong" not in msg


def test_missing_field_lists_the_fields_not_the_values(vault: FakeVault) -> None:
    msg = config_error("vault:secret/data/strata#together")
    assert "'together'" in msg and "openai" in msg
    assert "vault kv patch secret/strata together=" in msg


def test_missing_path_says_how_to_create_it(vault: FakeVault) -> None:
    msg = config_error("vault:secret/data/nope#openai")
    assert "does not exist" in msg and "vault kv put secret/nope" in msg


@pytest.mark.parametrize("ref", ["vault:secret/data/strata", "vault:#openai"])
def test_malformed_reference(vault: FakeVault, ref: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_secret(ref, WHERE)
    assert "vault:MOUNT/data/PATH#FIELD" in info.value.message
    assert ref not in info.value.message


def test_no_credentials(vault: FakeVault, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_TOKEN")
    assert "VAULT_TOKEN" in config_error(REF)


def test_vault_down_at_start_up_fails_provider_construction(
    vault: FakeVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault.stop()
    with pytest.raises(ConfigError) as info:
        OpenAICompatProvider(
            "openai",
            ProviderConfig(type="openai_compat", base_url="http://127.0.0.1:9/v1", api_key=REF),
            load_settings(None),
        )
    msg = info.value.message
    assert WHERE in msg and REF in msg and vault.addr in msg
    assert "cannot be reached" in msg and "VAULT_ADDR" in msg
    assert TOKEN not in msg


# --------------------------------------------------------------------------- refresh


async def chat_ok(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "id": "c1",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


async def chat_401_echoing_the_key(request: web.Request) -> web.Response:
    sent = request.headers.get("authorization", "")
    return web.json_response(
        {"error": {"message": f"Incorrect API key provided: {sent}", "code": "invalid_api_key"}},
        status=401,
    )


BODY = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_refresh_picks_up_a_changed_value_for_the_next_request(
    vault: FakeVault, upstream: ScriptedUpstream
) -> None:
    upstream.reply = chat_ok
    provider = OpenAICompatProvider(
        "openai",
        ProviderConfig(type="openai_compat", base_url=upstream.base_url, api_key=REF),
        load_settings(None),
    )
    await provider.start()
    try:
        await provider.chat(BODY, "m")
        assert upstream.last.headers["authorization"] == f"Bearer {VALUE}"
        vault.secrets["secret/data/strata"]["openai"] = VALUE2
        assert await refresh_secrets() >= 1
        await provider.chat(BODY, "m")
        assert upstream.last.headers["authorization"] == f"Bearer {VALUE2}"
    finally:
        await provider.close()


async def test_refresh_failure_keeps_the_last_value_and_logs_no_secret(
    vault: FakeVault, caplog: pytest.LogCaptureFixture
) -> None:
    secret = resolve_secret(REF, WHERE)
    vault.stop()
    with caplog.at_level(logging.DEBUG):
        await refresh_secrets()
    assert secret.reveal() == VALUE
    warnings = [r for r in caplog.records if r.name == "strata.secrets"]
    assert any(
        REF in r.getMessage() and "keeping the last value" in r.getMessage() for r in warnings
    )
    for secret_text in (VALUE, TOKEN):
        assert secret_text not in caplog.text


async def test_file_reference_refreshes(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("first\n")
    secret = resolve_secret(f"file:{path}", "alerts.channels.ops.password")
    path.write_text("second\n")
    assert await refresh_secrets() >= 1
    assert secret.reveal() == "second"


def test_refresh_setting() -> None:
    assert Settings().secrets.refresh_s == 300
    assert Settings(secrets=SecretsSettings(refresh_s=0)).secrets.refresh_s == 0


# --------------------------------------------------------------------------- no leaks


async def test_provider_auth_error_and_logs_carry_no_secret(
    vault: FakeVault, upstream: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.reply = chat_401_echoing_the_key
    provider = OpenAICompatProvider(
        "openai",
        ProviderConfig(type="openai_compat", base_url=upstream.base_url, api_key=REF),
        load_settings(None),
    )
    await provider.start()
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(ProviderAuthError) as info:
            await provider.chat(BODY, "m")
    finally:
        await provider.close()
    assert upstream.last.headers["authorization"] == f"Bearer {VALUE}"  # it was sent
    err = info.value
    body = json.dumps(err.to_dict()) if hasattr(err, "to_dict") else ""
    for text in (err.message, str(err), repr(err), body, caplog.text):
        assert VALUE not in text and TOKEN not in text


def test_config_show_masks_every_secret_bearing_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("STRATA_DATABASE_URL", "STRATA_REDIS_URL", "STRATA_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STRATA_DATABASE_URL", "postgresql://strata:db-pw-SECRET@db:5432/strata")
    literal_header = "Bearer sk-header-SECRET"
    webhook = "https://hooks.slack.com/services/T000/B000/webhook-SECRET"
    config = {
        "providers": {
            "openai": {
                "type": "openai_compat",
                "base_url": "https://api.openai.com/v1",
                "api_key": REF,
                "headers": {"Authorization": literal_header, "OpenAI-Organization": "org-1"},
            },
            "together": {
                "type": "openai_compat",
                "base_url": "https://proxy-user:proxy-pw-SECRET@api.together.xyz/v1",
                "api_key": "env:TOGETHER_API_KEY",
            },
        },
        "models": {"gpt": {"provider": "openai", "model": "gpt-4o-mini"}},
        "observability": {"sentry": {"dsn": "file:/run/secrets/sentry_dsn"}},
        "alerts": {"channels": [{"type": "webhook", "name": "ops", "url": webhook}]},
    }
    path = tmp_path / "strata.yaml"
    path.write_text(yaml.safe_dump(config))
    from strata.cli.config_cmd import app as config_app

    result = CliRunner().invoke(config_app, ["show", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "SECRET" not in result.output
    shown = json.loads(result.stdout)
    openai = shown["providers"]["openai"]
    assert openai["api_key"] == REF  # references are shown as they are
    assert openai["headers"] == {"Authorization": "****", "OpenAI-Organization": "org-1"}
    assert openai["base_url"] == "https://api.openai.com/v1"
    assert shown["providers"]["together"]["api_key"] == "env:TOGETHER_API_KEY"
    assert shown["providers"]["together"]["base_url"].startswith("https://proxy-user:****@")
    assert shown["observability"]["sentry"]["dsn"] == "file:/run/secrets/sentry_dsn"
    assert shown["alerts"]["channels"][0]["url"] == "https://hooks.slack.com/****"
    assert shown["database_url"].startswith("postgresql://strata:")
