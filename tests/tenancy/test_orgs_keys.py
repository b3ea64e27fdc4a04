import pytest

from aiplus.tenancy.errors import Conflict, Invalid, NotFound
from aiplus.tenancy.keys import create_key, key_digest, list_keys, lookup_digest, revoke_key
from aiplus.tenancy.orgs import create_org, get_org, list_orgs, size_class, update_org

SECRET = b"test-secret"


@pytest.mark.parametrize(
    ("employees", "cls"),
    [
        (None, None),
        (0, "micro"),
        (9, "micro"),
        (10, "small"),
        (49, "small"),
        (50, "medium"),
        (249, "medium"),
        (250, "large"),
    ],
)
def test_size_class(employees, cls):
    assert size_class(employees) == cls


def test_org_lifecycle(db):
    with db.connect() as conn:
        org = create_org(conn, name="Village Clinic", sector="healthcare", tier="lifeline", employees=12)
        assert org["id"] == "village-clinic" and org["size_class"] == "small"
        again = create_org(conn, name="Village Clinic", sector="healthcare")
        assert again["id"].startswith("village-clinic-")
        with pytest.raises(Conflict):
            create_org(conn, name="X", sector="ict", org_id="village-clinic")
        with pytest.raises(Invalid):
            create_org(conn, name="X", sector="mining")
        with pytest.raises(Invalid):
            create_org(conn, name="X", sector="ict", tier="gold")
        assert update_org(conn, "village-clinic", tier="batch")["tier"] == "batch"
        with pytest.raises(NotFound):
            update_org(conn, "nope", tier="batch")
    with db.connect() as conn:
        assert get_org(conn, "village-clinic")["tier"] == "batch"
        assert [o["id"] for o in list_orgs(conn, sector="healthcare")] == sorted([org["id"], again["id"]])


def test_keys_are_stored_only_as_digests(db):
    with db.connect() as conn:
        create_org(conn, name="A", sector="ict", org_id="a")
        row, key = create_key(conn, SECRET, "a", name="ci", models=["m2", "m1"])
        assert key.startswith("aip_") and len(key) >= 4 + 43
        assert row["prefix"] == key[:12] and "digest" not in row and row["models"] == ["m1", "m2"]
        with pytest.raises(NotFound):
            create_key(conn, SECRET, "b")
    with db.connect() as conn:
        found = lookup_digest(conn, key_digest(SECRET, key))
        assert found["id"] == row["id"] and found["tier"] == "standard" and found["models"] == ["m1", "m2"]
        assert lookup_digest(conn, key_digest(b"other", key)) is None
        stored = conn.exec_driver_sql("SELECT digest FROM api_keys").scalars().all()
        assert key not in str(stored)
        revoked, digest = revoke_key(conn, row["id"])
        assert revoked["revoked_at"] is not None and digest == key_digest(SECRET, key)
        assert list_keys(conn, "a")[0]["revoked_at"] is not None
