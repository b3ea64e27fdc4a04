"""The database schema (SQLAlchemy Core). Every change here needs an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

orgs = sa.Table(
    "orgs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("sector", sa.String(32), nullable=False),
    sa.Column("region", sa.String(100), nullable=False, server_default=""),
    sa.Column("employees", sa.Integer, nullable=True),
    sa.Column("size_class", sa.String(8), nullable=True),  # micro, small, medium, large
    sa.Column("tier", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(64), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False, server_default=""),
    sa.Column("prefix", sa.String(16), nullable=False),  # shown to people: "aip_AbCd"
    sa.Column("digest", sa.String(64), nullable=False, unique=True),  # hex HMAC-SHA256 of the key
    sa.Column("models", sa.Text, nullable=True),  # JSON list of allowed model ids; NULL = all
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),  # "server_secret", "admin_token_digest"
    sa.Column("value", sa.Text, nullable=False),
)

usage_events = sa.Table(
    "usage_events",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),  # unique: inserting twice is a no-op
    sa.Column("org_id", sa.String(64), nullable=False),
    sa.Column("key_id", sa.String(40), nullable=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("endpoint", sa.String(32), nullable=False, server_default="chat"),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # ok, error, cancelled, rejected
    sa.Column("used_tools", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ttft_ms", sa.Integer, nullable=True),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Column("cost_micros", sa.BigInteger, nullable=False),
    # the band the request was served in (OpenAI's service_tier): priority, default or flex
    sa.Column("service_tier", sa.String(16), nullable=False, server_default="default"),
    sa.Index("ix_usage_events_org_started", "org_id", "started_at"),
    sa.Index("ix_usage_events_started", "started_at"),
)

# One row per (day, org, model, status, service tier): reports and adoption read this, never the raw events.
usage_daily = sa.Table(
    "usage_daily",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("service_tier", sa.String(16), primary_key=True, server_default="default"),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("tool_requests", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_micros", sa.BigInteger, nullable=False),
    sa.Index("ix_usage_daily_org_day", "org_id", "day"),
)

# All organizations in scope of the adoption measure, users or not (the denominator).
register_orgs = sa.Table(
    "register_orgs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # matches orgs.id for organizations that are tenants
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("sector", sa.String(32), nullable=False, index=True),
    sa.Column("region", sa.String(100), nullable=False),
    sa.Column("employees", sa.Integer, nullable=False),
    sa.Column("size_class", sa.String(8), nullable=False),
)

# Penetration figures from outside (surveys, statistics offices) to overlay and to fit on.
adoption_observations = sa.Table(
    "adoption_observations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sector", sa.String(32), nullable=False),
    sa.Column("date", sa.Date, nullable=False),
    sa.Column("penetration", sa.Float, nullable=False),  # a share in [0, 1]; not money
    sa.Column("source", sa.String(200), nullable=False),
)

# Settled monthly adoption windows, summed once per organization (see adoption/snapshots.py).
adoption_window_months = sa.Table(
    "adoption_window_months",
    metadata,
    sa.Column("window_days", sa.Integer, primary_key=True),
    sa.Column("month_end", sa.Date, primary_key=True),
    sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
)

adoption_window_sums = sa.Table(
    "adoption_window_sums",
    metadata,
    sa.Column("window_days", sa.Integer, primary_key=True),
    sa.Column("month_end", sa.Date, primary_key=True),
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("tool_requests", sa.BigInteger, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
)

# Billing (src/aiplus/billing): adopted tariff versions, never edited; the time-of-use rollup written with the
# events; frozen statements of closed months and the adjustments later months booked for them.
tariff_versions = sa.Table(
    "tariff_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False, unique=True),  # UTC instant
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("hour_bands", sa.Text, nullable=False),  # JSON: the band of each local hour 0..23
    sa.Column("document", sa.Text, nullable=False),  # the TOML as adopted
    sa.Column("digest", sa.String(64), nullable=False),  # SHA-256 of the document
    sa.Column("adopted_at", sa.DateTime(timezone=True), nullable=False),
)

# One row per (local month, org, tariff version, model, time-of-use band, service tier); version 0 = no tariff in
# force. ``band`` is the tariff's time-of-use band; ``service_tier`` the scheduling band the request was served in.
usage_tou = sa.Table(
    "usage_tou",
    metadata,
    sa.Column("month", sa.String(7), primary_key=True),  # YYYY-MM in the version's time zone
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("version_id", sa.Integer, primary_key=True),
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("band", sa.String(32), primary_key=True),
    sa.Column("service_tier", sa.String(16), primary_key=True, server_default="default"),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_micros", sa.BigInteger, nullable=False),
    sa.Index("ix_usage_tou_org_month", "org_id", "month"),
)

billing_months = sa.Table(
    "billing_months",
    metadata,
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("closed_at", sa.DateTime(timezone=True), nullable=False),
)

billing_statements = sa.Table(
    "billing_statements",
    metadata,
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("tokens", sa.BigInteger, nullable=False),  # the month's tokens this statement billed
    sa.Column("charge_micros", sa.BigInteger, nullable=False),  # the month's own charge (after subsidy)
    sa.Column("closing_micros", sa.BigInteger, nullable=False),
    sa.Column("document", sa.Text, nullable=False),  # the statement as JSON, byte for byte
)

billing_adjustments = sa.Table(
    "billing_adjustments",
    metadata,
    sa.Column("month", sa.String(7), primary_key=True),  # the closed statement that booked it
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("for_month", sa.String(7), primary_key=True),  # the closed month it corrects
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("amount_micros", sa.BigInteger, nullable=False),
)

# Responses API state: one row per stored response, holding only that turn's new input items and its output, so
# a conversation of n turns stores O(n) items; ``previous_id`` links the turns and a recursive query walks them.
stored_responses = sa.Table(
    "stored_responses",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # resp_...
    sa.Column("org_id", sa.String(64), nullable=False),
    sa.Column("previous_id", sa.String(64), nullable=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),  # unix seconds, as the API shows it
    sa.Column("expires_at", sa.BigInteger, nullable=False),  # unix seconds: created_at + the retention
    sa.Column("input_items", sa.Text, nullable=False),  # JSON list: this turn's input items (ids assigned)
    sa.Column("output", sa.Text, nullable=False),  # JSON list: the output items
    sa.Column("body", sa.Text, nullable=False),  # JSON: the response object without its output
    sa.Column("bytes", sa.BigInteger, nullable=False),  # size of the three JSON texts, for storage reports
    sa.Index("ix_stored_responses_org_created", "org_id", "created_at"),
    sa.Index("ix_stored_responses_expires", "expires_at"),
)

# Vouchers (src/aiplus/billing/programmes.py, funding.py): funders' programmes, the vouchers they issue to
# organizations, and the write-offs closing a month books (what each voucher paid, per day and model).
voucher_programmes = sa.Table(
    "voucher_programmes",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("funder", sa.String(200), nullable=False),
    sa.Column("pool_micros", sa.BigInteger, nullable=False),
    sa.Column(
        "share_bp", sa.Integer, nullable=False
    ),  # the co-pay: the share of each eligible charge it pays
    sa.Column("cap_month_micros", sa.BigInteger, nullable=True),  # per organization; NULL: no cap
    sa.Column("cap_year_micros", sa.BigInteger, nullable=True),
    sa.Column("valid_from", sa.Date, nullable=False),  # local days of the tariff's time zone, inclusive
    sa.Column("valid_until", sa.Date, nullable=False),
    sa.Column("eligibility", sa.Text, nullable=False),  # JSON: sectors, sizes, regions, models (empty: any)
    sa.Column("stacks", sa.Boolean, nullable=False),
    sa.Column("max_combined_bp", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

vouchers = sa.Table(
    "vouchers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("programme_id", sa.String(64), sa.ForeignKey("voucher_programmes.id"), nullable=False),
    sa.Column("org_id", sa.String(64), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    sa.Column("amount_micros", sa.BigInteger, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),  # lower pays first; then the earlier expiry
    sa.Column("valid_from", sa.Date, nullable=False),
    sa.Column("expires_on", sa.Date, nullable=False),  # the last local day it pays for
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_on", sa.Date, nullable=True),  # pays nothing for charges on or after this day
    sa.Column("note", sa.String(200), nullable=False, server_default=""),
)

voucher_writeoffs = sa.Table(
    "voucher_writeoffs",
    metadata,
    sa.Column("month", sa.String(7), primary_key=True),  # the closed month whose statements booked it
    sa.Column("voucher_id", sa.Integer, primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),  # the local day of the charge it paid for
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("programme_id", sa.String(64), nullable=False, index=True),
    sa.Column("org_id", sa.String(64), nullable=False),
    sa.Column("charge_micros", sa.BigInteger, nullable=False),
    sa.Column("amount_micros", sa.BigInteger, nullable=False),
)
