"""A tariff document (TOML) parsed and validated into integers: prices, lifeline, rising blocks, bands, subsidies,
service tiers.

Multipliers and shares are written as decimals (``1.10``, ``0.5``) and read with ``Decimal`` (never float),
then held as integer basis points (1.10 -> 11,000; 0.5 -> 5,000). Prices are integer micro-units per million
tokens, as in ``[[prices]]`` of ``aiplus.toml``. Every error names the field.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiplus.billing.errors import BillingError
from aiplus.config import SECTORS, SERVICE_TIERS

BP = 10_000  # basis points in 1.0
HOURS = 24
_TOP_KEYS = {
    "name",
    "currency",
    "timezone",
    "description",
    "sources",
    "prices",
    "lifeline",
    "blocks",
    "bands",
    "subsidy",
    "service_tier",
}


@dataclass(frozen=True)
class Price:
    model: str
    input_per_mtok: int
    output_per_mtok: int


@dataclass(frozen=True)
class Block:
    """A rising block: the month's cumulative tokens up to ``up_to`` (None: no ceiling) at ``multiplier_bp``."""

    name: str
    up_to: int | None
    multiplier_bp: int


@dataclass(frozen=True)
class Band:
    name: str
    hours: tuple[int, ...]
    multiplier_bp: int


@dataclass(frozen=True)
class Tariff:
    name: str
    currency: str
    timezone: str
    prices: tuple[Price, ...]
    lifeline: dict[str, int]  # tier -> free tokens a month
    blocks: tuple[Block, ...]
    bands: tuple[Band, ...]
    subsidy_bp: dict[str, int]  # sector -> share of the charge the utility pays
    description: str = ""
    sources: tuple[str, ...] = ()
    # service tier (priority, default, flex) -> price multiplier; a tier not named is priced at 1
    service_tier_bp: dict[str, int] = field(default_factory=dict)

    def price(self, model: str) -> Price:
        """The model's own price, else the ``*`` price, else free."""
        fallback = None
        for price in self.prices:
            if price.model == model:
                return price
            if price.model == "*":
                fallback = price
        return fallback or Price(model, 0, 0)

    @property
    def hour_bands(self) -> list[str]:
        """The band of each local hour 0..23 (what the time-of-use rollup needs)."""
        out = [""] * HOURS
        for band in self.bands:
            for hour in band.hours:
                out[hour] = band.name
        return out

    @cached_property
    def price_table(self) -> dict[str, tuple[int, int]]:
        """model -> (input, output) per million tokens, precomputed for pricing many months."""
        return {p.model: (p.input_per_mtok, p.output_per_mtok) for p in self.prices}

    @cached_property
    def band_table(self) -> dict[str, int]:
        return {b.name: b.multiplier_bp for b in self.bands}

    @cached_property
    def service_tier_table(self) -> dict[str, int]:
        """Every service tier's multiplier in basis points (1.0 unless the tariff names it)."""
        return {name: self.service_tier_bp.get(name, BP) for name in SERVICE_TIERS}

    @cached_property
    def prices_service_tiers(self) -> bool:
        """Whether service tiers cost differently; only then does a statement split its lines by them."""
        return any(bp != BP for bp in self.service_tier_table.values())

    def segments(self, tier: str) -> list[tuple[str, int, int | None, int]]:
        """(name, from, to, multiplier_bp) over the month's cumulative tokens: the lifeline, then the blocks."""
        cache = self.__dict__.setdefault("_segment_cache", {})
        if tier not in cache:
            cache[tier] = self._segments(tier)
        return cache[tier]

    def _segments(self, tier: str) -> list[tuple[str, int, int | None, int]]:
        free = self.lifeline.get(tier, 0)
        out: list[tuple[str, int, int | None, int]] = []
        if free > 0:
            out.append(("lifeline", 0, free, 0))
        low = free
        for block in self.blocks:
            if block.up_to is not None and block.up_to <= low:
                continue
            out.append((block.name, low, block.up_to, block.multiplier_bp))
            if block.up_to is None:
                break
            low = block.up_to
        return out


