"""Alembic migrations and the engine URL helper."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url

from strata.security import audit as _audit  # noqa: F401  (its table)
from strata.storage import migrate
from strata.storage.engine import async_url, make_engine
from strata.storage.models import Base
from strata.storage.repositories import alerts as _alerts  # noqa: F401  (its tables)
from strata.storage.repositories import batches as _batches  # noqa: F401  (its tables)
from strata.storage.repositories import files as _files  # noqa: F401  (its tables)
from strata.storage.repositories import limits as _limits  # noqa: F401  (its tables)
from strata.storage.repositories import rag_ingestions as _ingestions  # noqa: F401  (its table)

TABLES = {"tenants", "users", "api_keys", "usage_records"}


def run_sync(url: str, fn: Any) -> Any:
    """Run ``fn(sync_connection)`` on a fresh engine (these tests are synchronous:
    migrations call asyncio.run themselves)."""

    async def go() -> Any:
        engine = make_engine(url, pool_size=1)
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def head() -> str:
    script = ScriptDirectory.from_config(migrate.alembic_config("postgresql://x@127.0.0.1/x"))
    (rev,) = script.get_heads()
    return rev


def tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def version(conn: Connection) -> str | None:
    if "alembic_version" not in tables(conn):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def test_test_database_is_at_head(database_url: str) -> None:
    found = run_sync(database_url, tables)
    assert found >= TABLES | {"alembic_version"}
    assert run_sync(database_url, version) == head()


def test_upgrade_again_is_a_no_op(database_url: str) -> None:
    migrate.upgrade(database_url)
    assert run_sync(database_url, version) == head()


# Tables kept in raw SQL (pgvector types the ORM does not know); their repository
# tests cover them.
RAW_SQL_TABLES = {"semantic_cache", "rag_collections", "rag_documents", "rag_chunks"}


def test_models_match_the_migrations(database_url: str) -> None:
    def include(name: str | None, type_: str, *_: Any) -> bool:
        # Filtered before reflection: the ORM would warn on the vector type.
        return type_ != "table" or name not in RAW_SQL_TABLES

    def diff(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"include_name": include})
        return list(compare_metadata(ctx, Base.metadata))

    assert run_sync(database_url, diff) == []


def test_indexes_and_constraints(database_url: str) -> None:
    def describe(conn: Connection) -> dict[str, Any]:
        insp = inspect(conn)
        return {
            "indexes": {i["name"]: i["column_names"] for i in insp.get_indexes("usage_records")},
            "usage_pk": insp.get_pk_constraint("usage_records")["constrained_columns"],
            "key_unique": [u["column_names"] for u in insp.get_unique_constraints("api_keys")],
            "key_fks": [
                (fk["referred_table"], fk["constrained_columns"])
                for fk in insp.get_foreign_keys("api_keys")
            ],
        }

    d = run_sync(database_url, describe)
    assert d["indexes"]["ix_usage_tenant_time"] == ["tenant_id", "created_at"]
    assert d["indexes"]["ix_usage_tenant_user_time"] == ["tenant_id", "user_id", "created_at"]
    assert d["usage_pk"] == ["id"]  # the id made in-process makes replays idempotent
    assert ["key_hash"] in d["key_unique"]
    assert ("users", ["tenant_id", "user_id"]) in d["key_fks"]


@pytest.fixture
def scratch_database(database_url: str) -> Iterator[str]:
    """A fresh, empty database on the same server, dropped afterwards."""
    name = "strata_mig_" + uuid.uuid4().hex[:12]

    def admin(sql: str) -> None:
        async def go() -> None:
            engine = make_engine(database_url, pool_size=1)
            try:
                async with engine.connect() as conn:
                    conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    await conn.execute(text(sql))
            finally:
                await engine.dispose()

        asyncio.run(go())

    try:
        admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # an external test database may not allow it
        pytest.skip(f"cannot create a scratch database: {type(exc).__name__}")
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrade_and_downgrade_on_an_empty_database(scratch_database: str) -> None:
    assert run_sync(scratch_database, tables) == set()
    migrate.upgrade(scratch_database)
    assert run_sync(scratch_database, tables) >= TABLES
    assert run_sync(scratch_database, version) == head()

    from alembic import command

    command.downgrade(migrate.alembic_config(scratch_database), "base")
    assert run_sync(scratch_database, tables) & TABLES == set()
    migrate.upgrade(scratch_database)
    assert run_sync(scratch_database, tables) >= TABLES


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@db:5432/strata", "postgresql+asyncpg://u:p@db:5432/strata"),
        ("postgres://u:p@db/strata", "postgresql+asyncpg://u:p@db/strata"),
        ("postgresql+psycopg2://u@db/strata", "postgresql+asyncpg://u@db/strata"),
        ("postgresql+psycopg://u@db/strata", "postgresql+asyncpg://u@db/strata"),
        ("postgresql+asyncpg://u@db/strata", "postgresql+asyncpg://u@db/strata"),
        # The password is kept (not masked) and stays URL-escaped.
        ("postgresql://u:p%40ss%2Fw@db/strata", "postgresql+asyncpg://u:p%40ss%2Fw@db/strata"),
        # pgserver's Unix-socket form.
        (
            "postgresql://postgres:@/postgres?host=/tmp/pg",
            "postgresql+asyncpg://postgres:@/postgres?host=/tmp/pg",
        ),
        ("sqlite:///x.db", "sqlite:///x.db"),  # not PostgreSQL: left alone
    ],
)
def test_async_url(url: str, expected: str) -> None:
    converted = async_url(url)
    assert "***" not in converted
    assert make_url(converted) == make_url(expected)


def test_async_url_round_trips_credentials() -> None:
    converted = make_url(async_url("postgresql://u:p%40ss%25w@db:6543/strata?sslmode=require"))
    assert converted.drivername == "postgresql+asyncpg"
    assert (converted.username, converted.password) == ("u", "p@ss%w")
    assert (converted.host, converted.port, converted.database) == ("db", 6543, "strata")
    assert converted.query == {"sslmode": "require"}


def test_alembic_config_escapes_percent_signs() -> None:
    cfg = migrate.alembic_config("postgresql://u:p%40ss@db/strata")
    assert cfg.get_main_option("sqlalchemy.url") == "postgresql+asyncpg://u:p%40ss@db/strata"
