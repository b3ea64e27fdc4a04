"""Statements, the balance and simulations in each format: JSON, CSV, HTML (Jinja2, A4) and table rows.

All of them come from the one statement document ``statements.py`` builds; nothing here computes money.
``table`` forms are (title, columns, rows) for the CLI's table printer.
"""

from __future__ import annotations

import csv
import io
from functools import lru_cache

import jinja2
import orjson

FORMATS = ("table", "csv", "json", "html")
_CSV_COLUMNS = (
    "org_id",
    "month",
    "item",
    "version",
    "model",
    "block",
    "band",
    "service_tier",
    "for_month",
    "prompt_tokens",
    "completion_tokens",
    "amount_micros",
)


def money(micros: int) -> str:
    """Micro-units as an exact decimal amount with six places (integers only)."""
    sign = "-" if micros < 0 else ""
    return f"{sign}{abs(micros) // 1_000_000:,}.{abs(micros) % 1_000_000:06d}"


def share(bp: int) -> str:
    """Basis points as a percentage (5000 -> 50%)."""
    whole, rest = divmod(bp, 100)
    return f"{whole}%" if rest == 0 else f"{whole}.{rest:02d}%".rstrip("0")


def percent_ppm(ppm: int) -> str:
    """Parts per million as a percentage with four places (27 -> 0.0027%)."""
    return f"{ppm // 10_000}.{ppm % 10_000:04d}%"


def multiplier(bp: int) -> str:
    whole, rest = divmod(bp, 10_000)
    return f"{whole}.{rest:04d}".rstrip("0").rstrip(".") if rest else f"{whole}"


def service_tier_name(name: str) -> str:
    """A line's service tier as a bill shows it ("" is usage of a version that prices every tier alike)."""
    return name or "any tier"


def line_multipliers(line: dict) -> str:
    """Block × time-of-use band (× service tier, where the line has one) multipliers: "×1.1 ×0.5 ×1.5"."""
    out = f"×{multiplier(line['block_multiplier_bp'])} ×{multiplier(line['band_multiplier_bp'])}"
    if line.get("service_tier"):
        out += f" ×{multiplier(line['service_tier_multiplier_bp'])}"
    return out


def to_json(value) -> str:
    """Deterministic JSON (statements are built in one key order; closed ones are served as stored)."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n"


def statements_csv(docs: list[dict]) -> str:
    """One row per item: the opening balance, each line, the subsidy, each adjustment, the amount due, the closing."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for doc in docs:
        org, month = doc["org"]["id"], doc["month"]
        blank = ["", "", "", "", "", "", "", ""]
        writer.writerow([org, month, "opening_balance", *blank, doc["opening_balance_micros"]])
        for line in doc["lines"]:
            writer.writerow(
                [
                    org,
                    month,
                    "usage",
                    line["version"],
                    line["model"],
                    line["block"],
                    line["band"],
                    line.get("service_tier", ""),
                    "",
                    line["prompt_tokens"],
                    line["completion_tokens"],
                    line["amount_micros"],
                ]
            )
        writer.writerow([org, month, "subsidy", *blank, -doc["subsidy"]["amount_micros"]])
        for adj in doc["adjustments"]:
            writer.writerow(
                [org, month, "adjustment", "", "", "", "", "", adj["for_month"], "", "", adj["amount_micros"]]
            )
        for paid in doc.get("vouchers", {}).get("by_programme", ()):
            writer.writerow([org, month, f"voucher:{paid['programme']}", *blank, -paid["amount_micros"]])
        writer.writerow([org, month, "amount_due", *blank, doc["amount_due_micros"]])
        writer.writerow([org, month, "closing_balance", *blank, doc["closing_balance_micros"]])
    return out.getvalue()


