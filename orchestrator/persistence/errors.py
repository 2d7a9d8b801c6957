"""Database errors under names the layers above catch without importing the driver."""

from __future__ import annotations

import asyncpg

ValueRefusedError = asyncpg.DataError
"""PostgreSQL refused a value (a NUL character, an out-of-range date): the input is at fault, not the program."""

DatabaseUnavailableError = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
)
"""The database cannot be reached or is refusing work right now (a failover, an upgrade, a cut connection): the
request may succeed if tried again, unlike a bug."""
