"""GDPR export and erasure for an end user: the person a client names in OpenAI's
``user`` field (tenant + that id), as opposed to a Strata user (``subject.py``).

Strata keeps an end-user id in one place only: usage records (encrypted, with a
keyed blind index; ``strata.usage.sealing``), in PostgreSQL and, while it is down,
in the spill file. ``user`` is not part of any cache key and caches are owned by the
Strata user, so no cache entry can be linked to an end user. Erasure removes the
link (the encrypted id and its index) and the client-chosen request and trace ids;
the numbers stay for billing.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.privacy import spill
from strata.privacy.subject import ERASED_REQUEST_ID, Receipt, _iso, _salted, issue_receipt
from strata.security import audit
from strata.security.crypto import Crypto
from strata.storage.models import UsageRecord
from strata.usage.sealing import COLUMNS, end_user_index

# What an export shows of a usage record (no other person's data, no ciphertext).
EXPORTED = (
    "id",
    "created_at",
    "request_id",
    "endpoint",
    "alias",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "status",
)


def _hashed(tenant: str, end_user: str) -> str:
    # Salted with a salt that is never stored: proves an action, names no one.
    return _salted(f"{tenant}\x00{end_user}", secrets.token_bytes(32))[:32]


def _matches(row: dict[str, Any], tenant: str, index: str) -> bool:
    return row.get("tenant_id") == tenant and row.get("end_user_hmac") == index


async def export(
    engine: AsyncEngine,
    tenant: str,
    end_user: str,
    crypto: Crypto,
    *,
    actor: str = "system",
    request_id: str | None = None,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """The usage records that name the end user (recorded as ``privacy.export``)."""
    index = end_user_index(crypto, tenant, end_user)
    cols = [getattr(UsageRecord, c) for c in EXPORTED]
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(*cols)
                .where(UsageRecord.tenant_id == tenant, UsageRecord.end_user_hmac == index)
                .order_by(UsageRecord.created_at)
            )
        ).all()
    usage = [{k: _jsonable(v) for k, v in r._mapping.items()} for r in rows]
    spilled = [
        {k: row.get(k) for k in EXPORTED}
        for row in spill.rows(data_dir)
        if _matches(row, tenant, index)
    ]
    await audit.record(
        engine,
        tenant=tenant,
        actor=actor,
        action="privacy.export",
        target=f"end_user:{_hashed(tenant, end_user)}",
        request_id=request_id,
        details={"usage_records": len(usage), "spilled_usage_records": len(spilled)},
    )
    return {
        "object": "privacy.export",
        "generated_at": datetime.now(UTC).isoformat(),
        "subject": {"tenant_id": tenant, "end_user": end_user},
        "usage_records": usage,
        "usage_records_spilled": spilled,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return _iso(value)
    if value is not None and type(value).__name__ == "Decimal":
        return str(value)
    return value


def _erase_spill(data_dir: Path | None, tenant: str, index: str) -> int:
    def change(row: dict[str, Any]) -> bool:
        if not _matches(row, tenant, index):
            return False
        row.update(dict.fromkeys(COLUMNS), request_id=ERASED_REQUEST_ID, trace_id=None)
        return True

    return spill.rewrite(data_dir, change)


async def erase(
    engine: AsyncEngine,
    tenant: str,
    end_user: str,
    crypto: Crypto,
    *,
    actor: str = "system",
    request_id: str | None = None,
    data_dir: Path | None = None,
) -> Receipt:
    """Unlink the end user from every usage record; idempotent; a receipt."""
    index = end_user_index(crypto, tenant, end_user)
    async with engine.begin() as conn:
        result = await conn.execute(
            update(UsageRecord)
            .where(UsageRecord.tenant_id == tenant, UsageRecord.end_user_hmac == index)
            .values(
                end_user_enc=None,
                end_user_hmac=None,
                end_user_dek=None,
                request_id=ERASED_REQUEST_ID,
                trace_id=None,
            )
        )
        counts = {"usage_records_unlinked": result.rowcount}
    counts["spilled_usage_records"] = _erase_spill(data_dir, tenant, index)
    return await issue_receipt(
        engine,
        tenant=tenant,
        kind="end_user",
        subject=f"{tenant}\x00{end_user}",
        counts=counts,
        actor=actor,
        request_id=request_id,
    )
