"""Shared fixtures: a real PostgreSQL database per test, migrated, and an open Orchestrator on it.

PostgreSQL is the machine's server at 127.0.0.1:5432 (override with TEST_PG_ADMIN_URI). A template database is
migrated once per session; each test gets its own copy (CREATE DATABASE ... TEMPLATE), dropped afterwards, so
tests (and several test runs at once) never see each other's rows. Helpers and the broker fixtures (`amqp`,
`proxy`) are in the `support` package.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from orchestrator.persistence import migrations
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import AppSettings, load_settings
from orchestrator.testing.fixtures import clean_orchestrator, migrated_database

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `support` and `testflows` (test workflows) import here

from support.database import scratch_database
from support.processes import subprocess_env
from support.urls import ADMIN_URI

__all__ = ["clean_orchestrator"]  # `orchestrator.testing`'s fixture, as users' suites get it

pytest_plugins = ["support.amqp", "support.tcpproxy"]


@pytest.fixture(scope="session")
async def template_db() -> AsyncIterator[str]:
    async with scratch_database("orch_tmpl") as uri:
        conn = await asyncpg.connect(uri)
        try:
            await migrations.upgrade(conn)
        finally:
            await conn.close()
        yield uri.rpartition("/")[2]


@pytest.fixture
async def database_uri(template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test."""
    async with scratch_database("orch_test", template=template_db) as uri:
        yield uri


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
    return subprocess_env(database_uri)
