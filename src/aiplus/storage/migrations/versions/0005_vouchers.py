"""Vouchers: funders' programmes, vouchers issued to organizations, and the write-offs of closed months.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "voucher_programmes",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("funder", sa.String(200), nullable=False),
        sa.Column("pool_micros", sa.BigInteger, nullable=False),
        sa.Column("share_bp", sa.Integer, nullable=False),
        sa.Column("cap_month_micros", sa.BigInteger, nullable=True),
        sa.Column("cap_year_micros", sa.BigInteger, nullable=True),
        sa.Column("valid_from", sa.Date, nullable=False),
        sa.Column("valid_until", sa.Date, nullable=False),
        sa.Column("eligibility", sa.Text, nullable=False),
        sa.Column("stacks", sa.Boolean, nullable=False),
        sa.Column("max_combined_bp", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "vouchers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("programme_id", sa.String(64), sa.ForeignKey("voucher_programmes.id"), nullable=False),
        sa.Column("org_id", sa.String(64), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("valid_from", sa.Date, nullable=False),
        sa.Column("expires_on", sa.Date, nullable=False),
        sa.Column("issued_at", TS, nullable=False),
        sa.Column("revoked_on", sa.Date, nullable=True),
        sa.Column("note", sa.String(200), nullable=False, server_default=""),
    )
    op.create_index("ix_vouchers_org_id", "vouchers", ["org_id"])
    op.create_table(
        "voucher_writeoffs",
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("voucher_id", sa.Integer, primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("programme_id", sa.String(64), nullable=False),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("charge_micros", sa.BigInteger, nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_voucher_writeoffs_programme_id", "voucher_writeoffs", ["programme_id"])


def downgrade() -> None:
    for name in ("voucher_writeoffs", "vouchers", "voucher_programmes"):
        op.drop_table(name)
