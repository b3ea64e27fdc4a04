"""Every wait on PostgreSQL ends: a statement the server runs too long is cancelled by it, and a statement whose
answer is lost on the way (a proxy swallows it) is cut by the client's watchdog."""

import time

import pytest
import sqlalchemy as sa

from aiplus.storage import db
from aiplus.storage.testing import scratch_database
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def pg(tmp_path):
    with scratch_database("postgresql", tmp_path) as (engine, url):
        yield engine, url


def test_a_statement_running_too_long_is_cancelled(pg):
    engine, _url = pg
    began = time.monotonic()
    with pytest.raises(sa.exc.OperationalError, match="statement timeout"), engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_sleep(:s)"), {"s": db.STATEMENT_TIMEOUT_MS / 1000 + 20})
    assert time.monotonic() - began < db.STATEMENT_TIMEOUT_MS / 1000 + 10


def test_an_answer_lost_on_the_way_is_cut_and_the_pool_recovers(pg):
    engine, url = pg
    proxy = TcpProxy(engine.url.port or 5432)
    through = db.create_engine(url.replace(f":{engine.url.port or 5432}/", f":{proxy.port}/"))
    try:
        with through.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
            proxy.blackhole()
            began = time.monotonic()
            with pytest.raises(sa.exc.OperationalError):
                conn.execute(sa.text("SELECT 2"))  # sent into the void: no answer, no error, no RST
            took = time.monotonic() - began
        assert took < db.STATEMENT_TIMEOUT_MS / 1000 + db.WATCHDOG_GRACE_S + 5
        began = time.monotonic()
        with (
            pytest.raises(sa.exc.OperationalError),
            through.connect() as conn,
        ):  # a new connection: bounded too
            conn.execute(sa.text("SELECT 3"))
        assert time.monotonic() - began < db.PING_TIMEOUT_S + db.CONNECT_TIMEOUT_S + 5
        proxy.restore()
        with through.connect() as conn:  # the pool heals by itself
            assert conn.execute(sa.text("SELECT 4")).scalar() == 4
    finally:
        proxy.restore()
        through.dispose()
        proxy.close()
