"""LISTEN with reconnect: one connection listening on one channel, re-established whenever it is lost.

A notification is a hint, never the record: those sent while the connection was down are gone. So after every
(re)connect `on_listening` runs, and the caller re-checks the database for what it may have missed. A connection
can also die without asyncpg noticing (a silent network drop): while idle it is checked every `check_interval`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import asyncpg
import structlog

logger = structlog.get_logger(__name__)


class Listener:
    """Calls `on_notify(payload)` for each notification on `channel`, from `start()` until `stop()`.

    `source` is a pool, which lends the connection for the listener's lifetime (so the pool needs another one for
    everything else), or a DSN, for a connection of its own named `application_name`.
    """

    def __init__(
        self,
        source: asyncpg.Pool | str,
        channel: str,
        on_notify: Callable[[str], None],
        *,
        on_listening: Callable[[], None] = lambda: None,
        application_name: str | None = None,
        check_interval: float = 5.0,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self.source = source
        self.channel = channel
        self.on_notify = on_notify
        self.on_listening = on_listening
        self.application_name = application_name
        self.check_interval = check_interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._listened = False

    async def start(self, *, require_connection: bool = False) -> None:
        """Listen in the background, retrying while the database cannot be reached. With `require_connection`,
        LISTEN first and raise if that fails (a program that must not start without it)."""
        if require_connection:
            try:
                await self._listen()
            except BaseException:
                await self._drop()
                raise
        self._task = asyncio.create_task(self._keep_listening(), name=f"listen-{self.channel}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    async def _keep_listening(self) -> None:
        backoff = self.min_backoff
        while True:
            try:
                if self._conn is None:
                    await self._listen()
                    backoff = self.min_backoff
                await self._watch(self._conn)
                logger.warning("LISTEN connection lost; reconnecting", channel=self.channel, retry_in=backoff)
            except Exception as exc:  # whatever broke, the listener must come back
                logger.warning("cannot LISTEN; retrying", channel=self.channel, error=str(exc), retry_in=backoff)
            await self._drop()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _listen(self) -> None:
        if isinstance(self.source, str):
            settings = {"application_name": self.application_name} if self.application_name else None
            self._conn = await asyncpg.connect(self.source, server_settings=settings)
        else:
            self._conn = await self.source.acquire()
        await self._conn.add_listener(self.channel, self._notified)
        if self._listened:
            logger.info("LISTEN re-established", channel=self.channel)
        self._listened = True
        self.on_listening()

    async def _watch(self, conn: Any) -> None:
        """Return when `conn` is lost: asyncpg reports a closed socket; a periodic query finds the rest."""
        lost = asyncio.Event()

        def on_lost(_conn: object) -> None:
            lost.set()

        conn.add_termination_listener(on_lost)
        try:
            while not lost.is_set() and not conn.is_closed():
                with suppress(TimeoutError):
                    async with asyncio.timeout(self.check_interval):
                        await lost.wait()
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=self.check_interval)
        finally:
            with suppress(asyncpg.InterfaceError):  # asyncpg has already given a lent connection that died back
                conn.remove_termination_listener(on_lost)

    async def _drop(self) -> None:
        """Let go of the connection: a lent one goes back to its pool without its LISTEN (pooled connections carry
        no session state); one that does not answer is terminated. Cancelled midway, it is done again by `stop`."""
        conn = self._conn
        if conn is None:
            return
        try:
            async with asyncio.timeout(self.check_interval):
                if isinstance(self.source, str):
                    await conn.close()
                elif not conn.is_closed():
                    await conn.remove_listener(self.channel, self._notified)
        except Exception:
            with suppress(asyncpg.InterfaceError):  # a lent connection that died: asyncpg has given it back
                conn.terminate()
        if not isinstance(self.source, str):
            await self.source.release(conn)  # a second release of the same connection does nothing
        self._conn = None

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.on_notify(payload)
