"""The service tier a request was served in (OpenAI's ``service_tier``: priority, default, flex) in the ledger.

``usage_events`` gains the column; rows recorded before it read as ``default`` (the only band there was). The
two rollups gain it as the last column of their primary keys, so usage reports and statements can split by it:
each is copied into a new table (SQLite cannot change a primary key in place), existing rows as ``default``
rows. The downgrade copies them back, summing each key's service tiers into one row.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BIG = sa.BigInteger


def _service_tier(primary_key: bool) -> sa.Column:
    return sa.Column(
        "service_tier", sa.String(16), primary_key=primary_key, nullable=False, server_default="default"
    )


def _daily(with_service_tier: bool) -> list:
    return [
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        *([_service_tier(True)] if with_service_tier else []),
        sa.Column("requests", BIG, nullable=False),
        sa.Column("tool_requests", BIG, nullable=False, server_default="0"),
        sa.Column("prompt_tokens", BIG, nullable=False),
        sa.Column("completion_tokens", BIG, nullable=False),
        sa.Column("cost_micros", BIG, nullable=False),
    ]


def _tou(with_service_tier: bool) -> list:
    return [
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("band", sa.String(32), primary_key=True),
        *([_service_tier(True)] if with_service_tier else []),
        sa.Column("requests", BIG, nullable=False),
        sa.Column("prompt_tokens", BIG, nullable=False),
        sa.Column("completion_tokens", BIG, nullable=False),
        sa.Column("cost_micros", BIG, nullable=False),
    ]


# table -> (its columns, with or without the service tier; the index on it; the counters summed on downgrade)
ROLLUPS = {
    "usage_daily": (
        _daily,
        ("ix_usage_daily_org_day", ["org_id", "day"]),
        ("requests", "tool_requests", "prompt_tokens", "completion_tokens", "cost_micros"),
    ),
    "usage_tou": (
        _tou,
        ("ix_usage_tou_org_month", ["org_id", "month"]),
        ("requests", "prompt_tokens", "completion_tokens", "cost_micros"),
    ),
}


def _rebuild(table: str, *, with_service_tier: bool) -> None:
    """Copy ``table`` into a new one with (or without) the service tier in its key, then put it in its place.

    Up, every row keeps its counters and becomes a ``default`` row; down, a key's rows are summed into one."""
    columns, (index, indexed), sums = ROLLUPS[table]
    new_columns = columns(with_service_tier)
    keys = [c.name for c in new_columns if c.primary_key]
    key_list = ", ".join(keys)
    new = f"{table}_new"
    op.create_table(new, *new_columns)
    if with_service_tier:
        names = ", ".join(c.name for c in columns(False))
        op.execute(f"INSERT INTO {new} ({names}) SELECT {names} FROM {table}")
    else:
        summed = ", ".join(f"sum({name})" for name in sums)
        op.execute(
            f"INSERT INTO {new} ({key_list}, {', '.join(sums)}) "
            f"SELECT {key_list}, {summed} FROM {table} GROUP BY {key_list}"
        )
    op.drop_table(table)  # its index and primary key go with it, freeing their names
    op.rename_table(new, table)
    if op.get_bind().dialect.name == "postgresql":  # the key keeps its creation name; give it the usual one
        op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT {new}_pkey TO {table}_pkey")
    op.create_index(index, table, indexed)


def upgrade() -> None:
    op.add_column("usage_events", _service_tier(False))
    for table in ROLLUPS:
        _rebuild(table, with_service_tier=True)


def downgrade() -> None:
    for table in ROLLUPS:
        _rebuild(table, with_service_tier=False)
    with op.batch_alter_table("usage_events") as batch:
        batch.drop_column("service_tier")
