"""Wake-ups for programs waiting on processes: one LISTEN on `EVENTS_CHANNEL` per program, shared by all waiters.

A notification is a hint, never the record: a waiter is woken on each event about its process and re-reads the
row. Events sent while the connection was down are lost, so every waiter is also woken once the LISTEN is in
place, the first time and after each reconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from uuid import UUID

import asyncpg
import structlog

from orchestrator.dsl import jsonutil
from orchestrator.persistence.events import EVENTS_CHANNEL

logger = structlog.get_logger(__name__)

APPLICATION_NAME = "orchestrator-watch"


class ProcessWatch:
    def __init__(self, dsn: str, *, check_interval: float = 5.0, retry_interval: float = 0.5) -> None:
        """Nothing connects until the first `changes()`: a program that never waits holds no extra connection."""
        self.dsn = dsn
        self.check_interval = check_interval
        self.retry_interval = retry_interval
        self._waiters: dict[UUID, set[asyncio.Event]] = {}
        self._listening = False
        self._task: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def changes(self, pid: UUID) -> AsyncIterator[asyncio.Event]:
        """An event that is set whenever `pid` may have changed; read the process each time it is set (and clear
        it). It is first set once the LISTEN is in place, so a read made then misses no change."""
        changed = asyncio.Event()
        self._waiters.setdefault(pid, set()).add(changed)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen_forever(), name="process-watch")
        if self._listening:
            changed.set()
        try:
            yield changed
        finally:
            waiters = self._waiters.get(pid, set())
            waiters.discard(changed)
            if not waiters:
                self._waiters.pop(pid, None)

    def _on_notify(self, conn: object, backend_pid: int, channel: str, payload: str) -> None:
        try:
            pid = UUID(jsonutil.loads(payload)["pid"])
        except (ValueError, KeyError, TypeError):  # engine events carry no pid; malformed ones are ignored
            return
        for changed in self._waiters.get(pid, ()):
            changed.set()

    async def _listen_forever(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, server_settings={"application_name": APPLICATION_NAME})
                await conn.add_listener(EVENTS_CHANNEL, self._on_notify)
                self._listening = True
                for waiters in self._waiters.values():
                    for changed in waiters:
                        changed.set()
                await self._until_lost(conn)
                logger.warning("process watch lost its connection; reconnecting")
            except Exception as exc:  # waiters must be woken again once the database is back
                logger.warning("process watch cannot LISTEN; retrying", error=str(exc), retry_in=self.retry_interval)
            finally:
                self._listening = False
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(self.retry_interval)

    async def _until_lost(self, conn: asyncpg.Connection) -> None:
        """asyncpg reports a closed socket; a periodic query finds a connection that died silently."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _: lost.set())
        while not lost.is_set():
            with suppress(TimeoutError):
                async with asyncio.timeout(self.check_interval):
                    await lost.wait()
            if not lost.is_set():
                await conn.fetchval("SELECT 1", timeout=self.check_interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
