import pytest
import sqlalchemy as sa

from aiplus.adoption.register import (
    ImportRejected,
    import_observations,
    import_register,
    load_observations,
    size_class,
)
from aiplus.storage.tables import register_orgs

GOOD = """id,name,sector,region,employees
a1,Acme Steel,manufacturing,North,9
a2,Bank Two,finance,South,10
a3,Clinic,healthcare,North,49
a4,School,education,East,50
a5,Mill,manufacturing,East,249
a6,Telco,ict,South,250
"""


def write(tmp_path, text, name="register.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_size_class_boundaries():
    assert [size_class(n) for n in (0, 9, 10, 49, 50, 249, 250, 100000)] == [
        "micro",
        "micro",
        "small",
        "small",
        "medium",
        "medium",
        "large",
        "large",
    ]


def test_import_register_derives_size_class_and_updates_by_id(sqlite_db, tmp_path):
    with sqlite_db.begin() as conn:
        result = import_register(conn, write(tmp_path, GOOD))
    assert (result.rows, result.inserted, result.updated) == (6, 6, 0)
    with sqlite_db.connect() as conn:
        got = dict(conn.execute(sa.select(register_orgs.c.id, register_orgs.c.size_class)).all())
    assert got == {"a1": "micro", "a2": "small", "a3": "small", "a4": "medium", "a5": "medium", "a6": "large"}
    with sqlite_db.begin() as conn:
        result = import_register(
            conn, write(tmp_path, "id,name,sector,region,employees\na1,Acme,ict,West,300\n")
        )
    assert (result.inserted, result.updated) == (0, 1)
    with sqlite_db.connect() as conn:
        row = conn.execute(sa.select(register_orgs).where(register_orgs.c.id == "a1")).one()
    assert (row.sector, row.region, row.employees, row.size_class) == ("ict", "West", 300, "large")


def test_bad_rows_are_reported_with_line_numbers_and_nothing_is_imported(sqlite_db, tmp_path):
    text = (
        "id,name,sector,region,employees\n"
        "b1,Good,finance,North,12\n"  # line 2: fine
        "b2,Farm,farming,North,3\n"  # line 3: unknown sector
        "b1,Again,finance,North,5\n"  # line 4: duplicate id
        "b3,,ict,South,7\n"  # line 5: missing name
        "b4,Shop,trade,South,many\n"  # line 6: bad number
        "\n"  # line 7: blank, skipped
        "b5,Short,trade\n"  # line 8: missing region and employees
        "b6,Fine,trade,East,1\n"  # line 9: fine
    )
    with pytest.raises(ImportRejected) as info, sqlite_db.begin() as conn:
        import_register(conn, write(tmp_path, text))
    problems = dict(info.value.problems)
    assert sorted(problems) == [3, 4, 5, 6, 8]
    assert "unknown sector 'farming'" in problems[3]
    assert "duplicate id 'b1' (first on line 2)" in problems[4]
    assert "missing name" in problems[5]
    assert "not a whole number" in problems[6]
    assert "missing region" in problems[8] and "missing employees" in problems[8]
    assert "line 3:" in str(info.value) and "nothing imported" in str(info.value)
    with sqlite_db.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(register_orgs)) == 0


def test_bad_header_is_rejected(sqlite_db, tmp_path):
    with pytest.raises(ImportRejected, match="lacks column"), sqlite_db.begin() as conn:
        import_register(conn, write(tmp_path, "id,name,sector\nx,y,ict\n"))


def test_observations_import_validates_and_replaces_same_source(sqlite_db, tmp_path):
    good = (
        "sector,date,penetration,source\nall,2024-12-31,13.5%,Eurostat 2024\nfinance,2025-12-31,0.31,survey\n"
    )
    with sqlite_db.begin() as conn:
        assert import_observations(conn, write(tmp_path, good, "obs.csv")).inserted == 2
        again = import_observations(conn, write(tmp_path, good, "obs.csv"))
    assert (again.inserted, again.updated) == (0, 2)
    with sqlite_db.connect() as conn:
        obs = load_observations(conn)
    assert [(o["sector"], o["penetration"]) for o in obs] == [("all", 0.135), ("finance", 0.31)]
    bad = "sector,date,penetration,source\nfinance,2025-13-01,0.3,x\nict,2025-01-01,1.4,x\nmars,2025-01-01,0.1,\n"
    with pytest.raises(ImportRejected) as info, sqlite_db.begin() as conn:
        import_observations(conn, write(tmp_path, bad, "bad.csv"))
    assert [line for line, _ in info.value.problems] == [2, 3, 4]
    with sqlite_db.connect() as conn:
        assert len(load_observations(conn)) == 2
