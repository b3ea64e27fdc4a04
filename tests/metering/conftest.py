"""Fixtures of the metering tests."""

import pytest

from aiplus.storage.db import create_engine
from aiplus.storage.testing import scratch_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """A server's database, SQLite (under ``tmp_path/data``) or PostgreSQL: (env for the server, engine to read
    its ledger)."""
    if request.param == "postgresql":
        with scratch_database("postgresql", tmp_path) as (engine, url):
            yield {"AIPLUS_DATABASE_URL": url}, engine
        return
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'aiplus.db'}")
    yield {}, engine
    engine.dispose()
