"""Fixtures shared by the outbox tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine

from jobs_core.outbox import Outbox


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test database (SQLite or PostgreSQL) with the outbox's tables."""
    engine = create_engine(database_url)
    Outbox(engine).create_table()
    try:
        yield engine
    finally:
        engine.dispose()
