"""Reprice a past month under a proposed tariff, before anyone adopts it: the change per organization, tier and
sector, and in the utility's balance.

The month's usage is read from the time-of-use rollup as recorded: by the bands of the versions then in force.
A proposal may change every price, block, lifeline, band multiplier and subsidy, rename bands and merge them;
each recorded band must fall wholly in one of the proposal's bands (and the time zone must stay), because the
rollup keeps bands, not hours: a proposal that splits a recorded band cannot be replayed on that month.
"""

from __future__ import annotations

import sqlalchemy as sa

from aiplus.billing.balance import balance_of
from aiplus.billing.errors import BillingError
from aiplus.billing.months import parse_month
from aiplus.billing.pricing import CELL_COLUMNS, Cell, Priced, price_month
from aiplus.billing.render import money
from aiplus.billing.statements import statements
from aiplus.billing.tariff import Tariff, parse_tariff
from aiplus.billing.versions import load_versions
from aiplus.config import BillingConfig
from aiplus.storage.tables import usage_tou

PROPOSED = -1  # the proposal's version id inside a simulation


def simulate(conn: sa.Connection, text: str, month: str, tiers, config: BillingConfig) -> dict:
    """What the month would have cost under the proposed tariff ``text``, beside what it costs now."""
    month = parse_month(month)
    proposal = parse_tariff(text, tuple(tiers))
    band_of = _band_map(load_versions(conn), proposal, month)
    u = usage_tou.c
    cells: dict[str, list[Cell]] = {}
    query = sa.select(u.org_id, *CELL_COLUMNS).where(u.month == month)
    for org, version_id, model, band, prompt, completion, cost, service_tier in conn.execute(query):
        proposed_band = band_of.get((version_id, band), band)
        cells.setdefault(org, []).append(
            Cell(PROPOSED, model, proposed_band, int(prompt), int(completion), int(cost), service_tier)
        )
    current = statements(conn, month)
    proposed_docs, rows = [], []
    tiers_sum: dict[str, list[int]] = {}
    sectors_sum: dict[str, list[int]] = {}
    for doc in current:
        org = doc["org"]
        priced = price_month(cells.get(org["id"], []), {PROPOSED: proposal}, org["tier"], org["sector"])
        now_net = doc["charge_micros"] - doc["subsidy"]["amount_micros"]
        rows.append(
            {
                "org_id": org["id"],
                "tier": org["tier"],
                "sector": org["sector"],
                "tokens": doc["tokens"],
                "current_micros": now_net,
                "proposed_micros": priced.net_micros,
                "change_micros": priced.net_micros - now_net,
            }
        )
        for key, acc in ((org["tier"], tiers_sum), (org["sector"], sectors_sum)):
            total = acc.setdefault(key, [0, 0, 0])
            total[0] += 1
            total[1] += now_net
            total[2] += priced.net_micros
        proposed_docs.append(_as_doc(doc, priced, proposal.currency))
    before = balance_of(current, month, config, None)["totals"]
    after = balance_of(proposed_docs, month, config, proposal)
    return {
        "object": "billing.simulation",
        "month": month,
        "proposal": proposal.name,
        "currency": proposal.currency,
        "organizations": rows,
        "by_tier": _grouped("tier", tiers_sum),
        "by_sector": _grouped("sector", sectors_sum),
        "balance": {
            "current": before,
            "proposed": after["totals"],
            "change": {k: after["totals"][k] - before[k] for k in before},
        },
        "affordability": after["affordability"],
    }


def _band_map(versions: dict[int, Tariff], proposal: Tariff, month: str) -> dict[tuple[int, str], str]:
    """(recorded version, band) -> the proposal's band, when every hour of the recorded band falls in one of them."""
    mapping: dict[tuple[int, str], str] = {}
    for version_id, tariff in versions.items():
        if tariff.timezone != proposal.timezone:
            raise BillingError(
                f"timezone: {month} was recorded in {tariff.timezone}; a proposal in {proposal.timezone} cannot "
                "be replayed on it from the rollup",
                "timezone",
            )
        for band in tariff.bands:
            targets = {proposal.hour_bands[hour] for hour in band.hours}
            if len(targets) > 1:
                raise BillingError(
                    f"bands: {month} was recorded in band {band.name!r} (hours {list(band.hours)}), which the "
                    f"proposal splits over {sorted(targets)}; the rollup keeps bands, not hours, so such a "
                    "proposal can be simulated only on months recorded after it",
                    "bands",
                )
            mapping[(version_id, band.name)] = targets.pop()
    return mapping


def _grouped(name: str, sums: dict[str, list[int]]) -> list[dict]:
    return [
        {
            name: key,
            "organizations": v[0],
            "current_micros": v[1],
            "proposed_micros": v[2],
            "change_micros": v[2] - v[1],
        }
        for key, v in sorted(sums.items())
    ]


def _as_doc(doc: dict, priced: Priced, currency: str) -> dict:
    """The proposal's pricing in the shape of a statement, so one balance function reads both."""
    return {
        "org": doc["org"],
        "currency": currency,
        "lines": priced.lines,
        "lifeline_tokens": priced.lifeline_tokens,
        "lifeline_value_micros": priced.lifeline_value_micros,
        "charge_micros": priced.charge_micros,
        "subsidy": {"amount_micros": priced.subsidy_micros},
        "adjustments": [],
    }


def simulation_tables(sim: dict) -> list[tuple[str, list[str], list[list]]]:
    cur = sim["currency"]

    def group(rows: list[dict], key: str) -> list[list]:
        return [
            [
                r[key],
                r["organizations"],
                money(r["current_micros"]),
                money(r["proposed_micros"]),
                money(r["change_micros"]),
            ]
            for r in rows
        ]

    columns = ["organizations", "current", "proposed", "change"]
    changed = sorted(sim["organizations"], key=lambda r: (-abs(r["change_micros"]), r["org_id"]))[:20]
    orgs = [
        [
            r["org_id"],
            r["tier"],
            r["sector"],
            money(r["current_micros"]),
            money(r["proposed_micros"]),
            money(r["change_micros"]),
        ]
        for r in changed
    ]
    bal = sim["balance"]
    balance = [
        [
            k.removesuffix("_micros").replace("_", " "),
            money(bal["current"][k]),
            money(bal["proposed"][k]),
            money(bal["change"][k]),
        ]
        for k in bal["current"]
    ]
    title = f"{sim['proposal']} on {sim['month']} ({cur})"
    return [
        (f"{title}: by tier", ["tier", *columns], group(sim["by_tier"], "tier")),
        (f"{title}: by sector", ["sector", *columns], group(sim["by_sector"], "sector")),
        (
            f"{title}: largest changes (of {len(sim['organizations'])})",
            ["org", "tier", "sector", "current", "proposed", "change"],
            orgs,
        ),
        (f"{title}: the utility's balance", ["item", "current", "proposed", "change"], balance),
    ]
