"""Admin API for limit overrides and budget caps: /v1/admin/limits, /v1/admin/budgets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from strata.limits.overrides import user_subject
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread


def call(
    server: ServerThread, method: str, path: str, key: str | None, json: Any = None
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, server.base_url + path, headers=headers, json=json, timeout=30)


def error_of(r: httpx.Response) -> dict[str, Any]:
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest.fixture
def tenant() -> str:
    return "lim-" + uuid.uuid4().hex[:8]


@pytest.fixture
def admin(new_key: Callable[..., NewKey], tenant: str) -> NewKey:
    return new_key(tenant=tenant, user="boss", is_admin=True)


def test_admin_key_required(
    server: ServerThread, new_key: Callable[..., NewKey], admin: NewKey, tenant: str
) -> None:
    plain = new_key(tenant=tenant, user="pat")
    for path in (f"/v1/admin/limits/tenant/{tenant}", f"/v1/admin/budgets/key/{plain.id}"):
        r = call(server, "GET", path, None)
        assert r.status_code == 401 and error_of(r)["type"] == "authentication_error"
        r = call(server, "GET", path, plain.key)
        assert r.status_code == 403 and error_of(r)["type"] == "permission_error"
        r = call(server, "PUT", path, plain.key, json={"daily_usd": "1"})
        assert r.status_code == 403
        assert call(server, "GET", path, admin.key).status_code == 200


def test_admin_is_bound_to_its_tenant(
    server: ServerThread, new_key: Callable[..., NewKey], admin: NewKey
) -> None:
    other = new_key(tenant="other-" + uuid.uuid4().hex[:6], user="zed")
    r = call(server, "GET", f"/v1/admin/limits/key/{other.id}", admin.key)
    assert r.status_code == 404 and error_of(r)["param"] == "subject"
    r = call(server, "PUT", f"/v1/admin/limits/tenant/{other.tenant_id}", admin.key, {"burst": 2})
    assert r.status_code == 403 and error_of(r)["param"] == "subject"
    r = call(server, "GET", f"/v1/admin/budgets/user/{other.tenant_id}/zed", admin.key)
    assert r.status_code == 403
    r = call(server, "GET", "/v1/admin/limits/key/key_doesnotexist", admin.key)
    assert r.status_code == 404


def test_set_show_and_delete_user_limits(server: ServerThread, admin: NewKey, tenant: str) -> None:
    defaults = server.settings.limits.user.model_dump(mode="json")
    path = f"/v1/admin/limits/user/{tenant}/alice"
    before = call(server, "GET", path, admin.key).json()
    assert before["object"] == "limits" and before["scope"] == "user"
    assert before["subject"] == f"{tenant}/alice"
    assert before["override"] is None
    assert before["default"] == before["effective"] == defaults

    r = call(server, "PUT", path, admin.key, {"requests_per_minute": 120, "failure_mode": "closed"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["override"] == {"requests_per_minute": 120, "failure_mode": "closed"}
    assert body["effective"] == {**defaults, "requests_per_minute": 120, "failure_mode": "closed"}

    # The same subject, URL-encoded as one segment; and this instance applies it at once.
    shown = call(server, "GET", f"/v1/admin/limits/user/{tenant}%2Falice", admin.key).json()
    assert shown["effective"] == body["effective"]
    rt = server.runtime
    assert rt.overrides.rules("user", user_subject(tenant, "alice")) == body["override"]

    # PUT replaces the whole override; null means unlimited against the default.
    r = call(server, "PUT", path, admin.key, {"requests_per_second": None})
    assert r.json()["override"] == {"requests_per_second": None}
    assert r.json()["effective"] == {**defaults, "requests_per_second": None}

    r = call(server, "DELETE", path, admin.key)
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert r.json()["override"] is None and r.json()["effective"] == defaults
    assert rt.overrides.rules("user", user_subject(tenant, "alice")) is None
    assert call(server, "DELETE", path, admin.key).json()["deleted"] is False


def test_key_and_alias_limits(
    server: ServerThread, new_key: Callable[..., NewKey], admin: NewKey, tenant: str
) -> None:
    key = new_key(tenant=tenant, user="kim")
    r = call(
        server, "PUT", f"/v1/admin/limits/key/{key.id}", admin.key, {"tokens_per_minute": 5000}
    )
    assert r.status_code == 200
    assert r.json()["effective"]["tokens_per_minute"] == 5000
    alias = "alias-" + uuid.uuid4().hex[:6]
    r = call(server, "PUT", f"/v1/admin/limits/alias/{alias}", admin.key, {"burst": 0.5})
    assert r.status_code == 200 and r.json()["effective"]["burst"] == 0.5
    assert call(server, "DELETE", f"/v1/admin/limits/alias/{alias}", admin.key).json()["deleted"]
    call(server, "DELETE", f"/v1/admin/limits/key/{key.id}", admin.key)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"requests_per_second": 0}, "requests_per_second"),
        ({"requests_per_minute": "many"}, "requests_per_minute"),
        ({"burst": 1000}, "burst"),
        ({"failure_mode": "sideways"}, "failure_mode"),
        ({"rps": 5}, "rps"),
    ],
)
def test_bad_limit_values_name_the_field(
    server: ServerThread, admin: NewKey, tenant: str, body: dict[str, Any], param: str
) -> None:
    r = call(server, "PUT", f"/v1/admin/limits/tenant/{tenant}", admin.key, body)
    assert r.status_code == 400
    err = error_of(r)
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert param in err["message"]
    # Nothing was stored.
    assert (
        call(server, "GET", f"/v1/admin/limits/tenant/{tenant}", admin.key).json()["override"]
        is None
    )


def test_bad_requests(server: ServerThread, admin: NewKey, tenant: str) -> None:
    r = call(server, "PUT", f"/v1/admin/limits/tenant/{tenant}", admin.key, {})
    assert r.status_code == 400
    r = call(server, "PUT", f"/v1/admin/limits/tenant/{tenant}", admin.key, [1])
    assert r.status_code == 400
    r = call(server, "GET", f"/v1/admin/limits/planet/{tenant}", admin.key)
    assert r.status_code == 400 and error_of(r)["param"] == "scope"
    r = call(server, "GET", f"/v1/admin/budgets/alias/{tenant}", admin.key)
    assert r.status_code == 400 and error_of(r)["param"] == "scope"
    r = call(server, "GET", f"/v1/admin/limits/user/{tenant}", admin.key)
    assert r.status_code == 400 and error_of(r)["param"] == "subject"


def test_budgets_set_show_delete(server: ServerThread, admin: NewKey, tenant: str) -> None:
    path = f"/v1/admin/budgets/tenant/{tenant}"
    before = call(server, "GET", path, admin.key).json()
    assert before["object"] == "budget" and before["override"] is None
    for period in ("day", "month"):
        assert before[period]["spent_usd"] == "0"
        assert set(before[period]) == {
            "start",
            "resets_at",
            "cap_usd",
            "soft_limit_usd",
            "spent_usd",
            "remaining_usd",
        }

    r = call(
        server, "PUT", path, admin.key, {"daily_usd": "2.50", "monthly_usd": 40, "soft_pct": 80}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["override"] == {"daily_usd": "2.50", "monthly_usd": "40", "soft_pct": 80.0}
    assert body["day"]["cap_usd"] == "2.5" and body["month"]["cap_usd"] == "40"
    assert body["day"]["soft_limit_usd"] == "2" and body["month"]["soft_limit_usd"] == "32"
    assert body["day"]["remaining_usd"] == "2.5"

    # Reset times: the next UTC midnight and the first of next month.
    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).date()
    assert body["day"]["start"] == now.date().isoformat()
    assert body["day"]["resets_at"] == f"{tomorrow.isoformat()}T00:00:00Z"
    first = now.date().replace(day=1)
    nxt = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    assert body["month"]["start"] == first.isoformat()
    assert body["month"]["resets_at"] == f"{nxt.isoformat()}T00:00:00Z"

    r = call(server, "PUT", path, admin.key, {"daily_usd": "-1"})
    assert r.status_code == 400 and error_of(r)["param"] == "daily_usd"
    r = call(server, "PUT", path, admin.key, {"soft_pct": 101})
    assert r.status_code == 400 and error_of(r)["param"] == "soft_pct"

    r = call(server, "DELETE", path, admin.key)
    assert r.json()["deleted"] is True and r.json()["override"] is None
    assert r.json()["day"]["cap_usd"] == money(server.settings.budgets.tenant.daily_usd)


def money(v: Decimal | None) -> str | None:
    return None if v is None else (f"{v.normalize():f}" if v else "0")


async def test_budget_show_includes_spend(
    server: ServerThread, new_key: Callable[..., NewKey], admin: NewKey, tenant: str
) -> None:
    key = new_key(tenant=tenant, user="sam")
    rt = server.runtime
    budgets = rt.budgets
    subjects = budgets.subjects(tenant=tenant, user="sam", key=key.id)

    # Reserve and settle on the server's own loop (its Redis client belongs there).
    async def spend() -> None:
        res = await budgets.reserve(subjects, Decimal("0.5"))
        await budgets.settle(res, Decimal("0.125"))

    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(spend(), rt_loop(server)))

    r = call(server, "PUT", f"/v1/admin/budgets/key/{key.id}", admin.key, {"daily_usd": "1"})
    assert r.json()["day"]["spent_usd"] == "0.125"
    assert r.json()["day"]["remaining_usd"] == "0.875"
    for path in (
        f"/v1/admin/budgets/key/{key.id}",
        f"/v1/admin/budgets/user/{tenant}/sam",
        f"/v1/admin/budgets/tenant/{tenant}",
    ):
        body = call(server, "GET", path, admin.key).json()
        assert body["day"]["spent_usd"] == body["month"]["spent_usd"] == "0.125", path


def rt_loop(server: ServerThread) -> Any:
    """The event loop the server thread runs (the runtime's tasks live on it)."""
    return server.runtime.tasks[0].get_loop()
