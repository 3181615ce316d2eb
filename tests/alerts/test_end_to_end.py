"""Spend alerts through the API: two servers share Redis and PostgreSQL, a user's
requests on both cross 50% of a daily budget, and exactly one webhook POST and one
email arrive."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from strata.providers.base import estimate_prompt_tokens
from strata.storage.repositories.keys import NewKey
from tests.alerts.conftest import Mailbox, Receiver
from tests.conftest import ServerThread

BODY: dict[str, Any] = {
    "model": "fake",
    "messages": [{"role": "user", "content": "spend a little"}],
    "max_tokens": 50,
}


async def test_a_crossed_threshold_alerts_once_across_instances(
    start_server: Callable[..., ServerThread],
    new_key: Callable[..., NewKey],
    receiver: Receiver,
    smtp: tuple[Mailbox, int],
) -> None:
    box, port = smtp
    hook = "hook-" + uuid.uuid4().hex[:6]
    alerts = {
        "thresholds": [0.5],
        "channels": [
            {"type": "webhook", "name": "hook", "url": receiver.url(hook)},
            {
                "type": "email",
                "name": "mail",
                "host": "127.0.0.1",
                "port": port,
                "starttls": False,
                "from": "strata@example.com",
                "to": ["ops@example.com"],
            },
        ],
    }
    first = await asyncio.to_thread(start_server, alerts=alerts)
    quota = first.runtime.chat.quota
    worst = quota.worst_case("fake", "chat", estimate_prompt_tokens(BODY), BODY["max_tokens"])
    budgets = {"user": {"daily_usd": str(worst * 10)}}
    servers = [
        await asyncio.to_thread(start_server, alerts=alerts, budgets=budgets) for _ in range(2)
    ]
    key = new_key(tenant="alert-" + uuid.uuid4().hex[:6], user="al")
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(60):  # about 3x what crossing 50% takes; stops at the cap
            r = await http.post(
                servers[i % 2].base_url + "/v1/chat/completions",
                json=BODY,
                headers={"authorization": f"Bearer {key.key}"},
            )
            if r.status_code == 429:
                break
            assert r.status_code == 200, r.text
    for _ in range(200):  # deliveries run in the background: up to 20 s
        if receiver.posts.get(hook) and box.messages:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # time for any duplicate to arrive
    [post] = receiver.posts[hook]
    assert post["kind"] == "budget_threshold" and post["scope"] == "user"
    assert post["scope_id"] == f"{key.tenant_id}/al" and post["threshold"] == 0.5
    [mail] = [m for m in box.messages if f"{key.tenant_id}/al" in str(m.get_payload())]
    assert "50%" in mail["Subject"] or "budget" in mail["Subject"].lower()
