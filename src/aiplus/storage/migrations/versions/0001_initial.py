"""Initial schema: orgs, keys, secrets, usage ledger and rollups, adoption register.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("sector", sa.String(32), nullable=False),
        sa.Column("region", sa.String(100), nullable=False, server_default=""),
        sa.Column("employees", sa.Integer, nullable=True),
        sa.Column("size_class", sa.String(8), nullable=True),
        sa.Column("tier", sa.String(32), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(64), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("models", sa.Text, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_index("ix_api_keys_org_id", "api_keys", ["org_id"])
    op.create_table(
        "secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "usage_events",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False, server_default="chat"),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("used_tools", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ttft_ms", sa.Integer, nullable=True),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("cost_micros", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_usage_events_org_started", "usage_events", ["org_id", "started_at"])
    op.create_index("ix_usage_events_started", "usage_events", ["started_at"])
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("tool_requests", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_micros", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_usage_daily_org_day", "usage_daily", ["org_id", "day"])
    op.create_table(
        "register_orgs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("sector", sa.String(32), nullable=False),
        sa.Column("region", sa.String(100), nullable=False),
        sa.Column("employees", sa.Integer, nullable=False),
        sa.Column("size_class", sa.String(8), nullable=False),
    )
    op.create_index("ix_register_orgs_sector", "register_orgs", ["sector"])
    op.create_table(
        "adoption_observations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sector", sa.String(32), nullable=False),
        sa.Column("date", sa.Date, nullable=False),
        sa.Column("penetration", sa.Float, nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    for name in (
        "adoption_observations",
        "register_orgs",
        "usage_daily",
        "usage_events",
        "secrets",
        "api_keys",
        "orgs",
    ):
        op.drop_table(name)
