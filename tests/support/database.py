"""Scratch PostgreSQL databases on the shared server, and reading what a process logged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg

from support.urls import ADMIN_URI, database_url, unique


@asynccontextmanager
async def scratch_database(prefix: str, template: str | None = None) -> AsyncIterator[str]:
    """A database of its own (a copy of `template` if given), dropped afterwards; yields its URL."""
    name = unique(prefix)
    admin = await asyncpg.connect(ADMIN_URI)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        yield database_url(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def scratch_pool(prefix: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on a scratch database of its own (for tests of one persistence piece), closed and dropped after."""
    async with scratch_database(prefix) as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        try:
            yield pool
        finally:
            await asyncio.wait_for(pool.close(), timeout=10)


async def step_rows(dsn_or_pool: Any, pid: UUID) -> list[tuple[str, str]]:
    """The (name, status) of the steps `pid` logged, in order."""
    query = "SELECT name, status FROM process_steps WHERE pid = $1 ORDER BY completed_at, seq"
    if isinstance(dsn_or_pool, str):
        conn = await asyncpg.connect(dsn_or_pool)
        try:
            rows = await conn.fetch(query, pid)
        finally:
            await conn.close()
    else:
        rows = await dsn_or_pool.fetch(query, pid)
    return [(r["name"], r["status"]) for r in rows]
