"""The audit log: an append-only, hash-chained record of admin actions.

Each row's ``hash`` is sha256(prev_hash + canonical JSON of the entry) (see
strata.security.audit), so editing or removing a row breaks the chain and
``strata audit verify`` names the first bad entry.

A trigger rejects UPDATE, DELETE and TRUNCATE on the table, whoever runs them.
Retention purges (issue 7, item 6) will go through a privileged SECURITY DEFINER
function that deletes the oldest rows and records the hash of the last purged
row as the new chain anchor; until then nothing deletes audit rows.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", TS, server_default=sa.func.now(), nullable=False),
        # NULL for actions that belong to no tenant (config.reload).
        sa.Column("tenant_id", sa.String(64), nullable=True),
        # An admin key id, or "cli:<os user>".
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        # Ids and settings only: never secrets or personal data.
        sa.Column("details", postgresql.JSONB, nullable=True),
        sa.Column("prev_hash", sa.CHAR(64), nullable=False),
        sa.Column("hash", sa.CHAR(64), nullable=False),
        sa.UniqueConstraint("hash", name="uq_audit_log_hash"),
    )
    op.create_index("ix_audit_tenant_id", "audit_log", ["tenant_id", "id"])
    op.execute(
        """
        CREATE FUNCTION audit_log_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only (% rejected)', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER audit_log_no_update_delete
        BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()
        """
    )
    op.execute(
        """
        CREATE TRIGGER audit_log_no_truncate
        BEFORE TRUNCATE ON audit_log
        FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()
        """
    )


def downgrade() -> None:
    op.drop_table("audit_log")  # drops its triggers
    op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