def parse_tariff(text: str, tiers: tuple[str, ...] | list[str] | None = None) -> Tariff:
    """Parse and validate a tariff document; BillingError names the first field that is wrong.

    ``tiers``: the tier names the lifeline may name (None: any, for documents validated when adopted).
    """
    try:
        raw = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise BillingError(f"the tariff is not valid TOML: {exc}", "document") from None
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise BillingError(f"unknown key(s) {', '.join(sorted(unknown))}", sorted(unknown)[0])
    name = _text(raw, "name", "name")
    currency = _text(raw, "currency", "currency")
    if not (len(currency) == 3 and currency.isalpha() and currency.isupper()):
        raise BillingError(f"currency must be an ISO 4217 code like CNY or EUR, not {currency!r}", "currency")
    timezone = _text(raw, "timezone", "timezone")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise BillingError(
            f"timezone {timezone!r} is not an IANA time zone (e.g. Asia/Shanghai)", "timezone"
        ) from None
    return Tariff(
        name=name,
        currency=currency,
        timezone=timezone,
        prices=_prices(raw.get("prices")),
        lifeline=_lifeline(raw.get("lifeline", {}), tiers),
        blocks=_blocks(raw.get("blocks")),
        bands=_bands(raw.get("bands")),
        subsidy_bp=_subsidy(raw.get("subsidy", {})),
        service_tier_bp=_service_tiers(raw.get("service_tier", {})),
        description=str(raw.get("description", "")),
        sources=tuple(str(s) for s in raw.get("sources", ())),
    )


