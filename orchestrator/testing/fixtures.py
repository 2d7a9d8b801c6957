"""The pytest fixture for workflow tests: `clean_orchestrator`, an open Orchestrator on a clean database.

Use it from the suite's root conftest.py:  `pytest_plugins = ["orchestrator.testing.fixtures"]`.

The session gets a database of its own, created next to DATABASE_URI's (on the same server; the embedded
PostgreSQL when it is unset) and migrated once; the user needs CREATEDB. Each test starts on emptied process
tables, which takes a few milliseconds where copying a template database takes half a second. The executor is
the in-process one whatever EXECUTOR says: a test runs its workflows itself. Needs pytest-asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import asyncpg
import pytest
import pytest_asyncio

from orchestrator.persistence import database, migrations
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import ExecutorType, load_settings

_EMPTY = """
DELETE FROM processes;
DELETE FROM outbox;
DELETE FROM workers;
DELETE FROM step_duration_counts;
UPDATE engine_settings SET global_lock = false;
"""
"""Steps, input states and subscription links go with their process (ON DELETE CASCADE); workflows stay."""


def _on_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run set-up SQL on a loop of its own, in a thread, leaving pytest-asyncio's loops alone."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, coroutine).result()


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _create(server_dsn: str, name: str) -> None:
    await _execute(server_dsn, f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(_on_database(server_dsn, name))
    try:
        await migrations.upgrade(conn)
    finally:
        await conn.close()


@contextmanager
def migrated_database(server_dsn: str) -> Iterator[str]:
    """A new migrated database on the server of `server_dsn`; yields its URI, drops it afterwards."""
    name = f"orchestrator_test_{uuid4().hex[:12]}"
    _run(_create(server_dsn, name))
    try:
        yield _on_database(server_dsn, name)
    finally:
        _run(_execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def orchestrator_test_database() -> Iterator[str]:
    """This session's database, on DATABASE_URI's server (or the embedded one). Override this fixture with
    `migrated_database(uri)` to put it on another server."""
    settings = load_settings()
    with migrated_database(database.locate(settings.DATABASE_URI, settings.EMBEDDED_DATA_DIR).dsn) as uri:
        yield uri


@pytest_asyncio.fixture
async def clean_orchestrator(orchestrator_test_database: str) -> AsyncIterator[Orchestrator]:
    """An open Orchestrator (settings from the environment) on the session's database, emptied for this test."""
    await _execute(orchestrator_test_database, _EMPTY)
    settings = load_settings(
        DATABASE_URI=orchestrator_test_database,
        MIGRATE_ON_START=False,
        EXECUTOR=ExecutorType.THREADPOOL,
        DB_SYNCHRONOUS_COMMIT="off",  # a test database needs no durability: no WAL flush per step
    )
    async with Orchestrator(settings) as orchestrator:
        yield orchestrator
