"""The register of organizations in scope (the denominator) and external penetration observations, from CSV.

Imports are all-or-nothing: every row is checked first, every bad row is reported with its line number
(the header is line 1), and nothing is written unless the whole file is good.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import sqlalchemy as sa

from aiplus.config import SECTORS
from aiplus.storage.tables import adoption_observations, orgs, register_orgs
from aiplus.tenancy.orgs import SIZE_CLASSES, size_class

__all__ = ["SIZE_CLASSES", "ImportRejected", "import_observations", "import_register", "size_class"]

REGISTER_COLUMNS = ("id", "name", "sector", "region", "employees")
OBSERVATION_COLUMNS = ("sector", "date", "penetration", "source")
ALL_SECTORS = "all"  # an observation about every sector together


class ImportRejected(ValueError):
    """A CSV file had bad rows; ``problems`` lists ``(line, message)`` and nothing was imported."""

    def __init__(self, source: str, problems: list[tuple[int, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  line {line}: {message}" for line, message in problems)
        super().__init__(f"{source}: {len(problems)} bad row(s), nothing imported:\n{lines}")


@dataclass(frozen=True, slots=True)
class ImportResult:
    rows: int
    inserted: int
    updated: int


def _read_csv(
    source: str | Path | io.TextIOBase, columns: tuple[str, ...]
) -> tuple[str, list[tuple[int, dict]]]:
    """Rows as ``(line number, {column: stripped text})``; raises ``ImportRejected`` on a bad header."""
    if isinstance(source, (str, Path)):
        name = str(source)
        try:
            text = Path(source).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise ImportRejected(name, [(0, "file not found")]) from None
        except UnicodeDecodeError as exc:
            raise ImportRejected(name, [(0, f"not UTF-8 text ({exc.reason})")]) from None
    else:
        name = getattr(source, "name", "<csv>")
        text = source.read()
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ImportRejected(name, [(1, "empty file: expected a header " + ",".join(columns))]) from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise ImportRejected(
            name, [(1, f"header lacks column(s) {', '.join(missing)}; expected {','.join(columns)}")]
        )
    index = {c: header.index(c) for c in columns}
    rows = []
    for cells in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # blank lines are not rows
        rows.append((line, {c: (cells[i].strip() if i < len(cells) else "") for c, i in index.items()}))
    return name, rows


def parse_register(source: str | Path | io.TextIOBase) -> list[dict]:
    """Validated register rows (with ``size_class``); raises ``ImportRejected`` listing every bad row."""
    name, rows = _read_csv(source, REGISTER_COLUMNS)
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    out = []
    for line, row in rows:
        bad = [f"missing {c}" for c in REGISTER_COLUMNS if not row[c]]
        if row["sector"] and row["sector"] not in SECTORS:
            bad.append(f"unknown sector {row['sector']!r}")
        employees = None
        if row["employees"]:
            try:
                employees = int(row["employees"])
                if employees < 0:
                    bad.append(f"employees must be >= 0, not {employees}")
            except ValueError:
                bad.append(f"employees is not a whole number: {row['employees']!r}")
        if row["id"]:
            if len(row["id"]) > 64:
                bad.append("id longer than 64 characters")
            if row["id"] in seen:
                bad.append(f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
            else:
                seen[row["id"]] = line
        if bad:
            problems.append((line, "; ".join(bad)))
            continue
        out.append({**row, "employees": employees, "size_class": size_class(employees)})
    if problems:
        raise ImportRejected(name, problems)
    return out


def import_register(conn: sa.Connection, source: str | Path | io.TextIOBase) -> ImportResult:
    """Insert or update register rows by id in the caller's transaction; an id already present is updated."""
    rows = parse_register(source)
    existing: set[str] = set()
    ids = [r["id"] for r in rows]
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        existing.update(conn.scalars(sa.select(register_orgs.c.id).where(register_orgs.c.id.in_(chunk))))
    new = [r for r in rows if r["id"] not in existing]
    old = [r for r in rows if r["id"] in existing]
    if new:
        conn.execute(register_orgs.insert(), new)
    if old:
        conn.execute(
            register_orgs.update().where(register_orgs.c.id == sa.bindparam("b_id")),
            [{**{k: v for k, v in r.items() if k != "id"}, "b_id": r["id"]} for r in old],
        )
    return ImportResult(rows=len(rows), inserted=len(new), updated=len(old))


def insert_register(conn: sa.Connection, rows: Iterable[dict]) -> int:
    """Insert already-validated register rows (id, name, sector, region, employees); derives the size class."""
    batch = [{**r, "size_class": size_class(int(r["employees"]))} for r in rows]
    if batch:
        conn.execute(register_orgs.insert(), batch)
    return len(batch)


def registered_tenants(conn: sa.Connection) -> int:
    """Tenant organizations whose id is in the register: the only ones whose usage counts."""
    query = sa.select(sa.func.count()).select_from(orgs.join(register_orgs, register_orgs.c.id == orgs.c.id))
    return int(conn.scalar(query) or 0)


def _share(text: str) -> float:
    """A share in [0, 1] from ``0.2`` or ``20%``."""
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"penetration must be a share in [0, 1] or a percentage, not {text!r}")
    return value


def parse_observations(source: str | Path | io.TextIOBase) -> list[dict]:
    """Validated observation rows; ``sector`` may be a known sector or ``all``."""
    name, rows = _read_csv(source, OBSERVATION_COLUMNS)
    problems: list[tuple[int, str]] = []
    out = []
    for line, row in rows:
        bad = [f"missing {c}" for c in OBSERVATION_COLUMNS if not row[c]]
        if row["sector"] and row["sector"] not in SECTORS and row["sector"] != ALL_SECTORS:
            bad.append(f"unknown sector {row['sector']!r}")
        day = share = None
        if row["date"]:
            try:
                day = date.fromisoformat(row["date"])
            except ValueError:
                bad.append(f"date is not YYYY-MM-DD: {row['date']!r}")
        if row["penetration"]:
            try:
                share = _share(row["penetration"])
            except ValueError as exc:
                bad.append(
                    str(exc)
                    if "share" in str(exc)
                    else f"penetration is not a number: {row['penetration']!r}"
                )
        if bad:
            problems.append((line, "; ".join(bad)))
            continue
        out.append(
            {"sector": row["sector"], "date": day, "penetration": share, "source": row["source"][:200]}
        )
    if problems:
        raise ImportRejected(name, problems)
    return out


def import_observations(conn: sa.Connection, source: str | Path | io.TextIOBase) -> ImportResult:
    """Add observations; a row with the same sector, date and source replaces the earlier one."""
    rows = parse_observations(source)
    t = adoption_observations
    replaced = 0
    for r in rows:
        replaced += conn.execute(
            t.delete().where(t.c.sector == r["sector"], t.c.date == r["date"], t.c.source == r["source"])
        ).rowcount
    if rows:
        conn.execute(t.insert(), rows)
    return ImportResult(rows=len(rows), inserted=len(rows) - replaced, updated=replaced)


def load_observations(conn: sa.Connection) -> list[dict]:
    t = adoption_observations
    query = sa.select(t.c.sector, t.c.date, t.c.penetration, t.c.source).order_by(t.c.sector, t.c.date)
    return [dict(r._mapping) for r in conn.execute(query)]
