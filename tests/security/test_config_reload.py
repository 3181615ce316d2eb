"""Config reload (strata.reload): POST /v1/admin/config/reload against a real server
started from a config file; applied sections take effect, others are reported,
a bad file changes nothing, every reload is audited."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import text

from strata.reload import RELOADABLE
from strata.settings import load_settings
from strata.storage.engine import make_engine
from strata.storage.repositories.keys import NewKey
from tests.conftest import TEST_CONFIG, ServerThread

BASE: dict[str, Any] = {
    "log_level": "info",
    "limits": {"user": {"requests_per_second": 1000}},
    "retention": {"usage_records_days": 400},
}


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reload") / "strata.yaml"
    write(path, BASE)
    return path


@pytest.fixture(scope="module")
def reloadable(
    config_file: Path, database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    keep = {k: v for k, v in TEST_CONFIG.items() if k not in RELOADABLE}
    settings = load_settings(
        config_file,
        database_url=database_url,
        redis_url=redis_url,
        data_dir=tmp_path_factory.mktemp("reload-data"),
        **keep,
    )
    srv = ServerThread(settings).start()
    yield srv
    srv.stop()


def post(srv: ServerThread, key: str, path: str = "/v1/admin/config/reload") -> httpx.Response:
    return httpx.post(srv.base_url + path, headers={"authorization": f"Bearer {key}"}, timeout=30)


def chat(srv: ServerThread, key: str) -> int:
    body = {"model": "fake", "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
    r = httpx.post(
        srv.base_url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    return r.status_code


async def audit_entries(database_url: str) -> list[Any]:
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT actor, target, details FROM audit_log "
                    "WHERE action = 'config.reload' ORDER BY id"
                )
            )
            return list(result)
    finally:
        await engine.dispose()


def test_reload_applies_limits_and_reports_the_rest(
    reloadable: ServerThread,
    config_file: Path,
    new_key: Callable[..., NewKey],
    database_url: str,
) -> None:
    tenant = "reload-" + uuid.uuid4().hex[:8]
    user = new_key(tenant=tenant, user="u1")
    admin = new_key(tenant=tenant, user="ops", is_admin=True)
    assert [chat(reloadable, user.key) for _ in range(3)] == [200, 200, 200]

    assert post(reloadable, user.key).status_code == 403  # admin only

    write(
        config_file,
        {
            **BASE,
            "log_level": "debug",
            "limits": {"user": {"requests_per_minute": 2}},
            "retention": {"usage_records_days": 30},
        },
    )
    r = post(reloadable, admin.key)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "object": "config.reload",
        "applied": ["limits", "retention"],
        "restart_required": ["log_level"],
    }
    rt = reloadable.runtime
    assert rt.settings.retention.usage_records_days == 30
    assert rt.settings.log_level == "info"  # not applied
    fresh = new_key(tenant=tenant, user="u2")
    codes = [chat(reloadable, fresh.key) for _ in range(3)]
    assert codes == [200, 200, 429]

    # Nothing changed since: an empty reload.
    r = post(reloadable, admin.key)
    assert r.json()["applied"] == [] and r.json()["restart_required"] == []

    entries = asyncio.run(audit_entries(database_url))
    mine = [e for e in entries if e.actor == admin.id]
    assert [e.details["applied"] for e in mine][-2:] == [["limits", "retention"], []]
    assert mine[-2].details["restart_required"] == ["log_level"]
    assert mine[-2].target == str(config_file)


def test_a_bad_file_changes_nothing(
    reloadable: ServerThread, config_file: Path, new_key: Callable[..., NewKey]
) -> None:
    admin = new_key(tenant="reload-" + uuid.uuid4().hex[:8], user="ops", is_admin=True)
    before = reloadable.runtime.settings.limits
    write(config_file, {**BASE, "limits": {"user": {"requests_per_second": -5}}})
    r = post(reloadable, admin.key)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_config" and "limits.user.requests_per_second" in err["message"]
    assert reloadable.runtime.settings.limits is before
    config_file.write_text("limits: [unclosed")
    r = post(reloadable, admin.key)
    assert r.status_code == 400 and "not valid YAML" in r.json()["error"]["message"]
    write(config_file, BASE)


def test_a_server_without_a_config_file_says_so(
    server: ServerThread, new_key: Callable[..., NewKey]
) -> None:
    admin = new_key(tenant="reload-" + uuid.uuid4().hex[:8], user="ops", is_admin=True)
    r = post(server, admin.key)
    assert r.status_code == 400
    assert "without a config file" in r.json()["error"]["message"]
