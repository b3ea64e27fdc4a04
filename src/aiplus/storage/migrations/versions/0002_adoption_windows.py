"""Settled monthly adoption windows: per-organization sums, so adoption reports read one row per org and month.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adoption_window_months",
        sa.Column("window_days", sa.Integer, primary_key=True),
        sa.Column("month_end", sa.Date, primary_key=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "adoption_window_sums",
        sa.Column("window_days", sa.Integer, primary_key=True),
        sa.Column("month_end", sa.Date, primary_key=True),
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("tool_requests", sa.BigInteger, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("adoption_window_sums")
    op.drop_table("adoption_window_months")
