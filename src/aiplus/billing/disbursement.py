"""Vouchers at billing: each month's charges of voucher holders as daily pieces, paid by ``funding.allocate``.

A holder's month is priced exactly as its statement (``price_month``); each cell's charge (version × model ×
band × service tier) is spread over the local days it was drawn on, pro rata by its list value (input and output tokens at
the version's prices), and the month's net charge (after the sector subsidy) over those day × model pieces, by
largest remainder: the pieces add up to the statement's net charge exactly. Days come from the ledger's events
of the holders only (the time-of-use rollup has no day), classified by the same ``Calendar`` as the rollup.

Months are funded in order: what closed months wrote off (``voucher_writeoffs``), then each open month from the
first; the first open month first pays late usage of closed months (adjustments) by the vouchers valid on
the original day, then its own pieces. A statement shows the payments of its own organization; the allocation
always runs over every holder, so one organization's statement never depends on which others were asked for.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import orjson
import sqlalchemy as sa

from aiplus.billing.funding import Funds, Member, Payment, Piece, allocate, split
from aiplus.billing.months import first_day, next_month, prev_month
from aiplus.billing.pricing import CELL_COLUMNS, Cell, price_month
from aiplus.billing.programmes import load_programmes, load_vouchers
from aiplus.billing.tariff import Tariff
from aiplus.metering.tou import NO_TARIFF, Calendar, as_utc
from aiplus.storage.tables import (
    billing_adjustments,
    billing_statements,
    orgs,
    usage_events,
    usage_tou,
    voucher_writeoffs,
)

_CHUNK = 500


class Month:
    """One month's funding: pieces per holder (its own and late ones for closed months) and the payments."""

    def __init__(self) -> None:
        self.pieces: dict[str, list[tuple[str, Piece]]] = defaultdict(list)  # org -> (for_month, piece)
        self.payments: dict[str, list[tuple[str, Payment]]] = defaultdict(list)


