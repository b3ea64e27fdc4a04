"""Tariff documents: parsed into integers, and every kind of bad input refused with the field named."""

from datetime import date

import pytest
import sqlalchemy as sa

from aiplus.billing.errors import BillingError, Conflict
from aiplus.billing.tariff import parse_tariff
from aiplus.billing.versions import example_tariff_text, list_tariffs, show_tariff
from aiplus.storage.tables import tariff_versions

from .conftest import TIERS, add_org, adopt, event, tariff_text, utc, write


def test_example_tariff_parses_into_integers():
    tariff = parse_tariff(example_tariff_text(), TIERS)
    assert tariff.currency == "CNY" and tariff.timezone == "Asia/Shanghai"
    assert [b.multiplier_bp for b in tariff.blocks] == [10_000, 11_000, 16_100]  # Beijing's 1 : 1.10 : 1.61
    bands = {b.name: b.multiplier_bp for b in tariff.bands}
    assert bands["peak"] == 3 * bands["valley"]  # the NDRC's 3:1 floor
    assert tariff.subsidy_bp["education"] == 5_000
    assert tariff.service_tier_table == {"priority": 15_000, "default": 10_000, "flex": 5_000}
    assert tariff.lifeline == {"lifeline": 2_000_000}
    assert len(tariff.sources) >= 3
    assert all(isinstance(v, int) for b in tariff.blocks for v in (b.multiplier_bp,))


def _edit(old: str, new: str) -> str:
    text = tariff_text()
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (_edit("input_per_mtok = 1000000", "input_per_mtok = -5"), "prices[0].input_per_mtok", "negative"),
        (_edit("education = 0.5", "schools = 0.5"), "subsidy.schools", "unknown sector"),
        (_edit("lifeline = 1000000", "paupers = 1000000"), "lifeline.paupers", "unknown tier"),
        (_edit('name = "b2"', 'name = "b2"\nfoo = 1'), "blocks[1].foo", "unknown key"),
        (_edit("multiplier = 1.5", "multiplier = 0.9"), "blocks[1].multiplier", "rising"),
        (_edit("multiplier = 0.5", "multiplier = 0.12345"), "bands[0].multiplier", "four decimals"),
        (_edit("hours = [0, 1, 2, 3, 4, 5, 6, 7]", "hours = [0, 1, 2, 3, 4, 5, 6]"), "bands", "no band"),
        (
            _edit("hours = [0, 1, 2, 3, 4, 5, 6, 7]", "hours = [0, 1, 2, 3, 4, 5, 6, 7, 8]"),
            "bands[1].hours",
            "already",
        ),
        (_edit('timezone = "Asia/Shanghai"', 'timezone = "Mars/Olympus"'), "timezone", "IANA"),
        (_edit('currency = "CNY"', 'currency = "yuan"'), "currency", "ISO 4217"),
        (_edit("healthcare = 0.25", "healthcare = 1.5"), "subsidy.healthcare", "at most"),
        (_edit("[[blocks]]", "[[blocks]\n"), "document", "not valid TOML"),
    ],
)
def test_bad_tariffs_name_the_field(text, field, words):
    with pytest.raises(BillingError) as err:
        parse_tariff(text, TIERS)
    assert err.value.field == field
    assert words in err.value.message


def test_versions_are_adopted_in_order_and_never_overlap(db):
    first = adopt(db, tariff_text(), date(2026, 11, 1))
    assert first["effective_from"] == utc(2026, 10, 31, 16)  # midnight in Shanghai
    with pytest.raises(Conflict) as err:
        adopt(db, tariff_text(input=7), date(2026, 11, 1))
    assert err.value.field == "from" and "overlapping version" in err.value.message
    with pytest.raises(Conflict):
        adopt(db, tariff_text(input=7), date(2026, 10, 1))
    with pytest.raises(BillingError) as err:  # a bad document: nothing written
        adopt(db, tariff_text().replace("1000000", "-1", 1), date(2026, 12, 1))
    with db.connect() as conn:
        assert [v["id"] for v in list_tariffs(conn)] == [first["id"]]
        assert show_tariff(conn)["document"] == tariff_text()
    second = adopt(db, tariff_text(input=7), date(2026, 12, 1))
    with db.connect() as conn:
        versions = list_tariffs(conn)
        assert [v["until"] for v in versions] == [second["effective_from"], None]
        assert conn.scalar(sa.select(sa.func.count()).select_from(tariff_versions)) == 2


def test_a_version_never_reprices_recorded_usage(db):
    add_org(db, "school", "lifeline", "education")
    write(db, event("r1", "school", utc(2026, 11, 20, 3), prompt=10))
    with pytest.raises(Conflict) as err:
        adopt(db, tariff_text(), date(2026, 11, 15))
    assert err.value.field == "from" and "reprice" in err.value.message
    adopt(db, tariff_text(), date(2026, 11, 21))


def test_a_new_version_keeps_the_currency(db):
    adopt(db, tariff_text(), date(2026, 11, 1))
    with pytest.raises(Conflict) as err:
        adopt(db, tariff_text().replace('"CNY"', '"EUR"'), date(2026, 12, 1))
    assert err.value.field == "currency"
