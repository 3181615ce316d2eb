"""The audit log: an append-only, tamper-evident record of admin actions.

Each entry (``audit_log``, migration 0010) holds when, which tenant, who (an
admin key id, or ``cli:<os user>``), what (``key.create``, ``limits.set``, …),
the target, the request id and a small JSON ``details`` (ids and settings only:
never secrets or personal data).

Tamper evidence: ``hash = sha256(prev_hash + canonical JSON of the entry)``, with
``prev_hash`` the previous entry's hash (64 zeros for the first). Appends take a
transaction-scoped advisory lock, so concurrent writers on any number of
instances keep one chain, never a fork. ``verify`` walks the chain in id order and
names the first entry whose hash or link does not match: an edited, inserted or
removed row (except the very last one; keep an external copy of the latest hash
for that) shows up there.

Append-only: a trigger rejects UPDATE, DELETE and TRUNCATE. Retention purges will
go through a privileged SECURITY DEFINER function (later), not through this code.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    CHAR,
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    String,
    Table,
    UniqueConstraint,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.observability.logging import request_id_var
from strata.security.keys import Principal
from strata.storage.models import ApiKey, Base

GENESIS = "0" * 64
# pg_advisory_xact_lock key for appends ("strata audit" in a bigint).
_LOCK_KEY = 0x5354_5241_5441_4155

ACTIONS = (
    "key.create",
    "key.revoke",
    "key.rotate",
    "limits.set",
    "limits.clear",
    "budgets.set",
    "budgets.clear",
    "cache.forget",
    "privacy.export",
    "privacy.erase",
    "config.reload",
)

# Created by migration 0010 (one metadata: migrations are checked against it).
audit_log = Table(
    "audit_log",
    Base.metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("tenant_id", String(64), nullable=True),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=True),
    Column("request_id", String(64), nullable=True),
    Column("details", JSONB, nullable=True),
    Column("prev_hash", CHAR(64), nullable=False),
    Column("hash", CHAR(64), nullable=False),
    UniqueConstraint("hash", name="uq_audit_log_hash"),
    Index("ix_audit_tenant_id", "tenant_id", "id"),
)


@dataclass(frozen=True)
class Entry:
    id: int
    at: datetime
    tenant_id: str | None
    actor: str
    action: str
    target: str | None
    request_id: str | None
    details: dict[str, Any] | None
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "audit_entry",
            "id": self.id,
            "at": self.at.astimezone(UTC).isoformat(),
            "tenant_id": self.tenant_id,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "request_id": self.request_id,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def cli_actor() -> str:
    """The actor of a CLI command: ``cli:<os user>``."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment
        user = "unknown"
    return f"cli:{user}"


def canonical(
    *,
    id: int,
    at: datetime,
    tenant_id: str | None,
    actor: str,
    action: str,
    target: str | None,
    request_id: str | None,
    details: dict[str, Any] | None,
) -> str:
    """The canonical JSON of an entry: sorted keys, no spaces, UTC microseconds."""
    return json.dumps(
        {
            "id": id,
            "at": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "tenant_id": tenant_id,
            "actor": actor,
            "action": action,
            "target": target,
            "request_id": request_id,
            "details": details,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def chain_hash(prev_hash: str, entry_json: str) -> str:
    return hashlib.sha256((prev_hash + entry_json).encode()).hexdigest()


async def record_admin(
    engine: AsyncEngine,
    principal: Principal,
    action: str,
    target: str | None,
    details: dict[str, Any] | None = None,
) -> Entry:
    """Record an admin API action: the caller's tenant and key id, this request's id."""
    return await record(
        engine,
        tenant=principal.tenant_id,
        actor=principal.key_id,
        action=action,
        target=target,
        request_id=request_id_var.get(),
        details=details,
    )


async def record_cli_change(
    engine: AsyncEngine,
    action: str,
    scope: str,
    subject: str,
    details: dict[str, Any] | None = None,
) -> Entry:
    """Record a CLI change of a limits/budgets subject (actor ``cli:<os user>``)."""
    return await record(
        engine,
        tenant=await subject_tenant(engine, scope, subject),
        actor=cli_actor(),
        action=action,
        target=f"{scope}:{subject}",
        details=details,
    )


async def subject_tenant(engine: AsyncEngine, scope: str, subject: str) -> str | None:
    """The tenant a limits/budgets subject belongs to (None: an alias, deployment-wide)."""
    if scope == "key":
        async with engine.connect() as conn:
            return (
                await conn.execute(select(ApiKey.tenant_id).where(ApiKey.id == subject))
            ).scalar_one_or_none()
    if scope in ("user", "tenant"):
        return subject.split("/", 1)[0]
    return None


def _entry(row: Any) -> Entry:
    m = row._mapping
    return Entry(**{c.name: m[c.name] for c in audit_log.c})


async def record(
    engine: AsyncEngine,
    *,
    tenant: str | None,
    actor: str,
    action: str,
    target: str | None,
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> Entry:
    """Append one entry to the chain and return it."""
    # Round-trip through JSON so the hash covers exactly what JSONB gives back.
    details = json.loads(json.dumps(details)) if details is not None else None
    async with engine.begin() as conn:
        # One appender at a time across every instance; released at commit.
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        prev = (
            await conn.execute(select(audit_log.c.hash).order_by(audit_log.c.id.desc()).limit(1))
        ).scalar_one_or_none()
        prev_hash = prev or GENESIS
        new_id = (
            await conn.execute(text("SELECT nextval(pg_get_serial_sequence('audit_log', 'id'))"))
        ).scalar_one()
        # Microseconds, as PostgreSQL stores them.
        at = datetime.now(UTC)
        fields: dict[str, Any] = {
            "id": int(new_id),
            "at": at,
            "tenant_id": tenant,
            "actor": actor,
            "action": action,
            "target": target,
            "request_id": request_id,
            "details": details,
        }
        digest = chain_hash(prev_hash, canonical(**fields))
        await conn.execute(audit_log.insert().values(**fields, prev_hash=prev_hash, hash=digest))
    return Entry(**fields, prev_hash=prev_hash, hash=digest)


async def verify(engine: AsyncEngine) -> tuple[bool, int | None]:
    """Walk the whole chain: (True, None), or (False, id of the first bad entry)."""
    prev_hash = GENESIS
    async with engine.connect() as conn:
        result = await conn.stream(select(audit_log).order_by(audit_log.c.id))
        async for row in result:
            e = _entry(row)
            expected = chain_hash(
                prev_hash,
                canonical(
                    id=e.id,
                    at=e.at,
                    tenant_id=e.tenant_id,
                    actor=e.actor,
                    action=e.action,
                    target=e.target,
                    request_id=e.request_id,
                    details=e.details,
                ),
            )
            if e.prev_hash != prev_hash or e.hash != expected:
                return False, e.id
            prev_hash = e.hash
    return True, None


async def list_entries(
    engine: AsyncEngine,
    tenant: str | None = None,
    limit: int = 100,
    action: str | None = None,
) -> list[Entry]:
    """The newest entries first, optionally of one tenant and/or one action."""
    stmt = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if tenant is not None:
        stmt = stmt.where(audit_log.c.tenant_id == tenant)
    if action is not None:
        stmt = stmt.where(audit_log.c.action == action)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [_entry(r) for r in rows]