def statement_tables(doc: dict) -> list[tuple[str, list[str], list[list]]]:
    """One organization's statement as tables: the line items, then the summary."""
    org = doc["org"]
    title = f"{org['name'] or org['id']} ({org['id']}) — statement {doc['month']} ({doc['status']}, {doc['currency']})"
    split = bool(doc.get("charge_by_service_tier"))  # only where a tariff prices service tiers differently
    lines = [
        [
            line["version"],
            line["model"],
            line["block"],
            line["band"],
            *([service_tier_name(line["service_tier"])] if split else []),
            f"{line['prompt_tokens']:,}",
            f"{line['completion_tokens']:,}",
            line_multipliers(line),
            money(line["amount_micros"]),
        ]
        for line in doc["lines"]
    ]
    summary = [["opening balance", money(doc["opening_balance_micros"])]]
    summary.append(["usage charge", money(doc["charge_micros"])])
    for part in doc.get("charge_by_service_tier", ()):
        name = service_tier_name(part["service_tier"])
        summary.append([f"  of which {name} ({part['tokens']:,} tokens)", money(part["amount_micros"])])
    summary.append(
        [f"lifeline tokens used ({doc['lifeline_tokens']:,})", f"value {money(doc['lifeline_value_micros'])}"]
    )
    sub = doc["subsidy"]
    summary.append(
        [f"{sub['sector'] or 'sector'} subsidy ({share(sub['share_bp'])})", money(-sub["amount_micros"])]
    )
    for adj in doc["adjustments"]:
        summary.append([f"adjustment: {adj['note']} ({adj['tokens']:,} tokens)", money(adj["amount_micros"])])
    for paid in doc.get("vouchers", {}).get("by_programme", ()):
        summary.append(
            [f"paid by {paid['funder']} ({paid['programme']} vouchers)", money(-paid["amount_micros"])]
        )
    summary.append(["amount due", money(doc["amount_due_micros"])])
    summary.append(["closing balance", money(doc["closing_balance_micros"])])
    columns = ["version", "model", "block", "band", *(["service tier"] if split else [])]
    columns += ["prompt", "completion", "multiplier", "amount"]
    return [(title, columns, lines), (f"summary {doc['month']}", ["item", "amount"], summary)]


def statements_overview(docs: list[dict]) -> tuple[str, list[str], list[list]]:
    """All organizations' statements, one row each."""
    rows = [
        [
            d["org"]["id"],
            d["org"]["tier"],
            d["org"]["sector"],
            f"{d['tokens']:,}",
            money(d["opening_balance_micros"]),
            money(d["charge_micros"]),
            money(-d["subsidy"]["amount_micros"]),
            money(sum(a["amount_micros"] for a in d["adjustments"])),
            money(-d.get("vouchers", {}).get("amount_micros", 0)),
            money(d["amount_due_micros"]),
            money(d["closing_balance_micros"]),
        ]
        for d in docs
    ]
    month = docs[0]["month"] if docs else ""
    columns = [
        "org",
        "tier",
        "sector",
        "tokens",
        "opening",
        "charge",
        "subsidy",
        "adjustments",
        "vouchers",
        "due",
        "closing",
    ]
    return f"statements {month}", columns, rows


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aiplus.billing", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        money=money,
        share=share,
        multiplier=multiplier,
        multipliers=line_multipliers,
        service_tier=service_tier_name,
    )
    return env


def statements_html(docs: list[dict]) -> str:
    """A printable document (A4), one statement per page."""
    return _templates().get_template("statement.html.j2").render(docs=docs)


def render_statements(docs: list[dict], fmt: str) -> str | list[tuple[str, list[str], list[list]]]:
    """``docs`` in ``fmt``; ``table`` gives tables (one org: its lines and summary; several: an overview)."""
    if fmt == "json":
        return to_json({"object": "list", "data": docs})
    if fmt == "csv":
        return statements_csv(docs)
    if fmt == "html":
        return statements_html(docs)
    if fmt == "table":
        return statement_tables(docs[0]) if len(docs) == 1 else [statements_overview(docs)]
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def balance_csv(report: dict) -> str:
    """The balance as rows of (section, group, item, tokens, micros)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["month", "section", "group", "item", "tokens", "micros"])
    month = report["month"]
    for r in report["revenue_by_tier_block"]:
        writer.writerow([month, "revenue", r["tier"], r["block"], r["tokens"], r["revenue_micros"]])
    for r in report["lifeline_by_tier"]:
        writer.writerow([month, "lifeline", r["tier"], "value", r["tokens"], r["value_micros"]])
    for r in report["subsidy_by_sector"]:
        writer.writerow([month, "subsidy", r["sector"], "subsidy", "", r["subsidy_micros"]])
    for key, value in report["totals"].items():
        writer.writerow([month, "totals", "", key.removesuffix("_micros"), "", value])
    aff = report["affordability"]
    for r in aff["regions"]:
        writer.writerow([month, "affordability", r["region"], "basket_cost", "", aff["cost_micros"]])
        writer.writerow([month, "affordability", r["region"], "income", "", r["income_micros"]])
    return out.getvalue()


def simulation_csv(sim: dict) -> str:
    """One row per organization: what the month costs now and under the proposal."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = ("org_id", "tier", "sector", "tokens", "current_micros", "proposed_micros", "change_micros")
    writer.writerow(("month", *columns))
    for row in sim["organizations"]:
        writer.writerow([sim["month"], *(row[c] for c in columns)])
    return out.getvalue()
