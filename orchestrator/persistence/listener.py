"""LISTEN with reconnect: one connection listening on the channels of its subscribers, re-established whenever it is
lost.

A program's components share one listener (`Store.listener`): PostgreSQL 15 wakes every listening connection of a
database for each notifying commit, whatever its channels, and each woken connection runs a transaction, so every
extra listening connection costs the server a transaction per NOTIFY.

A notification is a hint, never the record: those sent while the connection was down are gone. So after every
(re)connect each subscriber's `on_listening` runs, and the subscriber re-checks the database for what it may have
missed. A connection can also die without asyncpg noticing (a silent network drop): while idle it is checked every
`check_interval`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

logger = structlog.get_logger(__name__)


@dataclass(eq=False)
class Subscription:
    channel: str
    on_notify: Callable[[str], None]
    on_listening: Callable[[], None]


class Listener:
    """Calls each subscriber's `on_notify(payload)` for the notifications on its channel, from its `subscribe` until
    its `unsubscribe` (or `stop`). Listening starts with the first subscription and ends with the last.

    `source` is a pool, which lends the connection while anyone listens (so the pool needs another one for
    everything else), or a DSN, for a connection of its own named `application_name`.
    """

    def __init__(
        self,
        source: asyncpg.Pool | str,
        *,
        application_name: str | None = None,
        check_interval: float = 5.0,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self.source = source
        self.application_name = application_name
        self.check_interval = check_interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._subscriptions: list[Subscription] = []
        self._conn: Any = None
        self._channels: set[str] = set()
        """The channels LISTENed on `_conn`."""
        self._task: asyncio.Task[None] | None = None
        self._listened = False
        self._busy = asyncio.Lock()
        """One operation at a time on `_conn` (a LISTEN for a new subscriber, the liveness check)."""

    async def subscribe(
        self,
        channel: str,
        on_notify: Callable[[str], None],
        *,
        on_listening: Callable[[], None] = lambda: None,
        require_connection: bool = False,
    ) -> Subscription:
        """Listen on `channel` for `on_notify`; `on_listening` runs once the LISTEN is in place (now, if the
        connection is up) and after every reconnect. The first subscription starts listening in the background,
        retrying while the database cannot be reached; with `require_connection` it LISTENs first and raises if
        that fails (a program that must not start without it)."""
        subscription = Subscription(channel, on_notify, on_listening)
        self._subscriptions.append(subscription)
        if self._task is None:
            try:
                await self._start(require_connection)
            except BaseException:
                await self.unsubscribe(subscription)
                raise
        elif self._conn is not None:
            try:
                await self._listen_on(self._conn)
            except Exception as exc:  # the connection is going: its reconnect LISTENs and calls `on_listening`
                logger.warning("cannot LISTEN yet; on the reconnect", channel=channel, error=str(exc))
            else:
                on_listening()
        return subscription

    @property
    def server_pid(self) -> int | None:
        """The PostgreSQL backend of the listening connection; None while not connected."""
        return None if self._conn is None else int(self._conn.get_server_pid())

    async def unsubscribe(self, subscription: Subscription) -> None:
        with suppress(ValueError):
            self._subscriptions.remove(subscription)
        if not self._subscriptions:
            await self.stop()

    async def stop(self) -> None:
        """Stop listening (every subscription ends)."""
        self._subscriptions.clear()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    async def _start(self, require_connection: bool) -> None:
        if require_connection:
            try:
                await self._connect()
            except BaseException:
                await self._drop()
                raise
        self._task = asyncio.create_task(self._keep_listening(), name="listen")

    async def _keep_listening(self) -> None:
        backoff = self.min_backoff
        while True:
            try:
                if self._conn is None:
                    await self._connect()
                    backoff = self.min_backoff
                await self._watch(self._conn)
                channels = sorted(self._channels)
                logger.warning("LISTEN connection lost; reconnecting", channels=channels, retry_in=backoff)
            except Exception as exc:  # whatever broke, the listener must come back
                logger.warning("cannot LISTEN; retrying", error=str(exc), retry_in=backoff)
            await self._drop()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _connect(self) -> None:
        if isinstance(self.source, str):
            settings = {"application_name": self.application_name} if self.application_name else None
            conn = await asyncpg.connect(self.source, server_settings=settings)
        else:
            conn = await self.source.acquire()
        self._conn = conn
        await self._listen_on(conn)
        if self._listened:
            logger.info("LISTEN re-established", channels=sorted(self._channels))
        self._listened = True
        for subscription in list(self._subscriptions):
            subscription.on_listening()

    async def _listen_on(self, conn: Any) -> None:
        """LISTEN on every subscribed channel `conn` does not listen on yet (subscriptions may come meanwhile)."""
        async with self._busy:
            while missing := {s.channel for s in self._subscriptions} - self._channels:
                channel = missing.pop()
                await conn.add_listener(channel, self._notified)
                self._channels.add(channel)

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
                    async with self._busy:
                        await conn.fetchval("SELECT 1", timeout=self.check_interval)
        finally:
            with suppress(asyncpg.InterfaceError):  # asyncpg has already given a lent connection that died back
                conn.remove_termination_listener(on_lost)

    async def _drop(self) -> None:
        """Let go of the connection: a lent one goes back to its pool without its LISTENs (pooled connections carry
        no session state); one that does not answer is terminated. Cancelled midway, it is done again by `stop`."""
        conn, channels = self._conn, self._channels
        if conn is None:
            return
        try:
            async with asyncio.timeout(self.check_interval), self._busy:
                if isinstance(self.source, str):
                    await conn.close()
                elif not conn.is_closed():
                    for channel in list(channels):
                        await conn.remove_listener(channel, self._notified)
        except Exception:
            with suppress(asyncpg.InterfaceError):  # a lent connection that died: asyncpg has given it back
                conn.terminate()
        if not isinstance(self.source, str):
            await self.source.release(conn)  # a second release of the same connection does nothing
        self._conn = None
        self._channels = set()

    def _notified(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        for subscription in list(self._subscriptions):
            if subscription.channel == channel:
                subscription.on_notify(payload)
