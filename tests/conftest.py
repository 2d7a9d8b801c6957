"""Shared fixtures: a real PostgreSQL database per test, migrated, and an open Orchestrator on it.

PostgreSQL is the machine's server at 127.0.0.1:5432 (override with TEST_PG_ADMIN_URI). A template database is
migrated once per session; each test gets its own copy (CREATE DATABASE ... TEMPLATE), dropped afterwards, so
tests (and several test runs at once) never see each other's rows.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from orchestrator.persistence import migrations
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import AppSettings, load_settings
from orchestrator.testing.fixtures import clean_orchestrator, migrated_database

__all__ = ["clean_orchestrator"]  # `orchestrator.testing`'s fixture, as users' suites get it

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
sys.path.insert(0, str(TESTS_DIR))  # `testflows` (test workflows) is importable here and in worker subprocesses

ADMIN_URI = os.environ.get("TEST_PG_ADMIN_URI", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER_URL = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _with_db(uri: str, name: str) -> str:
    base, _, _ = uri.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
async def template_db() -> AsyncIterator[str]:
    name = f"orch_tmpl_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_URI)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(_with_db(ADMIN_URI, name))
        try:
            await migrations.upgrade(conn)
        finally:
            await conn.close()
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def database_uri(template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test."""
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_URI)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        yield _with_db(ADMIN_URI, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
def orchestrator_test_database() -> Iterator[str]:
    """The session database of `clean_orchestrator`, on the test server whatever DATABASE_URI says."""
    with migrated_database(ADMIN_URI) as uri:
        yield uri


@pytest.fixture
def settings(database_uri: str, monkeypatch: pytest.MonkeyPatch) -> AppSettings:
    monkeypatch.delenv("EXECUTOR", raising=False)
    return load_settings(
        DATABASE_URI=database_uri,
        MIGRATE_ON_START=False,
        WORKFLOW_MODULES=["testflows"],
        LEASE_TTL_SECONDS=2.0,
        SWEEP_INTERVAL_SECONDS=0.5,
        SHUTDOWN_TIMEOUT_SECONDS=5.0,
        DB_POOL_SIZE=10,
        MAX_WORKERS=8,
    )


@pytest.fixture
async def orch(settings: AppSettings) -> AsyncIterator[Orchestrator]:
    """An open Orchestrator (threadpool executor) on the test's database."""
    async with Orchestrator(settings) as orchestrator:
        yield orchestrator


@pytest.fixture
def worker_env(database_uri: str) -> dict[str, str]:
    """Environment for subprocesses (workers, servers) that must see the test's database and workflows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "EXECUTOR"))}
    env.update(
        DATABASE_URI=database_uri,
        WORKFLOW_MODULES="testflows",
        PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO_DIR)]),
        MIGRATE_ON_START="false",
        LOG_FORMAT="json",
    )
    return env
