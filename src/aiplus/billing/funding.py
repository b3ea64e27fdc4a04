"""Who pays a charge: the pure rule by which vouchers pay their programmes' share of organizations' charges.

Clock-free and database-free, so the statements, the claims and the property tests run the same code. Charges
arrive as pieces (one organization's net charge for one local day and model, after the tariff's own sector
subsidy); pieces are paid in order of day, then organization, then model, so a pool that runs dry runs dry at a
definite charge. On each piece the organization's vouchers pay in order of priority (lower first), then expiry
(earlier first), then id; each pays its programme's share (rounded down) and never past:

- its own remaining amount, its validity (from ``valid_from`` to ``expires_on``, before ``revoked_on``);
- its programme's pool, validity, eligibility (sector, size, region, model) and caps per organization per month
  and per year (the month and year of the charge, not of the day it is booked);
- the combined share where programmes stack: on one piece, the programmes paying may together pay at most the
  smallest ``max_combined_bp`` among them; a programme that does not stack pays only a piece no other programme
  pays, and once it pays none other does. Vouchers of one programme share that programme's share of a piece.

A ``Funds`` holds what is spent so far; ``allocate`` adds to it, so months are allocated one after another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple

from aiplus.billing.tariff import BP


@dataclass(frozen=True)
class Programme:
    id: str
    name: str
    funder: str
    pool_micros: int
    share_bp: int
    cap_month_micros: int | None
    cap_year_micros: int | None
    valid_from: date
    valid_until: date
    sectors: tuple[str, ...] = ()  # empty: any
    sizes: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    stacks: bool = False
    max_combined_bp: int = (
        0  # the most all programmes together pay of one charge (its own share if not stacking)
    )

    def covers(self, org: Member, model: str, day: date) -> bool:
        return (
            self.valid_from <= day <= self.valid_until
            and (not self.sectors or org.sector in self.sectors)
            and (not self.sizes or org.size in self.sizes)
            and (not self.regions or org.region in self.regions)
            and (not self.models or model in self.models)
        )


@dataclass(frozen=True)
class Voucher:
    id: int
    programme_id: str
    org_id: str
    amount_micros: int
    priority: int
    valid_from: date
    expires_on: date
    revoked_on: date | None = None

    def valid_on(self, day: date) -> bool:
        return self.valid_from <= day <= self.expires_on and (
            self.revoked_on is None or day < self.revoked_on
        )

    @property
    def order(self) -> tuple[int, date, int]:
        return self.priority, self.expires_on, self.id


class Member(NamedTuple):
    """What eligibility looks at: an organization's sector, size class and region."""

    id: str
    sector: str
    size: str
    region: str


class Piece(NamedTuple):
    """One organization's net charge for one local day and model (``tokens`` only for the record)."""

    day: date
    org_id: str
    model: str
    tokens: int
    charge_micros: int


class Payment(NamedTuple):
    day: date
    org_id: str
    model: str
    voucher_id: int
    programme_id: str
    charge_micros: int
    amount_micros: int


@dataclass
class Funds:
    """What has been spent: per voucher, per programme (its pool), per programme × organization × month and year."""

    voucher: dict[int, int] = field(default_factory=dict)
    pool: dict[str, int] = field(default_factory=dict)
    org_month: dict[tuple[str, str, str], int] = field(default_factory=dict)
    org_year: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def add(self, voucher_id: int, programme_id: str, org_id: str, day: date, amount: int) -> None:
        self.voucher[voucher_id] = self.voucher.get(voucher_id, 0) + amount
        self.pool[programme_id] = self.pool.get(programme_id, 0) + amount
        month_key = (programme_id, org_id, f"{day.year:04d}-{day.month:02d}")
        year_key = (programme_id, org_id, f"{day.year:04d}")
        self.org_month[month_key] = self.org_month.get(month_key, 0) + amount
        self.org_year[year_key] = self.org_year.get(year_key, 0) + amount

    def room(self, v: Voucher, p: Programme, day: date) -> int:
        """How much more ``v`` may pay for a charge of ``day``: the least of every limit left."""
        limits = [v.amount_micros - self.voucher.get(v.id, 0), p.pool_micros - self.pool.get(p.id, 0)]
        if p.cap_month_micros is not None:
            key = (p.id, v.org_id, f"{day.year:04d}-{day.month:02d}")
            limits.append(p.cap_month_micros - self.org_month.get(key, 0))
        if p.cap_year_micros is not None:
            limits.append(p.cap_year_micros - self.org_year.get((p.id, v.org_id, f"{day.year:04d}"), 0))
        return min(limits)


def allocate(
    pieces: list[Piece],
    programmes: dict[str, Programme],
    vouchers: list[Voucher],
    members: dict[str, Member],
    funds: Funds,
) -> list[Payment]:
    """Pay ``pieces`` from ``vouchers`` within every limit; adds what was paid to ``funds``. Deterministic."""
    by_org: dict[str, list[Voucher]] = {}
    for v in sorted(vouchers, key=lambda v: v.order):
        by_org.setdefault(v.org_id, []).append(v)
    out: list[Payment] = []
    for piece in sorted(pieces, key=lambda p: (p.day, p.org_id, p.model)):
        held = by_org.get(piece.org_id)
        member = members.get(piece.org_id)
        if not held or member is None or piece.charge_micros <= 0:
            continue
        paid: dict[str, int] = {}  # programme -> paid on this piece
        for v in held:
            p = programmes[v.programme_id]
            if not v.valid_on(piece.day) or not p.covers(member, piece.model, piece.day):
                continue
            if paid and v.programme_id not in paid:
                if not p.stacks or any(not programmes[q].stacks for q in paid):
                    continue
            combined_bp = min(programmes[q].max_combined_bp for q in {*paid, p.id})
            amount = min(
                piece.charge_micros * p.share_bp // BP - paid.get(p.id, 0),
                piece.charge_micros * min(combined_bp, BP) // BP - sum(paid.values()),
                funds.room(v, p, piece.day),
            )
            if amount <= 0:
                continue
            paid[p.id] = paid.get(p.id, 0) + amount
            funds.add(v.id, p.id, piece.org_id, piece.day, amount)
            out.append(Payment(piece.day, piece.org_id, piece.model, v.id, p.id, piece.charge_micros, amount))
    return out


def split(total: int, weights: list[int]) -> list[int]:
    """``total`` shared by ``weights`` pro rata, rounded down, the rest by largest remainder (then first): exact."""
    whole = sum(weights)
    if whole <= 0:
        return [total if i == 0 else 0 for i in range(len(weights))] if weights else []
    shares = [total * w // whole for w in weights]
    short = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in order[:short]:
        shares[i] += 1
    return shares
