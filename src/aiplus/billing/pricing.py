"""Pricing one organization's month: cells of usage -> line items by version × model × block × band × service
tier, in integers.

How the blocks meet the bands: the month's cumulative tokens (all models, all versions) fill the lifeline
block first, then the rising blocks; each block's share of the month is laid over every cell (model × band)
pro rata, the way tiered and time-of-use electricity prices combine on a monthly reading. So a statement does
not depend on the order events arrived in, and adding usage never lowers it (the block multipliers rise).

Money is exact until one rounding per version: every line's amount is a numerator over one common
denominator; the version's charge is that sum rounded half up, and the lines share it by largest remainder,
so they always add up to the charge. Token counts per line are apportioned the same way, rounded down.

Service tiers (the scheduling band a request was served in) scale the price of their tokens like the time-of-use
bands do; the blocks count tokens whatever their tier, so the lifeline's free tokens are shared pro rata over the
tiers too. A version that prices every service tier alike bills them as one line (``service_tier`` ""), so a
statement splits by service tier only where the tariff makes it cost something different.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from typing import NamedTuple

from aiplus.billing.tariff import BP, Tariff
from aiplus.config import SERVICE_TIERS
from aiplus.metering.tou import NO_TARIFF
from aiplus.storage.tables import usage_tou

MTOK = 1_000_000
_TIER_RANK = {name: i for i, name in enumerate(SERVICE_TIERS)}
SCALE = MTOK * BP * BP * BP  # a line's numerator is over total tokens × SCALE (block × band × service tier)


class Cell(NamedTuple):
    """One row of the time-of-use rollup for an organization's month (a tuple: cells sort by version, model, band)."""

    version_id: int
    model: str
    band: str  # the time-of-use band
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int  # the list price metered with the events (used only where no tariff was in force)
    service_tier: str = "default"  # priority, default, flex; "" once merged (a version pricing them alike)


CELL_COLUMNS = tuple(usage_tou.c[name] for name in Cell._fields)  # a Cell is a rollup row, in its field order


@dataclass
class Priced:
    lines: list[dict] = field(default_factory=list)
    tokens: int = 0
    charge_micros: int = 0
    subsidy_micros: int = 0
    lifeline_tokens: int = 0
    lifeline_value_micros: int = 0
    versions: list[int] = field(default_factory=list)

    @property
    def net_micros(self) -> int:
        """What the month's own usage costs the organization: the charge less the sector subsidy."""
        return self.charge_micros - self.subsidy_micros


def price_month(cells: list[Cell], tariffs: dict[int, Tariff], tier: str, sector: str) -> Priced:
    """Price a month of cells (``Cell`` or plain 7-tuples in its field order); deterministic, integers only.

    Cells are sorted here, by Python's string order (service tiers from the highest): a database's collation
    must not change a line's order (the largest-remainder rounding breaks ties by it).
    """
    out = Priced()
    total = sum(c[3] + c[4] for c in cells)
    out.tokens = total
    if total <= 0:
        return out
    cells = sorted(cells, key=_order)
    if cells[0][0] == cells[-1][0]:  # the usual month: one version
        by_version = {cells[0][0]: cells}
    else:
        by_version = {v: list(group) for v, group in groupby(cells, key=itemgetter(0))}
    out.versions = list(by_version)
    for version_id, vcells in by_version.items():
        tariff = None if version_id == NO_TARIFF else tariffs.get(version_id)
        if tariff is None or not tariff.prices_service_tiers:
            vcells = _merged(vcells)
        if tariff is None:
            _list_priced(out, version_id, vcells)
        else:
            _tariff_priced(out, version_id, vcells, tariff, tier, sector, total)
    return out


def _order(cell: Cell) -> tuple:
    return cell[0], cell[1], cell[2], _TIER_RANK.get(cell[6], len(SERVICE_TIERS)), cell[6]


def _merged(cells: list[Cell]) -> list[Cell]:
    """One version's cells summed over service tiers: one line per model × band where tiers cost the same."""
    sums: dict[tuple[int, str, str], list[int]] = {}
    for c in cells:
        acc = sums.setdefault((c[0], c[1], c[2]), [0, 0, 0])
        acc[0] += c[3]
        acc[1] += c[4]
        acc[2] += c[5]
    return [Cell(v, model, band, p, c, cost, "") for (v, model, band), (p, c, cost) in sorted(sums.items())]


