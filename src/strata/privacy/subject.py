"""GDPR export and erasure for one data subject: a Strata user (tenant + user id).

Where a subject's data lives (docs/data-retention.md lists every class):

- PostgreSQL: ``users``, ``api_keys`` (ids, names, scopes; secrets only as hashes),
  ``usage_records``, ``semantic_cache`` (question and answer), ``limit_overrides``
  and ``budget_caps`` (subjects ``TENANT/USER`` and the user's key ids),
  ``alert_deliveries`` (scope ids of budget alerts).
- Redis: exact cache entries (listed under ``strata:cache:owner:{tenant}:{user}``),
  budget spend hashes and reservation records, rate-limit counters.
- PostgreSQL, RAG: ``rag_documents`` the user uploaded (source, text and metadata
  encrypted) and their ``rag_chunks`` (text encrypted, embeddings, hashed lexemes);
  ``rag_ingestions`` (background uploads: sources and metadata encrypted; their
  transient document copies are files of the user, purpose ``rag-ingest``).
- Files: the usage spill file (``<data_dir>/usage-spill.jsonl``) while PostgreSQL
  is unreachable.

Erasure deletes all of it except usage records, which billing needs: they keep
their numbers and lose the link to the person (user and key ids replaced by
``erased-<hash>`` pseudonyms salted with a random salt that is never stored;
request and trace ids dropped, since a client may have chosen them). The audit
log is append-only and never holds personal data; erasure adds a receipt to it
whose target is the subject id hashed with another unstored salt. Erasure is
idempotent: a second run finds nothing and still returns (and records) a receipt.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.cache.keys import owner_key
from strata.files.privacy import erase_subject as files_erase
from strata.files.privacy import export_subject as files_export
from strata.limits.overrides import user_subject
from strata.privacy import spill
from strata.rag.background import erase_ingestions as rag_ingestions_erase
from strata.rag.background import export_ingestions as rag_ingestions_export
from strata.rag.service import erase_documents as rag_erase
from strata.rag.service import export_documents as rag_export
from strata.security import audit
from strata.security.auth import REVOKED_CHANNEL
from strata.security.crypto import Crypto, DecryptError
from strata.storage.models import ApiKey, UsageRecord, User
from strata.storage.repositories import semantic_cache as semantic_repo
from strata.storage.repositories.alerts import alert_deliveries
from strata.storage.repositories.limits import budget_caps, limit_overrides
from strata.usage.sealing import end_user_aad

SPILL_FILE = "usage-spill.jsonl"
# Redis keys that name a subject: budget spend, rate-limit counters, alert dedupe
# markers (``{kind}:{scope}:{subject}:...``).
REDIS_PATTERNS = (
    "strata:budget:{scope}:{sid}:*",
    "strata:rl:{scope}:{sid}:*",
    "strata:alert:*:{scope}:{sid}:*",
)
# Reservation records list the hashes they reserved on, subjects included.
RESERVATION_PATTERN = "strata:budget:res:*"
# request_id is NOT NULL: erased rows carry this instead of the client's id.
ERASED_REQUEST_ID = "erased"
_SCAN_COUNT = 1000
_DELETE_BATCH = 500


@dataclass(frozen=True)
class Receipt:
    """Proof of an erasure, free of personal data."""

    id: str
    at: datetime
    subject_hash: str
    counts: dict[str, int] = field(default_factory=dict)
    audit_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["at"] = self.at.astimezone(UTC).isoformat()
        out["object"] = "privacy.erasure_receipt"
        return out


class _NoKeys:
    """Stands in for a key ring when none is at hand: nothing opens."""

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        raise DecryptError("no key ring")

    def decrypt_text(self, blob: bytes, aad: bytes) -> str:
        raise DecryptError("no key ring")


def _salted(value: str, salt: bytes) -> str:
    return hashlib.sha256(salt + value.encode()).hexdigest()


def _glob_escape(value: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in value)


def _iso(value: Any) -> Any:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value


def _decode(raw: bytes | str | None) -> Any:
    if raw is None:
        return None
    text_ = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        return json.loads(text_)
    except ValueError:
        return text_


async def _key_ids(engine: AsyncEngine, tenant: str, user: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(ApiKey.id).where(ApiKey.tenant_id == tenant, ApiKey.user_id == user)
        )
        ids = [r[0] for r in rows]
        used = await conn.execute(
            select(UsageRecord.key_id)
            .where(UsageRecord.tenant_id == tenant, UsageRecord.user_id == user)
            .distinct()
        )
    return list(dict.fromkeys([*ids, *(r[0] for r in used)]))


def _subjects(tenant: str, user: str, key_ids: list[str]) -> list[tuple[str, str]]:
    return [("user", user_subject(tenant, user)), *(("key", k) for k in key_ids)]


async def _redis_keys(
    redis: aioredis.Redis, tenant: str, user: str, key_ids: list[str]
) -> list[Any]:
    """Budget, rate-limit and alert keys of the subject and its keys, and budget
    reservation records naming them."""
    found: list[Any] = []
    for pattern in REDIS_PATTERNS:
        for scope, sid in _subjects(tenant, user, key_ids):
            match = pattern.format(scope=scope, sid=_glob_escape(sid))
            found += [k async for k in redis.scan_iter(match=match, count=_SCAN_COUNT)]
    needles = [f":{scope}:{sid}:" for scope, sid in _subjects(tenant, user, key_ids)]
    async for k in redis.scan_iter(match=RESERVATION_PATTERN, count=_SCAN_COUNT):
        try:
            value = await redis.get(k)
        except aioredis.ResponseError:  # not a string: not a record
            continue
        body = _decode(value)
        if isinstance(body, str) and any(n in body for n in needles):
            found.append(k)
    return found


async def _budget_spend(redis: aioredis.Redis, keys: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in keys:
        name = k.decode() if isinstance(k, bytes) else str(k)
        if not name.startswith("strata:budget:") or name.startswith("strata:budget:res:"):
            continue
        values = await redis.hgetall(k)
        out[name] = {
            (f.decode() if isinstance(f, bytes) else f): _decode(v) for f, v in values.items()
        }
    return out


def _spill_rows(
    data_dir: Path | None, tenant: str, user: str, crypto: Crypto | None
) -> list[dict[str, Any]]:
    path = data_dir / SPILL_FILE if data_dir is not None else None
    if path is None or not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("tenant_id") == tenant and row.get("user_id") == user:
            enc = row.get("end_user_enc")
            row["end_user_enc"] = base64.b64decode(enc) if enc else None
            _open_end_user(row, crypto)
            out.append(row)
    return out


def _open_end_user(row: dict[str, Any], crypto: Crypto | None) -> None:
    """An exported usage row names its end user in clear (ciphertext and index dropped)."""
    enc = row.pop("end_user_enc", None)
    row.pop("end_user_hmac", None)
    row.pop("end_user_dek", None)
    row["end_user"] = None
    if enc is not None and crypto is not None:
        with contextlib.suppress(DecryptError):
            row["end_user"] = crypto.decrypt_text(
                bytes(enc), end_user_aad(row["tenant_id"], row["id"])
            )


async def export(
    engine: AsyncEngine,
    redis: aioredis.Redis,
    tenant: str,
    user: str,
    *,
    actor: str = "system",
    request_id: str | None = None,
    data_dir: Path | None = None,
    crypto: Crypto | None = None,
) -> dict[str, Any]:
    """Everything Strata stores about a subject, as JSON-ready data (recorded in the
    audit log as ``privacy.export``, target hashed like an erasure receipt).

    ``crypto``: the key ring that opens cached questions and answers (encrypted at
    rest); without it, or for an entry under a retired key, they export as null."""
    key_ids = await _key_ids(engine, tenant, user)
    subjects = _subjects(tenant, user, key_ids)
    async with engine.connect() as conn:
        user_row = (
            await conn.execute(
                select(User.created_at).where(User.tenant_id == tenant, User.id == user)
            )
        ).first()
        keys = (
            await conn.execute(
                select(
                    ApiKey.id,
                    ApiKey.name,
                    ApiKey.display_prefix,
                    ApiKey.is_admin,
                    ApiKey.scopes,
                    ApiKey.allowed_models,
                    ApiKey.ip_allow,
                    ApiKey.created_at,
                    ApiKey.expires_at,
                    ApiKey.revoked_at,
                    ApiKey.last_used_at,
                    ApiKey.rotated_at,
                ).where(ApiKey.tenant_id == tenant, ApiKey.user_id == user)
            )
        ).all()
        usage = (
            await conn.execute(
                select(UsageRecord)
                .where(UsageRecord.tenant_id == tenant, UsageRecord.user_id == user)
                .order_by(UsageRecord.created_at)
            )
        ).all()
        overrides: list[dict[str, Any]] = []
        for kind, table, col in (
            ("limits", limit_overrides, "rules"),
            ("budgets", budget_caps, "caps"),
        ):
            for scope, sid in subjects:
                rows = await conn.execute(
                    select(table).where(table.c.scope == scope, table.c.subject == sid)
                )
                overrides += [
                    {"kind": kind, "scope": scope, "subject": sid, "values": r._mapping[col]}
                    for r in rows
                ]
    semantic: list[dict[str, Any]] = []
    if await semantic_repo.available(engine):
        semantic = await semantic_repo.rows_for_user(engine, tenant, user, crypto or _NoKeys())
    rag_documents = await rag_export(engine, crypto or _NoKeys(), tenant, user)
    files_batches = await files_export(engine, crypto or _NoKeys(), tenant, user)
    rag_ingestions = await rag_ingestions_export(engine, crypto or _NoKeys(), tenant, user)
    exact = []
    for k in sorted(await redis.smembers(owner_key(tenant, user))):
        value = await redis.get(k)
        if value is None:
            continue
        name = k.decode() if isinstance(k, bytes) else str(k)
        if crypto is not None:
            try:
                raw = value if isinstance(value, bytes) else value.encode()
                value = crypto.decrypt(raw, name.encode())
            except DecryptError:
                value = None
        exact.append({"key": name, "entry": _decode(value)})
    spend = await _budget_spend(redis, await _redis_keys(redis, tenant, user, key_ids))
    usage_json = [{name: _iso(value) for name, value in r._mapping.items()} for r in usage]
    for row in usage_json:
        _open_end_user(row, crypto)
        row["id"] = str(row["id"])
        for money in ("cost_usd", "failed_cost_usd", "saved_usd"):
            row[money] = str(row[money])
    result = {
        "object": "privacy.export",
        "generated_at": datetime.now(UTC).isoformat(),
        "subject": {"tenant_id": tenant, "user_id": user},
        "user": {"created_at": _iso(user_row[0])} if user_row else None,
        "api_keys": [{k: _iso(v) for k, v in r._mapping.items()} for r in keys],
        "usage_records": usage_json,
        "usage_records_spilled": _spill_rows(data_dir, tenant, user, crypto),
        "semantic_cache": semantic,
        "rag_documents": rag_documents,
        "rag_ingestions": rag_ingestions,
        "files": files_batches["files"],
        "batches": files_batches["batches"],
        "exact_cache": exact,
        "overrides": overrides,
        "budget_spend": spend,
    }
    salt = secrets.token_bytes(32)
    await audit.record(
        engine,
        tenant=tenant,
        actor=actor,
        action="privacy.export",
        target=f"subject:{_salted(user_subject(tenant, user), salt)[:32]}",
        request_id=request_id,
        details={
            "usage_records": len(usage_json),
            "semantic_cache": len(semantic),
            "rag_documents": len(rag_documents),
            "rag_ingestions": len(rag_ingestions),
            "files": len(files_batches["files"]),
            "batches": len(files_batches["batches"]),
            "exact_cache": len(exact),
        },
    )
    return result


async def _delete_redis(redis: aioredis.Redis, keys: list[Any]) -> int:
    deleted = 0
    for i in range(0, len(keys), _DELETE_BATCH):
        deleted += int(await redis.delete(*keys[i : i + _DELETE_BATCH]))
    return deleted


def _erase_spill(data_dir: Path | None, tenant: str, user: str, pseudo: dict[str, str]) -> int:
    """Pseudonymise the subject's rows in the spill file (rewritten atomically)."""

    def change(row: dict[str, Any]) -> bool:
        if row.get("tenant_id") != tenant or row.get("user_id") != user:
            return False
        row["user_id"] = pseudo[""]
        row["key_id"] = pseudo.get(str(row.get("key_id")), pseudo[""])
        row["request_id"] = ERASED_REQUEST_ID
        row["trace_id"] = None
        row.update(end_user_enc=None, end_user_hmac=None, end_user_dek=None)
        return True

    return spill.rewrite(data_dir, change)


