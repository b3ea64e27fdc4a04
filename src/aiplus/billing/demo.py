"""What ``aiplus demo seed`` adds for vouchers: a city programme and a stacking district top-up, with vouchers
for some of the demo region's small firms, so statements show funders' shares and a claim pack is there to open.
"""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from aiplus.billing.programmes import add_programme, issue_voucher, list_programmes
from aiplus.storage.tables import orgs

M = 1_000_000
CITY = {
    "id": "demo-city",
    "name": "City compute vouchers",
    "funder": "City Economy and Informatization Bureau",
    "pool_micros": 50_000 * M,
    "share": "0.3",
    "cap_month_micros": 200 * M,
    "cap_year_micros": 1_000 * M,
    "sizes": ["micro", "small"],
    "stacks": True,
    "max_combined_share": "0.5",
}
DISTRICT = {
    "id": "demo-capital",
    "name": "Capital district top-up",
    "funder": "Capital District Science Office",
    "pool_micros": 2_000 * M,
    "share": "0.2",
    "regions": ["Capital"],
    "stacks": True,
    "max_combined_share": "0.5",
}


def seed_demo_vouchers(conn: sa.Connection, start: date, until: date, *, firms: int = 40) -> dict | None:
    """The two programmes (valid ``start``..``until``) and a voucher of each for up to ``firms`` small demo firms;
    None when a demo programme exists already."""
    if any(p["id"] == CITY["id"] for p in list_programmes(conn)):
        return None
    window = {"valid_from": start.isoformat(), "valid_until": until.isoformat()}
    add_programme(conn, {**CITY, **window})
    add_programme(conn, {**DISTRICT, **window})
    o = orgs.c
    small = conn.execute(
        sa.select(o.id, o.region)
        .where(o.id.like("demo-%"), o.size_class.in_(("micro", "small")))
        .order_by(o.id)
        .limit(firms)
    ).all()
    issued = 0
    for org_id, region in small:
        issue_voucher(conn, CITY["id"], org_id, 1_000 * M, until, valid_from=start, note="demo")
        issued += 1
        if region == "Capital":
            issue_voucher(
                conn, DISTRICT["id"], org_id, 300 * M, until, priority=1, valid_from=start, note="demo"
            )
            issued += 1
    return {"programmes": [CITY["id"], DISTRICT["id"]], "vouchers": issued, "firms": len(small)}
