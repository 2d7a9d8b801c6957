"""A database transaction that begins on its first statement, with callbacks for after its commit or rollback.

The callbacks are how a change and what must follow it stay together without a dual write: an in-memory dispatch
or a live-update event happens only once the change has committed, and a reservation made for it is released if
it rolled back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg


class Transaction:
    """A transaction on one connection of `pool`, taken at its first statement. It begins on its first statement
    through `conn`; one whose only statement is its last (`fetchval_last`/`fetchrow_last`) runs that statement
    alone: one round trip instead of three, and a single statement is atomic by itself. One that has not `begun`
    may also leave its only statement to a group commit (`creates.py`), and then holds no connection at all.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._raw: Any = None
        self._tx: Any = None
        self._after_commit: list[Callable[[], None]] = []
        self._after_rollback: list[Callable[[], None]] = []
        self._once: set[Callable[[], None]] = set()
        self.conn = _BeginsFirst(self)

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)

    def on_commit_once(self, callback: Callable[[], None]) -> None:
        """`on_commit`, unless `callback` is registered already: once per transaction, however many changes need it."""
        if callback not in self._once:
            self._once.add(callback)
            self._after_commit.append(callback)

    def on_rollback(self, callback: Callable[[], None]) -> None:
        """Run `callback` if the transaction fails (whatever it wrote is gone)."""
        self._after_rollback.append(callback)

    @property
    def begun(self) -> bool:
        """Whether a statement has begun the transaction (its later statements must run in it)."""
        return self._tx is not None

    async def _connection(self) -> asyncpg.Connection:
        if self._raw is None:
            self._raw = await self._pool.acquire()
        return self._raw

    async def begin(self) -> asyncpg.Connection:
        conn = await self._connection()
        if self._tx is None:
            tx = conn.transaction()
            # Kept only once BEGIN succeeded: a failed or cancelled BEGIN cannot be rolled back, and trying would
            # replace the original error (a CancelledError, on shutdown) with asyncpg's InterfaceError.
            await tx.start()
            self._tx = tx
        return conn

    async def fetchval_last(self, query: str, *args: Any) -> Any:
        return await (await self._connection()).fetchval(query, *args)

    async def fetchrow_last(self, query: str, *args: Any) -> Any:
        return await (await self._connection()).fetchrow(query, *args)

    async def _end(self, failed: bool) -> None:
        if self._tx is not None:
            await (self._tx.rollback() if failed else self._tx.commit())

    async def _release(self) -> None:
        conn, self._raw = self._raw, None
        if conn is not None:
            await self._pool.release(conn)


class _BeginsFirst:
    """The transaction's connection: the first statement through it begins the transaction."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    async def execute(self, query: str, *args: Any) -> str:
        return str(await (await self._tx.begin()).execute(query, *args))

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return list(await (await self._tx.begin()).fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await (await self._tx.begin()).fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await (await self._tx.begin()).fetchval(query, *args)


@asynccontextmanager
async def open_transaction(pool: asyncpg.Pool) -> AsyncIterator[Transaction]:
    """A transaction on a connection of `pool`: committed if the block returns, rolled back if it raises; then
    the matching callbacks run."""
    tx = Transaction(pool)
    committed = False
    try:
        try:
            yield tx
        except BaseException:
            await tx._end(failed=True)
            raise
        await tx._end(failed=False)
        committed = True
    finally:
        await tx._release()
        if not committed:
            for callback in tx._after_rollback:
                callback()
    for callback in tx._after_commit:
        callback()
