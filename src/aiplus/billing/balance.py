"""The regulator's view of a month: revenue by tier and block beside the lifeline and subsidies given, and the
affordability of a basic basket as a share of a monthly income per region. Read from the month's statements.
"""

from __future__ import annotations

import sqlalchemy as sa

from aiplus.billing.months import parse_month
from aiplus.billing.pricing import Cell, price_month
from aiplus.billing.render import money, percent_ppm, share
from aiplus.billing.statements import current_month, statements
from aiplus.billing.tariff import HOURS, Tariff
from aiplus.billing.versions import tariff_for_month
from aiplus.config import BillingConfig


def balance(conn: sa.Connection, month: str | None, config: BillingConfig) -> dict:
    """Revenue by tier × block, lifeline value by tier, subsidies by sector, totals and affordability."""
    month = current_month(conn) if month is None else parse_month(month)
    docs = statements(conn, month)
    return balance_of(docs, month, config, tariff_for_month(conn, month))


def balance_of(docs: list[dict], month: str, config: BillingConfig, tariff: Tariff | None) -> dict:
    by_block: dict[tuple[str, str], list[int]] = {}
    lifeline: dict[str, list[int]] = {}
    subsidies: dict[str, list[int]] = {}
    adjustments = vouchers = 0
    for doc in docs:
        tier, sector = doc["org"]["tier"], doc["org"]["sector"]
        for line in doc["lines"]:
            acc = by_block.setdefault((tier, line["block"]), [0, 0])
            acc[0] += line["prompt_tokens"] + line["completion_tokens"]
            acc[1] += line["amount_micros"]
        life = lifeline.setdefault(tier, [0, 0, 0])
        life[0] += 1 if doc["lifeline_tokens"] else 0
        life[1] += doc["lifeline_tokens"]
        life[2] += doc["lifeline_value_micros"]
        sub = subsidies.setdefault(sector, [0, 0, 0])
        sub[0] += 1 if doc["subsidy"]["amount_micros"] else 0
        sub[1] += doc["charge_micros"]
        sub[2] += doc["subsidy"]["amount_micros"]
        adjustments += sum(a["amount_micros"] for a in doc["adjustments"])
        vouchers += doc.get("vouchers", {}).get("amount_micros", 0)  # a simulated proposal has none
    revenue = sum(v[1] for v in by_block.values())
    lifeline_value = sum(v[2] for v in lifeline.values())
    subsidy = sum(v[2] for v in subsidies.values())
    return {
        "object": "billing.balance",
        "month": month,
        "currency": docs[0]["currency"] if docs else "",
        "organizations": len(docs),
        "revenue_by_tier_block": [
            {"tier": tier, "block": block, "tokens": v[0], "revenue_micros": v[1]}
            for (tier, block), v in sorted(by_block.items())
        ],
        "lifeline_by_tier": [
            {"tier": tier, "organizations": v[0], "tokens": v[1], "value_micros": v[2]}
            for tier, v in sorted(lifeline.items())
            if v[1]
        ],
        "subsidy_by_sector": [
            {"sector": sector, "organizations": v[0], "charge_micros": v[1], "subsidy_micros": v[2]}
            for sector, v in sorted(subsidies.items())
            if v[2]
        ],
        "totals": {
            "revenue_micros": revenue,  # usage charges, before subsidies
            "subsidy_micros": subsidy,
            "adjustments_micros": adjustments,
            "vouchers_micros": vouchers,  # what funders' programmes pay (their claims)
            "billed_micros": revenue
            - subsidy
            + adjustments
            - vouchers,  # what organizations owe for the month
            "lifeline_value_micros": lifeline_value,
            "given_micros": lifeline_value + subsidy,  # the cross-subsidy: what the tariff gives away
        },
        "affordability": affordability(config, tariff),
    }


def affordability(config: BillingConfig, tariff: Tariff | None) -> dict:
    """The basic basket's monthly cost under ``tariff`` (spread evenly over the day's hours) against incomes."""
    basket = {
        "prompt_tokens": config.basket_prompt_tokens,
        "completion_tokens": config.basket_completion_tokens,
        "model": config.basket_model,
        "tier": config.basket_tier,
        "sector": config.basket_sector,
        "target_bp": config.affordability_target_bp,
    }
    if tariff is None:
        return {"basket": basket, "cost_micros": None, "regions": []}
    cells = []
    prompt_left, completion_left = config.basket_prompt_tokens, config.basket_completion_tokens
    for i, band in enumerate(tariff.bands):
        last = i == len(tariff.bands) - 1
        prompt = prompt_left if last else config.basket_prompt_tokens * len(band.hours) // HOURS
        completion = completion_left if last else config.basket_completion_tokens * len(band.hours) // HOURS
        prompt_left -= prompt
        completion_left -= completion
        cells.append(Cell(1, config.basket_model, band.name, prompt, completion, 0))
    cost = price_month(cells, {1: tariff}, config.basket_tier, config.basket_sector).net_micros
    regions = [
        {
            "region": region,
            "income_micros": income,
            "share_ppm": cost * 1_000_000 // income,  # parts per million of the income
            "affordable": cost * 10_000 <= income * config.affordability_target_bp,
        }
        for region, income in config.monthly_income
    ]
    return {"basket": basket, "cost_micros": cost, "regions": regions}


def balance_tables(report: dict) -> list[tuple[str, list[str], list[list]]]:
    month, cur = report["month"], report["currency"]
    blocks = [
        [r["tier"], r["block"], f"{r['tokens']:,}", money(r["revenue_micros"])]
        for r in report["revenue_by_tier_block"]
    ]
    life = [
        [r["tier"], r["organizations"], f"{r['tokens']:,}", money(r["value_micros"])]
        for r in report["lifeline_by_tier"]
    ]
    subs = [
        [r["sector"], r["organizations"], money(r["charge_micros"]), money(r["subsidy_micros"])]
        for r in report["subsidy_by_sector"]
    ]
    totals = [[k.removesuffix("_micros").replace("_", " "), money(v)] for k, v in report["totals"].items()]
    aff = report["affordability"]
    regions = [
        [
            r["region"],
            money(r["income_micros"]),
            money(aff["cost_micros"]),
            percent_ppm(r["share_ppm"]),
            "yes" if r["affordable"] else "NO",
        ]
        for r in aff["regions"]
    ]
    return [
        (f"revenue by tier and block, {month} ({cur})", ["tier", "block", "tokens", "revenue"], blocks),
        ("lifeline blocks given", ["tier", "organizations", "tokens", "value"], life),
        ("sector subsidies given", ["sector", "organizations", "charge", "subsidy"], subs),
        ("the month's balance", ["item", "amount"], totals),
        (
            f"affordability of the basic basket (target {share(aff['basket']['target_bp'])} of income)",
            ["region", "monthly income", "basket cost", "share", "affordable"],
            regions,
        ),
    ]