def _list_priced(out: Priced, version_id: int, cells: list[Cell]) -> None:
    for c in cells:
        out.lines.append(
            _line(version_id, c, "list price", BP, BP, c.prompt_tokens, c.completion_tokens, c.cost_micros)
        )
        out.charge_micros += c.cost_micros


def _tariff_priced(
    out: Priced, version_id: int, cells: list[Cell], tariff: Tariff, tier: str, sector: str, total: int
) -> None:
    denominator = total * SCALE
    active = [
        (name, mult, n)
        for name, low, high, mult in tariff.segments(tier)
        if (n := (total if high is None else min(total, high)) - low) > 0
    ]
    prices, bands, service_tiers = tariff.price_table, tariff.band_table, tariff.service_tier_table
    default = prices.get("*", (0, 0))
    lines: list[dict] = []
    numerators: list[int] = []
    lifeline_value = 0
    if len(active) == 1:  # the whole month in one block (most organizations): n = total cancels out
        name, block_bp, _n = active[0]
        denominator = SCALE
        for _version, model, band, prompt_total, completion_total, _cost, service_tier in cells:
            price_in, price_out = prices.get(model, default)
            band_bp = bands.get(band, BP)
            tier_bp = service_tiers.get(service_tier, BP)
            value = (prompt_total * price_in + completion_total * price_out) * band_bp * tier_bp
            numerators.append(value * block_bp)
            lines.append(
                {
                    "version": version_id,
                    "model": model,
                    "block": name,
                    "band": band,
                    "service_tier": service_tier,
                    "block_multiplier_bp": block_bp,
                    "band_multiplier_bp": band_bp,
                    "service_tier_multiplier_bp": tier_bp,
                    "prompt_tokens": prompt_total,
                    "completion_tokens": completion_total,
                    "amount_micros": 0,
                }
            )
            if block_bp == 0 and name == "lifeline":
                out.lifeline_tokens += prompt_total + completion_total
                lifeline_value += value * BP
        active = []
    for _version, model, band, prompt_total, completion_total, _cost, service_tier in cells if active else ():
        price_in, price_out = prices.get(model, default)
        band_bp = bands.get(band, BP)
        tier_bp = service_tiers.get(service_tier, BP)
        value = (prompt_total * price_in + completion_total * price_out) * band_bp * tier_bp
        tokens = prompt_total + completion_total
        cumulative = before = prompt_before = 0
        for name, block_bp, n in active:
            cumulative += n
            upto = tokens * cumulative // total
            prompt_upto = prompt_total * upto // tokens if tokens else 0
            prompt = prompt_upto - prompt_before
            completion = upto - before - prompt
            before, prompt_before = upto, prompt_upto
            numerators.append(value * block_bp * n)
            lines.append(
                {
                    "version": version_id,
                    "model": model,
                    "block": name,
                    "band": band,
                    "service_tier": service_tier,
                    "block_multiplier_bp": block_bp,
                    "band_multiplier_bp": band_bp,
                    "service_tier_multiplier_bp": tier_bp,
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "amount_micros": 0,
                }
            )
            if block_bp == 0 and name == "lifeline":
                out.lifeline_tokens += prompt + completion
                lifeline_value += value * BP * n
    charge = (sum(numerators) + denominator // 2) // denominator
    short = charge
    for line, num in zip(lines, numerators, strict=True):
        line["amount_micros"] = amount = num // denominator
        short -= amount
    if short:
        by_remainder = sorted(range(len(numerators)), key=lambda i: (-(numerators[i] % denominator), i))
        for i in by_remainder[:short]:
            lines[i]["amount_micros"] += 1
    out.lines.extend(lines)
    out.charge_micros += charge
    out.subsidy_micros += charge * tariff.subsidy_bp.get(sector, 0) // BP
    out.lifeline_value_micros += (lifeline_value + denominator // 2) // denominator


def _line(
    version_id: int,
    c: Cell,
    block: str,
    block_bp: int,
    band_bp: int,
    prompt: int,
    completion: int,
    amount: int,
) -> dict:
    return {
        "version": version_id,
        "model": c.model,
        "block": block,
        "band": c.band,
        "service_tier": c.service_tier,
        "block_multiplier_bp": block_bp,
        "band_multiplier_bp": band_bp,
        "service_tier_multiplier_bp": BP,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "amount_micros": amount,
    }
