"""Table definitions. Queries live in ``storage.repositories``, not here."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class User(Base):
    __tablename__ = "users"

    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "user_id"], ["users.tenant_id", "users.id"], ondelete="CASCADE"
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(200), default="")
    display_prefix: Mapped[str] = mapped_column(String(40))
    # SHA-256 hex of the key; the key itself is never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_routing: Mapped[bool] = mapped_column(Boolean, default=True)
    # Semantic cache opt-in for this key; None: as the alias says.
    semantic_cache: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Lifecycle (migration 0011); NULL: unrestricted. Scopes NULL: all but admin
    # unless is_admin. ip_allow: CIDRs as text.
    scopes: Mapped[list[str] | None] = mapped_column(ARRAY(Text), nullable=True)
    allowed_models: Mapped[list[str] | None] = mapped_column(ARRAY(Text), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ip_allow: Mapped[list[str] | None] = mapped_column(ARRAY(Text), nullable=True)
    # Rotation: the secret before the current one, accepted until previous_expires_at.
    previous_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    previous_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the current secret was issued by a rotation (NULL: at creation).
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UsageRecord(Base):
    """One row per API request that reached a model endpoint, whatever its outcome."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_tenant_time", "tenant_id", "created_at"),
        Index("ix_usage_tenant_user_time", "tenant_id", "user_id", "created_at"),
        Index(
            "ix_usage_tenant_end_user",
            "tenant_id",
            "end_user_hmac",
            "created_at",
            postgresql_where=text("end_user_hmac IS NOT NULL"),
        ),
        Index(
            "ix_usage_end_user_dek",
            "end_user_dek",
            postgresql_where=text("end_user_dek IS NOT NULL"),
        ),
    )

    # Generated in-process, so replaying a spilled batch can never double-count.
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tenant_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(40))
    alias: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=Decimal(0))
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(20))
    status_code: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    route: Mapped[str | None] = mapped_column(String(100))
    failed_cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=Decimal(0))
    cache: Mapped[str | None] = mapped_column(String(20))
    saved_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10), default=Decimal(0))
    fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    # W3C trace id (32 hex digits) of the request's trace; None when not traced.
    trace_id: Mapped[str | None] = mapped_column(String(32))
    # The client's end-user id (OpenAI's ``user``), encrypted (strata.usage.sealing).
    end_user_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    end_user_hmac: Mapped[str | None] = mapped_column(String(64))
    end_user_dek: Mapped[int | None] = mapped_column(Integer)
