"""One PostgreSQL LISTEN connection per app instance, fanned out to the live-update subscribers (websockets, SSE).

Every process change is NOTIFYed on `EVENTS_CHANNEL` once it has committed, whichever API instance or worker made
it, so every instance sees every change without Redis. Subscribers get bounded queues: a client too slow to
keep up is dropped instead of holding back the others or growing memory. A dropped LISTEN connection is
re-established, and subscribers then get `{"reconnected": true}`, as changes may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any

import asyncpg
import structlog

from orchestrator.dsl import jsonutil
from orchestrator.persistence.events import EVENTS_CHANNEL

logger = structlog.get_logger(__name__)

Event = dict[str, Any]

APPLICATION_NAME = "orchestrator-events"
_CLOSED: Event = {}


class Subscription:
    """A subscriber's queue of events; ends (`get` returns None) when the hub drops the subscriber or stops."""

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[Event] = asyncio.Queue(size)
        self.closed = False

    def offer(self, event: Event) -> bool:
        """Queue an event; False (and the subscription closes) when the queue is full."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.close()
            return False
        return True

    def close(self) -> None:
        self.closed = True
        with suppress(asyncio.QueueFull):  # full: the reader drains it, then finds `closed`
            self._queue.put_nowait(_CLOSED)

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event; None once closed. With `timeout`, raises TimeoutError when nothing came meanwhile."""
        if self.closed and self._queue.empty():
            return None
        async with asyncio.timeout(timeout):
            event = await self._queue.get()
        return None if event is _CLOSED else event


class EventHub:
    def __init__(self, dsn: str, *, queue_size: int = 256, check_interval: float = 5.0) -> None:
        self.dsn = dsn
        self.queue_size = queue_size
        self.check_interval = check_interval
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None

    def subscribe(self) -> Subscription:
        """A new subscriber; every subscribe must be paired with `unsubscribe`."""
        subscription = Subscription(self.queue_size)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def publish(self, event: Event) -> None:
        for subscription in list(self._subscribers):
            if not subscription.offer(event):
                self._subscribers.discard(subscription)
                logger.warning("live-update subscriber too slow; dropped", queue_size=self.queue_size)

    def close_subscriptions(self) -> None:
        """End every stream (shutdown): websockets close, SSE responses finish."""
        for subscription in list(self._subscribers):
            subscription.close()
        self._subscribers.clear()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            event = jsonutil.loads(payload)
        except ValueError:
            logger.warning("ignoring a malformed event", payload=payload[:200])
            return
        if isinstance(event, dict):
            self.publish(event)

    async def _listen(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": APPLICATION_NAME})
        await conn.add_listener(EVENTS_CHANNEL, self._on_notify)
        return conn

    async def start(self) -> None:
        """LISTEN (failing if the database cannot be reached now), then keep listening in the background."""
        self._conn = await self._listen()
        self._task = asyncio.create_task(self._keep_listening(), name="event-hub")

    async def _keep_listening(self) -> None:
        backoff = 0.1
        while True:
            conn = self._conn
            try:
                if conn is None:
                    conn = self._conn = await self._listen()
                    logger.info("event listener reconnected")
                    self.publish({"reconnected": True})
                backoff = 0.1
                await self._watch(conn)
            except Exception as exc:  # whatever broke, live updates must come back
                logger.warning("event listener lost its connection; reconnecting", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Return when the connection is lost: asyncpg reports a terminated socket; a periodic query finds the rest."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _: lost.set())
        while not lost.is_set() and not conn.is_closed():
            with suppress(TimeoutError):
                async with asyncio.timeout(self.check_interval):
                    await lost.wait()
            if not lost.is_set():
                await conn.fetchval("SELECT 1", timeout=self.check_interval)

    async def stop(self) -> None:
        self.close_subscriptions()
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._conn.close(), timeout=2)
            self._conn = None