def _text(raw: dict, key: str, field: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BillingError(f"{field} is required (a non-empty string)", field)
    return value.strip()


def _count(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BillingError(f"{field} must be a whole number, not {value!r}", field)
    if value < 0:
        raise BillingError(f"{field} must not be negative ({value})", field)
    return value


def _share_bp(value, field: str, *, at_most: int | None = None) -> int:
    """A decimal multiplier or share (``1.10``) as integer basis points; at most four decimals, never float."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise BillingError(f"{field} must be a number like 1.10, not {value!r}", field)
    if isinstance(value, Decimal) and not value.is_finite():
        raise BillingError(f"{field} must be a finite number like 1.10, not {value}", field)
    try:
        scaled = Decimal(value) * BP
    except InvalidOperation:
        raise BillingError(f"{field} must be a number like 1.10, not {value!r}", field) from None
    if scaled != scaled.to_integral_value():
        raise BillingError(f"{field} has more than four decimals ({value})", field)
    if scaled < 0:
        raise BillingError(f"{field} must not be negative ({value})", field)
    if at_most is not None and scaled > at_most:
        raise BillingError(
            f"{field} must be at most {Decimal(at_most).scaleb(-4).normalize()} ({value})", field
        )
    return int(scaled)


def _table_list(value, field: str) -> list[dict]:
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise BillingError(f"{field} must be a non-empty array of tables ([[{field}]])", field)
    return value


def _keys(entry: dict, allowed: set[str], field: str) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise BillingError(
            f"{field}: unknown key(s) {', '.join(sorted(unknown))}", f"{field}.{sorted(unknown)[0]}"
        )


def _prices(value) -> tuple[Price, ...]:
    out: list[Price] = []
    seen: set[str] = set()
    for i, entry in enumerate(_table_list(value, "prices")):
        where = f"prices[{i}]"
        _keys(entry, {"model", "input_per_mtok", "output_per_mtok"}, where)
        model = _text(entry, "model", f"{where}.model")
        if model in seen:
            raise BillingError(f"{where}.model: {model!r} is priced twice", f"{where}.model")
        seen.add(model)
        out.append(
            Price(
                model,
                _count(entry.get("input_per_mtok", 0), f"{where}.input_per_mtok"),
                _count(entry.get("output_per_mtok", 0), f"{where}.output_per_mtok"),
            )
        )
    return tuple(out)


def _lifeline(value, tiers) -> dict[str, int]:
    if not isinstance(value, dict):
        raise BillingError("lifeline must be a table of tier = free tokens a month", "lifeline")
    out = {}
    for tier, tokens in value.items():
        if tiers is not None and tier not in tiers:
            raise BillingError(
                f"lifeline.{tier}: unknown tier {tier!r}; known tiers: {', '.join(tiers or ())}",
                f"lifeline.{tier}",
            )
        out[tier] = _count(tokens, f"lifeline.{tier}")
    return dict(sorted(out.items()))


def _blocks(value) -> tuple[Block, ...]:
    out: list[Block] = []
    for i, entry in enumerate(_table_list(value, "blocks")):
        where = f"blocks[{i}]"
        _keys(entry, {"name", "up_to", "multiplier"}, where)
        name = _text(entry, "name", f"{where}.name")
        if name == "lifeline" or any(b.name == name for b in out):
            raise BillingError(
                f"{where}.name: {name!r} is taken (names are unique; 'lifeline' is reserved)", f"{where}.name"
            )
        up_to = entry.get("up_to")
        last = i == len(value) - 1
        if up_to is None and not last:
            raise BillingError(f"{where}.up_to: only the last block may be open-ended", f"{where}.up_to")
        if last and up_to is not None:
            raise BillingError(
                f"{where}.up_to: the last block has no ceiling; leave up_to out", f"{where}.up_to"
            )
        if up_to is not None:
            up_to = _count(up_to, f"{where}.up_to")
            if up_to == 0 or (out and up_to <= (out[-1].up_to or 0)):
                raise BillingError(
                    f"{where}.up_to must rise above the block before ({up_to})", f"{where}.up_to"
                )
        multiplier = _share_bp(entry.get("multiplier"), f"{where}.multiplier")
        if out and multiplier < out[-1].multiplier_bp:
            raise BillingError(
                f"{where}.multiplier must not fall below the block before (rising blocks)",
                f"{where}.multiplier",
            )
        out.append(Block(name, up_to, multiplier))
    return tuple(out)


def _bands(value) -> tuple[Band, ...]:
    out: list[Band] = []
    owner: dict[int, str] = {}
    for i, entry in enumerate(_table_list(value, "bands")):
        where = f"bands[{i}]"
        _keys(entry, {"name", "hours", "multiplier"}, where)
        name = _text(entry, "name", f"{where}.name")
        if len(name) > 32 or any(b.name == name for b in out):
            raise BillingError(
                f"{where}.name: {name!r} is taken or longer than 32 characters", f"{where}.name"
            )
        hours = entry.get("hours")
        if not isinstance(hours, list) or not hours:
            raise BillingError(f"{where}.hours must be a list of local hours 0..23", f"{where}.hours")
        for hour in hours:
            if isinstance(hour, bool) or not isinstance(hour, int) or not 0 <= hour < HOURS:
                raise BillingError(f"{where}.hours: {hour!r} is not an hour 0..23", f"{where}.hours")
            if hour in owner:
                raise BillingError(
                    f"{where}.hours: hour {hour} is already in band {owner[hour]!r}", f"{where}.hours"
                )
            owner[hour] = name
        out.append(
            Band(name, tuple(sorted(hours)), _share_bp(entry.get("multiplier"), f"{where}.multiplier"))
        )
    missing = [h for h in range(HOURS) if h not in owner]
    if missing:
        raise BillingError(f"bands: hour(s) {', '.join(map(str, missing))} are in no band", "bands")
    return tuple(out)


def _subsidy(value) -> dict[str, int]:
    if not isinstance(value, dict):
        raise BillingError("subsidy must be a table of sector = share of the charge", "subsidy")
    out = {}
    for sector, share in value.items():
        if sector not in SECTORS:
            raise BillingError(
                f"subsidy.{sector}: unknown sector {sector!r}; known sectors: {', '.join(SECTORS)}",
                f"subsidy.{sector}",
            )
        out[sector] = _share_bp(share, f"subsidy.{sector}", at_most=BP)
    return dict(sorted(out.items()))


def _service_tiers(value) -> dict[str, int]:
    if not isinstance(value, dict):
        raise BillingError(
            "service_tier must be a table of service tier = price multiplier (e.g. priority = 1.5)",
            "service_tier",
        )
    out = {}
    for tier, multiplier in value.items():
        if tier not in SERVICE_TIERS:
            hint = (
                " (requests asking for auto are served, metered and priced as default)"
                if tier == "auto"
                else ""
            )
            raise BillingError(
                f"service_tier.{tier}: unknown service tier {tier!r}; known service tiers: "
                f"{', '.join(SERVICE_TIERS)}{hint}",
                f"service_tier.{tier}",
            )
        out[tier] = _share_bp(multiplier, f"service_tier.{tier}")
    return dict(sorted(out.items()))
