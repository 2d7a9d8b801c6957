"""A LISTEN per app instance, on the program's shared listening connection (`Store.listener`), fanned out to the
live-update subscribers (websockets, SSE).

Every process change is NOTIFYed on `EVENTS_CHANNEL` once it has committed, whichever API instance or worker made
it, so every instance sees every change without Redis. Subscribers get bounded queues: a client too slow to
keep up is dropped instead of holding back the others or growing memory. A dropped LISTEN connection is
re-established, and subscribers then get `{"reconnected": true}`, as changes may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any

import structlog

from orchestrator.dsl import jsonutil
from orchestrator.persistence.events import EVENTS_CHANNEL
from orchestrator.persistence.listener import Listener
from orchestrator.persistence.listener import Subscription as ListenerSubscription

logger = structlog.get_logger(__name__)

Event = dict[str, Any]

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
    def __init__(self, listener: Listener, *, queue_size: int = 256) -> None:
        """`listener`: the program's shared LISTEN connection (`Store.listener`)."""
        self.queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._listener = listener
        self._listening: ListenerSubscription | None = None

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

    def _on_notify(self, payload: str) -> None:
        try:
            event = jsonutil.loads(payload)
        except ValueError:
            logger.warning("ignoring a malformed event", payload=payload[:200])
            return
        if isinstance(event, dict):
            self.publish(event)

    def _on_listening(self) -> None:
        # Changes may have been missed while not listening: subscribers refetch. (None is subscribed yet at the
        # first LISTEN, made by `start` before the app serves.)
        self.publish({"reconnected": True})

    async def start(self) -> None:
        """LISTEN (failing if the database cannot be reached now), then keep listening in the background."""
        self._listening = await self._listener.subscribe(
            EVENTS_CHANNEL, self._on_notify, on_listening=self._on_listening, require_connection=True
        )

    async def stop(self) -> None:
        self.close_subscriptions()
        if self._listening is not None:
            await self._listener.unsubscribe(self._listening)
            self._listening = None
