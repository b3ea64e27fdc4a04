import pytest

from aiplus.storage.testing import scratch_database


@pytest.fixture
def engine(tmp_path):
    with scratch_database("sqlite", tmp_path) as (engine, _):
        yield engine


@pytest.fixture
def pg_engine(tmp_path):
    """A private schema on the machine's PostgreSQL, dropped afterwards (safe next to other test runs)."""
    with scratch_database("postgresql", tmp_path) as (engine, _):
        yield engine
