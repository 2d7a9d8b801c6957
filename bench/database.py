"""The bench database: a fresh one per run (or DATABASE_URI), the bench's own connection to it, and the
transaction counters read from `pg_stat_database`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.console import note
from orchestrator.persistence import migrations
from orchestrator.settings import load_settings

MARK = "/* orchestrator-bench */"
"""Tags the bench's own SQL, so that pg_stat_statements summaries can leave it out."""


def with_database(uri: str, name: str) -> str:
    """The same server URI with another database (works for host URIs and `?host=/socket` ones)."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"/{name}"))


def database_name(uri: str) -> str:
    return urlsplit(uri).path.lstrip("/") or "postgres"


def redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


@dataclass
class Database:
    dsn: str
    stats_dsn: str
    """Where `pg_stat_database` is read from: another database of the server when possible, so that reading the
    counters does not add to them."""
    description: str
    drop: Callable[[], Awaitable[None]] | None = None
    dedicated: bool = False


async def connect(dsn: str, timeout: float = 5.0) -> Any:
    return await asyncpg.connect(dsn, timeout=timeout)


async def create_database(admin_dsn: str, name: str) -> Callable[[], Awaitable[None]]:
    admin = await connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()

    async def drop() -> None:
        conn = await connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    return drop


async def provision_database(run_id: str) -> Database:
    """DATABASE_URI if set; else a fresh database on the local server; else one on the embedded PostgreSQL."""
    settings = load_settings()
    name = f"bench_{run_id}"
    if settings.DATABASE_URI:
        dsn = settings.DATABASE_URI
        database = Database(dsn, dsn, f"DATABASE_URI ({redact(dsn)})")
    else:
        admin = os.environ.get("BENCH_PG_ADMIN_URI", "postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            drop = await create_database(admin, name)
            dsn = with_database(admin, name)
            database = Database(dsn, admin, f"fresh database {name} on {redact(admin)}", drop, True)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            note(f"local PostgreSQL at {redact(admin)} not usable ({exc}); starting the embedded one")
            from orchestrator.persistence.database import locate

            location = await asyncio.to_thread(locate, None, settings.EMBEDDED_DATA_DIR)
            drop = await create_database(location.dsn, name)
            dsn = with_database(location.dsn, name)
            database = Database(
                dsn, location.dsn, f"fresh database {name} on the embedded PostgreSQL ({location.embedded_dir})"
            )
            database.drop, database.dedicated = drop, True
    conn = await connect(database.dsn)
    try:
        await migrations.upgrade(conn)
    finally:
        await conn.close()
    if database.stats_dsn == database.dsn:
        sibling = with_database(database.dsn, "postgres")
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            probe = await connect(sibling)
            await probe.close()
            database.stats_dsn = sibling
    return database


class Monitor:
    """The bench's connection to the bench database. Counts its statements: they are subtracted from the
    database's transaction count (each is one autocommit transaction)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.statements = 0

    @classmethod
    async def open(cls, dsn: str) -> Monitor:
        return cls(await connect(dsn))

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        self.statements += 1
        rows: list[Any] = await self.conn.fetch(query, *args)
        return rows

    async def listen(self, channel: str, callback: Callable[[], None]) -> None:
        """LISTEN; PostgreSQL 15 runs one transaction in a listening backend each time it wakes it up, for all
        the notifications then pending, so each batch received (one read: one loop tick) counts as a statement."""
        loop = asyncio.get_running_loop()
        woken = False

        def settle() -> None:
            nonlocal woken
            woken = False

        def received(*_: Any) -> None:
            nonlocal woken
            if not woken:
                woken = True
                self.statements += 1
                loop.call_soon(settle)
            callback()

        self.statements += 1
        await self.conn.add_listener(channel, received)

    async def close(self) -> None:
        await self.conn.close()


class Stats:
    """Reads `pg_stat_database` for the bench database from a connection that does not count in it."""

    def __init__(self, conn: Any, datname: str, same_database: bool) -> None:
        self.conn, self.datname, self.same_database = conn, datname, same_database
        self.rollbacks = 0

    async def backends(self) -> list[int]:
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.datname
        )
        return [r["pid"] for r in rows]

    async def settled_xacts(self, timeout: float = 15.0) -> int:
        """Commits + rollbacks once no other backend is connected (their counters are flushed at exit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await self.backends():
                break
            await asyncio.sleep(0.05)
        previous = -1
        while True:
            row = await self.conn.fetchrow(
                "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1", self.datname
            )
            value = int(row["xact_commit"] + row["xact_rollback"])
            if value == previous or time.monotonic() > deadline:
                self.rollbacks = int(row["xact_rollback"])
                # Reading from the bench database itself: this read is one more transaction.
                return value - (1 if self.same_database else 0)
            previous = value
            await asyncio.sleep(0.1)


async def quiesce(dsn: str) -> None:
    """Vacuum and checkpoint before a scenario (as pgbench vacuums before a run), so that it does not pay for
    the dead rows and dirty pages of the scenarios before it (measured: a lone process's p50 ran 8.6-9.8 ms
    after the throughput scenarios, 4.4-6.1 ms on a fresh database)."""
    conn = await connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE)")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):  # needs a superuser or pg_checkpoint
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