class Funder:
    """Funds months in order within one call (a statement request or a closing); memoised per month."""

    def __init__(
        self,
        conn: sa.Connection,
        tariffs: dict[int, Tariff],
        last_closed: str | None,
        only: str | None = None,
    ):
        """``only``: the one organization asked for; its payments are then allocated alone when no pool can run
        dry (pools are the only limit organizations share), which keeps one statement fast."""
        self.conn, self.tariffs, self.last_closed = conn, tariffs, last_closed
        self.programmes = load_programmes(conn)
        self.vouchers = load_vouchers(conn) if self.programmes else []
        self.holders = {v.org_id for v in self.vouchers}
        self._months: dict[str, tuple[Month, Funds]] = {}
        if only is not None and self.vouchers and self._pools_cannot_run_dry():
            self.vouchers = [v for v in self.vouchers if v.org_id == only]

    def _pools_cannot_run_dry(self) -> bool:
        """Every programme's pool left covers what all its vouchers have left (a voucher never pays more)."""
        spent = self._written_off()
        outstanding: dict[str, int] = defaultdict(int)
        for v in self.vouchers:
            outstanding[v.programme_id] += v.amount_micros - spent.voucher.get(v.id, 0)
        return all(
            p.pool_micros - spent.pool.get(pid, 0) >= outstanding[pid] for pid, p in self.programmes.items()
        )

    def month(self, month: str) -> Month:
        return self._funded(month)[0]

    def _funded(self, month: str) -> tuple[Month, Funds]:
        if month not in self._months:
            first_open = next_month(self.last_closed) if self.last_closed else None
            if not self.vouchers or (first_open is not None and month < first_open):
                self._months[month] = (Month(), Funds())
            elif month == first_open or month <= self._first_voucher_month():
                self._months[month] = self._fund(month, self._written_off(), late=month == first_open)
            else:
                _, before = self._funded(prev_month(month))
                self._months[month] = self._fund(month, copy.deepcopy(before), late=False)
        return self._months[month]

    def _first_voucher_month(self) -> str:
        return min(v.valid_from for v in self.vouchers).strftime("%Y-%m")

    def _fund(self, month: str, funds: Funds, *, late: bool) -> tuple[Month, Funds]:
        out = Month()
        start, end = first_day(month), first_day(next_month(month)) - timedelta(days=1)
        held = [v for v in self.vouchers if v.valid_from <= end and (start <= v.expires_on or late)]
        holders = sorted({v.org_id for v in held})
        members = self._members(holders)
        pieces: list[tuple[str, Piece]] = []
        if late:
            pieces += self._late_pieces(holders)
        for org_pieces in self._pieces(month, holders).values():
            pieces += [(month, p) for p in org_pieces]
        for for_month, piece in pieces:
            out.pieces[piece.org_id].append((for_month, piece))
        # Late charges first (they are older), each closed month's in its own order, then the month's own.
        for for_month in sorted({m for m, _ in pieces}):
            group = [p for m, p in pieces if m == for_month]
            for payment in allocate(group, self.programmes, held, members, funds):
                out.payments[payment.org_id].append((for_month, payment))
        return out, funds

    def _written_off(self) -> Funds:
        funds = Funds()
        w = voucher_writeoffs.c
        query = sa.select(w.voucher_id, w.programme_id, w.org_id, w.day, w.amount_micros)
        for voucher_id, programme_id, org_id, day, amount in self.conn.execute(query):
            funds.add(voucher_id, programme_id, org_id, day, int(amount))
        return funds

    def _members(self, holders: list[str]) -> dict[str, Member]:
        o = orgs.c
        out = {}
        for i in range(0, len(holders), _CHUNK):
            query = sa.select(o.id, o.sector, o.size_class, o.region).where(o.id.in_(holders[i : i + _CHUNK]))
            for oid, sector, size, region in self.conn.execute(query):
                out[oid] = Member(oid, sector, size or "", region or "")
        return out

    def _pieces(self, month: str, holders: list[str], classes: dict | None = None) -> dict[str, list[Piece]]:
        """Each holder's net charge of ``month`` as day × model pieces (``classes``: frozen tier and sector)."""
        u = usage_tou.c
        cells: dict[str, list[Cell]] = defaultdict(list)
        for i in range(0, len(holders), _CHUNK):
            query = sa.select(u.org_id, *CELL_COLUMNS).where(
                u.month == month, u.org_id.in_(holders[i : i + _CHUNK])
            )
            for row in self.conn.execute(query):
                cells[row[0]].append(Cell(*row[1:]))
        if not cells:
            return {}
        days = self._days(month, sorted(cells))
        tiers = self._tiers(sorted(cells))
        out = {}
        for org, org_cells in sorted(cells.items()):
            tier, sector = (classes or {}).get(org) or tiers.get(org, ("", ""))
            priced = price_month(org_cells, self.tariffs, tier, sector)
            gross: dict[tuple[date, str], int] = defaultdict(int)
            tokens: dict[tuple[date, str], int] = defaultdict(int)
            per_cell: dict[tuple[int, str, str, str], int] = defaultdict(int)
            for line in priced.lines:
                key = (line["version"], line["model"], line["band"], line["service_tier"])
                per_cell[key] += line["amount_micros"]
            for cell, charge in sorted(per_cell.items()):
                spread = sorted(days.get((org, *cell), {}).items()) or [((first_day(month)), (1, 0))]
                for (day, _w), amount in zip(
                    spread, split(charge, [w for _d, (w, _t) in spread]), strict=True
                ):
                    gross[(day, cell[1])] += amount
                for day, (_w, n) in spread:
                    tokens[(day, cell[1])] += n
            keys = sorted(gross)
            nets = split(priced.net_micros, [gross[k] for k in keys])
            out[org] = [
                Piece(day, org, model, tokens[(day, model)], net)
                for (day, model), net in zip(keys, nets, strict=True)
            ]
        return out

    def _days(self, month: str, holders: list[str]) -> dict[tuple, dict[date, tuple[int, int]]]:
        """(org, version, model, band, service tier) -> local day -> (list value, tokens), from the holders' events;
        the service tier is "" where the version prices every tier alike (its statement lines merge them)."""
        calendar = Calendar.load(self.conn)
        lo = datetime.combine(first_day(month) - timedelta(days=1), time(0), UTC)
        hi = datetime.combine(first_day(next_month(month)) + timedelta(days=1), time(0), UTC)
        e = usage_events.c
        out: dict[tuple, dict[date, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        for i in range(0, len(holders), _CHUNK):
            query = sa.select(
                e.org_id,
                e.model,
                e.started_at,
                e.prompt_tokens,
                e.completion_tokens,
                e.cost_micros,
                e.service_tier,
            ).where(e.org_id.in_(holders[i : i + _CHUNK]), e.started_at >= lo, e.started_at < hi)
            for org, model, started, prompt, completion, cost, service_tier in self.conn.execute(query):
                if prompt + completion <= 0:
                    continue
                started = as_utc(started)
                version, local_month, band = calendar.classify(started)
                if local_month != month:
                    continue
                tariff = self.tariffs.get(version)
                if version == NO_TARIFF or tariff is None:
                    day, value, service_tier = started.date(), cost, ""
                else:
                    service_tier = service_tier if tariff.prices_service_tiers else ""
                    day = started.astimezone(ZoneInfo(tariff.timezone)).date()
                    price_in, price_out = tariff.price_table.get(model, tariff.price_table.get("*", (0, 0)))
                    value = prompt * price_in + completion * price_out
                acc = out[(org, version, model, band, service_tier)][day]
                acc[0] += value or prompt + completion
                acc[1] += prompt + completion
        return {k: {d: (w, t) for d, (w, t) in v.items()} for k, v in out.items()}

    def _tiers(self, holders: list[str]) -> dict[str, tuple[str, str]]:
        o = orgs.c
        out = {}
        for i in range(0, len(holders), _CHUNK):
            query = sa.select(o.id, o.tier, o.sector).where(o.id.in_(holders[i : i + _CHUNK]))
            out.update({oid: (tier, sector) for oid, tier, sector in self.conn.execute(query)})
        return out

    def _late_pieces(self, holders: list[str]) -> list[tuple[str, Piece]]:
        """Usage of holders that reached closed months after they closed, as the pieces it added (never less)."""
        if not holders or self.last_closed is None:
            return []
        u, s, a = usage_tou.c, billing_statements.c, billing_adjustments.c
        now: dict[tuple[str, str], int] = defaultdict(int)
        billed: dict[tuple[str, str], int] = defaultdict(int)
        for i in range(0, len(holders), _CHUNK):
            chunk = holders[i : i + _CHUNK]
            q = sa.select(u.org_id, u.month, sa.func.sum(u.prompt_tokens + u.completion_tokens))
            q = q.where(u.month <= self.last_closed, u.org_id.in_(chunk)).group_by(u.org_id, u.month)
            for org, month, tokens in self.conn.execute(q):
                now[(org, month)] += int(tokens)
            for org, month, tokens in self.conn.execute(
                sa.select(s.org_id, s.month, s.tokens).where(s.org_id.in_(chunk))
            ):
                billed[(org, month)] += int(tokens)
            q = sa.select(a.org_id, a.for_month, a.tokens).where(a.org_id.in_(chunk))
            for org, month, tokens in self.conn.execute(q):
                billed[(org, month)] += int(tokens)
        out = []
        for org, closed in sorted(k for k, n in now.items() if n != billed.get(k, 0)):
            docs = [
                orjson.loads(d)
                for d in self.conn.execute(
                    sa.select(s.document).where(s.org_id == org, s.month >= closed).order_by(s.month)
                ).scalars()
            ]
            frozen = next((d for d in docs if d["month"] == closed), None)
            classes = {org: (frozen["org"]["tier"], frozen["org"]["sector"])} if frozen else None
            was: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
            for doc in docs:
                for p in doc.get("vouchers", {}).get("pieces", []):
                    if p["for_month"] == closed:
                        was[(p["day"], p["model"])][0] += p["charge_micros"]
                        was[(p["day"], p["model"])][1] += p["tokens"]
            recomputed = self._pieces(closed, [org], classes).get(org, [])
            deltas = [
                (
                    p,
                    p.charge_micros - was[(p.day.isoformat(), p.model)][0],
                    p.tokens - was[(p.day.isoformat(), p.model)][1],
                )
                for p in recomputed
            ]
            total = sum(d for _p, d, _t in deltas)
            rising = [(p, d, t) for p, d, t in deltas if d > 0 or t > 0]
            shares = split(max(total, 0), [max(d, 0) for _p, d, _t in rising])
            out += [
                (closed, Piece(p.day, org, p.model, max(t, 0), share))
                for (p, _d, t), share in zip(rising, shares, strict=True)
            ]
        return out


def vouchers_section(funder: Funder, month: str, org_id: str) -> dict:
    """What the organization's vouchers paid this month (and for late usage of closed months), with the pieces
    they paid on: the usage proof a claim rests on."""
    funded = funder.month(month) if org_id in funder.holders else Month()  # others: nothing to allocate
    names = {p.id: (p.name, p.funder) for p in funder.programmes.values()}
    payments = [
        {
            "for_month": for_month,
            "day": p.day.isoformat(),
            "model": p.model,
            "voucher": p.voucher_id,
            "programme": p.programme_id,
            "charge_micros": p.charge_micros,
            "amount_micros": p.amount_micros,
        }
        for for_month, p in funded.payments.get(org_id, [])
    ]
    by_programme: dict[str, int] = defaultdict(int)
    for p in payments:
        by_programme[p["programme"]] += p["amount_micros"]
    return {
        "amount_micros": sum(by_programme.values()),
        "by_programme": [
            {"programme": pid, "name": names[pid][0], "funder": names[pid][1], "amount_micros": amount}
            for pid, amount in sorted(by_programme.items())
        ],
        "payments": payments,
        "pieces": [
            {
                "for_month": for_month,
                "day": p.day.isoformat(),
                "model": p.model,
                "tokens": p.tokens,
                "charge_micros": p.charge_micros,
            }
            for for_month, p in funded.pieces.get(org_id, [])
        ],
    }


def write_off(conn: sa.Connection, month: str, docs: list[dict]) -> int:
    """Closing ``month``: book every voucher payment of its statements as written off; returns how many rows."""
    rows = [
        {
            "month": month,
            "voucher_id": p["voucher"],
            "day": date.fromisoformat(p["day"]),
            "model": p["model"],
            "programme_id": p["programme"],
            "org_id": doc["org"]["id"],
            "charge_micros": p["charge_micros"],
            "amount_micros": p["amount_micros"],
        }
        for doc in docs
        for p in doc["vouchers"]["payments"]
    ]
    for start in range(0, len(rows), 5000):
        conn.execute(sa.insert(voucher_writeoffs), rows[start : start + 5000])
    return len(rows)