async def erase(
    engine: AsyncEngine,
    redis: aioredis.Redis,
    tenant: str,
    user: str,
    *,
    actor: str = "system",
    request_id: str | None = None,
    data_dir: Path | None = None,
) -> Receipt:
    """Delete or irreversibly anonymise everything about a subject; a receipt."""
    salt = secrets.token_bytes(32)  # never stored: pseudonyms cannot be linked back
    subject = user_subject(tenant, user)
    key_ids = await _key_ids(engine, tenant, user)
    subjects = _subjects(tenant, user, key_ids)
    pseudo = {"": "erased-" + _salted(subject, salt)[:16]}
    pseudo |= {k: "erased-" + _salted(f"{subject}/{k}", salt)[:16] for k in key_ids}
    counts: dict[str, int] = {}

    # Caches first: nothing new is served from them while the rest goes.
    counts["semantic_cache"] = (
        await semantic_repo.delete_user(engine, tenant, user)
        if await semantic_repo.available(engine)
        else 0
    )
    # Documents the user uploaded, with their chunks and vectors.
    counts["rag_documents"], counts["rag_chunks"] = await rag_erase(engine, tenant, user)
    counts["rag_ingestions"] = await rag_ingestions_erase(engine, tenant, user)
    # Batches (with their results) and files: uploaded inputs and produced outputs.
    counts.update(await files_erase(engine, tenant, user))
    owner = owner_key(tenant, user)
    counts["exact_cache"] = await _delete_redis(redis, list(await redis.smembers(owner)))
    await redis.delete(owner)

    # Keys stop working everywhere (the revocation is published to every instance).
    async with engine.begin() as conn:
        rows = await conn.execute(
            update(ApiKey)
            .where(ApiKey.tenant_id == tenant, ApiKey.user_id == user, ApiKey.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
            .returning(ApiKey.key_hash, ApiKey.previous_hash)
        )
        hashes = [h for r in rows for h in r if h]
    for h in hashes:
        await redis.publish(REVOKED_CHANNEL, h)

    async with engine.begin() as conn:
        usage = 0
        for kid in key_ids:
            result = await conn.execute(
                update(UsageRecord)
                .where(
                    UsageRecord.tenant_id == tenant,
                    UsageRecord.user_id == user,
                    UsageRecord.key_id == kid,
                )
                .values(
                    user_id=pseudo[""],
                    key_id=pseudo[kid],
                    request_id=ERASED_REQUEST_ID,
                    trace_id=None,
                    end_user_enc=None,
                    end_user_hmac=None,
                    end_user_dek=None,
                )
            )
            usage += result.rowcount
        counts["usage_records_pseudonymised"] = usage
        n_over = 0
        for table in (limit_overrides, budget_caps):
            for scope, sid in subjects:
                result = await conn.execute(
                    delete(table).where(table.c.scope == scope, table.c.subject == sid)
                )
                n_over += result.rowcount
        counts["overrides"] = n_over
        n_alerts = 0
        for scope, sid in subjects:
            result = await conn.execute(
                delete(alert_deliveries).where(
                    alert_deliveries.c.scope == scope, alert_deliveries.c.scope_id == sid
                )
            )
            n_alerts += result.rowcount
        counts["alert_deliveries"] = n_alerts
        result = await conn.execute(
            delete(ApiKey).where(ApiKey.tenant_id == tenant, ApiKey.user_id == user)
        )
        counts["api_keys"] = result.rowcount
        result = await conn.execute(delete(User).where(User.tenant_id == tenant, User.id == user))
        counts["users"] = result.rowcount

    counts["redis_limit_keys"] = await _delete_redis(
        redis, await _redis_keys(redis, tenant, user, key_ids)
    )
    counts["spilled_usage_records"] = _erase_spill(data_dir, tenant, user, pseudo)

    return await issue_receipt(
        engine,
        tenant=tenant,
        kind="subject",
        subject=subject,
        counts=counts,
        actor=actor,
        request_id=request_id,
    )


async def issue_receipt(
    engine: AsyncEngine,
    *,
    tenant: str,
    kind: str,
    subject: str,
    counts: dict[str, int],
    actor: str,
    request_id: str | None,
) -> Receipt:
    """The erasure's receipt, recorded in the audit log as ``privacy.erase`` with
    target ``{kind}:{hash}``: the subject hashed with a salt that is never stored."""
    receipt = Receipt(
        id="erase_" + uuid.uuid4().hex,
        at=datetime.now(UTC),
        subject_hash=_salted(subject, secrets.token_bytes(32))[:32],
        counts=counts,
    )
    entry = await audit.record(
        engine,
        tenant=tenant,
        actor=actor,
        action="privacy.erase",
        target=f"{kind}:{receipt.subject_hash}",
        request_id=request_id,
        details={"receipt": receipt.id, **counts},
    )
    return Receipt(receipt.id, receipt.at, receipt.subject_hash, counts, entry.id)
