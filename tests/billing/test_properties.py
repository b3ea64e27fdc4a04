"""Properties of pricing and statements, over generated tariffs and usage (hypothesis)."""

import ast
import tempfile
from datetime import date
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aiplus.billing
from aiplus.billing.pricing import Cell, price_month
from aiplus.billing.statements import close_month, document_bytes, statements
from aiplus.billing.tariff import BP, Band, Block, Price, Tariff
from aiplus.storage.testing import scratch_database

from .conftest import add_org, adopt, event, tariff_text, utc, write

SECTORS = ("education", "manufacturing")
TIERS = ("lifeline", "standard")


@st.composite
def tariffs(draw) -> Tariff:
    n_blocks = draw(st.integers(1, 3))
    ceilings = sorted(draw(st.sets(st.integers(1, 20_000_000), min_size=n_blocks - 1, max_size=n_blocks - 1)))
    multipliers = sorted(draw(st.lists(st.integers(0, 40_000), min_size=n_blocks, max_size=n_blocks)))
    blocks = tuple(
        Block(f"b{i}", ceilings[i] if i < len(ceilings) else None, multipliers[i]) for i in range(n_blocks)
    )
    cut = sorted(draw(st.sets(st.integers(1, 23), max_size=2)))
    edges = [0, *cut, 24]
    bands = tuple(
        Band(f"band{i}", tuple(range(edges[i], edges[i + 1])), draw(st.integers(0, 40_000)))
        for i in range(len(edges) - 1)
    )
    price = st.integers(0, 5_000_000)
    return Tariff(
        name="generated",
        currency="CNY",
        timezone="UTC",
        prices=(Price("*", draw(price), draw(price)), Price("m2", draw(price), draw(price))),
        lifeline={"lifeline": draw(st.integers(0, 5_000_000))},
        blocks=blocks,
        bands=bands,
        subsidy_bp={"education": draw(st.integers(0, BP))},
    )


@st.composite
def months(draw):
    versions = {1: draw(tariffs()), 2: draw(tariffs())}
    n = draw(st.integers(1, 8))
    cells = []
    for _ in range(n):
        version = draw(st.sampled_from((1, 2)))
        band = draw(st.sampled_from([b.name for b in versions[version].bands]))
        tokens = st.integers(0, 4_000_000)
        cells.append(Cell(version, draw(st.sampled_from(("m1", "m2"))), band, draw(tokens), draw(tokens), 0))
    return versions, cells, draw(st.sampled_from(TIERS)), draw(st.sampled_from(SECTORS))


@given(months())
@settings(max_examples=300, deadline=None)
def test_line_items_sum_to_the_charge(month):
    versions, cells, tier, sector = month
    priced = price_month(cells, versions, tier, sector)
    assert sum(line["amount_micros"] for line in priced.lines) == priced.charge_micros
    assert sum(line["prompt_tokens"] + line["completion_tokens"] for line in priced.lines) == priced.tokens
    assert 0 <= priced.subsidy_micros <= priced.charge_micros


@given(months(), st.integers(0, 7), st.integers(1, 3_000_000), st.integers(0, 3_000_000))
@settings(max_examples=300, deadline=None)
def test_adding_usage_never_lowers_a_bill(month, which, more_prompt, more_completion):
    versions, cells, tier, sector = month
    before = price_month(cells, versions, tier, sector)
    grown = list(cells)
    i = which % len(cells)
    c = grown[i]
    grown[i] = Cell(
        c.version_id, c.model, c.band, c.prompt_tokens + more_prompt, c.completion_tokens + more_completion, 0
    )
    after = price_month(grown, versions, tier, sector)
    assert after.charge_micros >= before.charge_micros
    assert after.net_micros >= before.net_micros


@given(months())
@settings(max_examples=300, deadline=None)
def test_lifeline_usage_is_never_charged(month):
    versions, cells, _tier, sector = month
    priced = price_month(cells, versions, "lifeline", sector)
    assert all(line["amount_micros"] == 0 for line in priced.lines if line["block"] == "lifeline")
    free = min(v.lifeline["lifeline"] for v in versions.values())
    assert priced.lifeline_tokens <= max(v.lifeline["lifeline"] for v in versions.values())
    if priced.tokens <= free:
        assert priced.charge_micros == 0 and priced.lifeline_tokens == priced.tokens


def _money_values(value, key=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _money_values(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _money_values(v, key)
    elif key.endswith(("_micros", "_bp", "tokens")):
        yield key, value


@given(months())
@settings(max_examples=200, deadline=None)
def test_no_float_touches_money_in_a_priced_month(month):
    versions, cells, tier, sector = month
    priced = price_month(cells, versions, tier, sector)
    body = orjson.loads(orjson.dumps(priced.__dict__))
    values = list(_money_values(body)) + [("charge_micros", priced.charge_micros)]
    assert values and all(type(v) is int for _k, v in values)


def test_no_float_in_the_billing_source():
    """No float literal, float() call or true division on a value anywhere in the billing room."""
    offenders = []
    for path in Path(aiplus.billing.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, float):
                offenders.append(f"{path.name}:{node.lineno} float literal")
            if isinstance(node, ast.Name) and node.id == "float":
                offenders.append(f"{path.name}:{node.lineno} float")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                offenders.append(f"{path.name}:{node.lineno} true division")
    assert offenders == []


late_events = st.lists(
    st.tuples(
        st.sampled_from(("a", "b", "c")), st.integers(1, 29), st.integers(0, 23), st.integers(1, 3_000_000)
    ),
    min_size=1,
    max_size=6,
)


@given(late_events, late_events)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_closed_month_never_changes(first, late):
    with tempfile.TemporaryDirectory() as tmp, scratch_database("sqlite", Path(tmp)) as (engine, _url):
        adopt(engine, tariff_text(), date(2026, 11, 1))
        for org, tier, sector in (
            ("a", "lifeline", "education"),
            ("b", "standard", "healthcare"),
            ("c", "standard", "trade"),
        ):
            add_org(engine, org, tier, sector)
        write(
            engine,
            *(event(f"x{i}", o, utc(2026, 11, d, h), prompt=n) for i, (o, d, h, n) in enumerate(first)),
        )
        with engine.begin() as conn:
            close_month(conn, "2026-11", now=utc(2026, 12, 2))
        with engine.connect() as conn:
            frozen = [document_bytes(d) for d in statements(conn, "2026-11")]
            december_before = {d["org"]["id"]: d for d in statements(conn, "2026-12")}
        write(
            engine, *(event(f"y{i}", o, utc(2026, 11, d, h), prompt=n) for i, (o, d, h, n) in enumerate(late))
        )
        with engine.connect() as conn:
            assert [document_bytes(d) for d in statements(conn, "2026-11")] == frozen
            december = {d["org"]["id"]: d for d in statements(conn, "2026-12")}
        for org, doc in december.items():
            tokens = sum(n for o, _d, _h, n in late if o == org)
            adjusted = sum(a["tokens"] for a in doc["adjustments"])
            assert adjusted == tokens
            assert (
                doc["amount_due_micros"] >= december_before[org]["amount_due_micros"]
            )  # late usage never lowers it
