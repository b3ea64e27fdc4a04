"""Billing: tariff versions, the time-of-use rollup (backfilled from the ledger), closed months and statements.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tariff_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("effective_from", TS, nullable=False, unique=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("hour_bands", sa.Text, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("adopted_at", TS, nullable=False),
    )
    op.create_table(
        "usage_tou",
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("band", sa.String(32), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_micros", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_usage_tou_org_month", "usage_tou", ["org_id", "month"])
    op.create_table(
        "billing_months",
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("closed_at", TS, nullable=False),
    )
    op.create_table(
        "billing_statements",
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("charge_micros", sa.BigInteger, nullable=False),
        sa.Column("closing_micros", sa.BigInteger, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
    )
    op.create_table(
        "billing_adjustments",
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("for_month", sa.String(7), primary_key=True),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
    )
    # Usage recorded before any tariff: version 0, the UTC month, no band (billed at its metered list price).
    month = (
        "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM')"
        if op.get_bind().dialect.name == "postgresql"
        else "strftime('%Y-%m', started_at)"
    )
    op.execute(
        "INSERT INTO usage_tou (month, org_id, version_id, model, band, requests, prompt_tokens, "
        "completion_tokens, cost_micros) "
        f"SELECT {month}, org_id, 0, model, '', count(*), sum(prompt_tokens), sum(completion_tokens), "
        "sum(cost_micros) FROM usage_events WHERE prompt_tokens + completion_tokens > 0 "
        f"GROUP BY {month}, org_id, model"
    )


def downgrade() -> None:
    for name in (
        "billing_adjustments",
        "billing_statements",
        "billing_months",
        "usage_tou",
        "tariff_versions",
    ):
        op.drop_table(name)
