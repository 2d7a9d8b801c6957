"""Outbox relay: publishes the `outbox` rows (`persistence/outbox.py`) to RabbitMQ as Dramatiq messages, then
deletes them.

A dispatch is an outbox row written in the transaction of the status change that needs it, and once that
transaction has committed the writer's own relay is woken (or, when it is not `publishing`, every relay by a
NOTIFY on `OUTBOX_CHANNEL`). So a dispatch exists if and only if the change committed, and publishing is not on
the request path: the relay LISTENs for the notification (`persistence/listener.py`), and also polls, because a
notification is lost while its LISTEN connection is down.

One drain is one transaction (`Store.outbox_batch`): lock a batch (`FOR UPDATE SKIP LOCKED`), publish it with
publisher confirms, delete it, commit.

* Several relays (API instances, workers) may drain at once: SKIP LOCKED gives each row to one of them, so when
  nothing crashes every row is published exactly once.
* Delivery is at-least-once: a crash or a lost database connection between the broker's confirm and the commit of
  the DELETE leaves the row, and it is published again. That is harmless: a worker claims a process by a
  compare-and-set on its status, so the duplicate finds it already claimed (or finished) and does nothing.
* Broker down: the transaction rolls back and the rows stay. One warning per outage (not per poll), and retries
  back off up to `max_backoff` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol

import structlog

from brokers.dramatiq import encode_message
from brokers.rabbitmq import BrokerRejectedError, BrokerUnavailableError
from orchestrator.persistence.errors import DatabaseUnavailableError
from orchestrator.persistence.events import OUTBOX_CHANNEL
from orchestrator.persistence.store import Store

log = structlog.get_logger(__name__)


class BatchPublisher(Protocol):
    async def publish_batch(self, messages: Sequence[tuple[str, bytes]]) -> None: ...


class OutboxRelay:
    """Drains the outbox on NOTIFY, on `wake()` and every `poll_interval` seconds, until `stop()`.

    It LISTENs on the store's shared connection (`Store.listener`), lent by the store's pool for the relay's
    lifetime, so the pool needs a second connection for the drains.
    """

    def __init__(
        self,
        store: Store,
        publisher: BatchPublisher,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        min_backoff: float = 0.5,
        max_backoff: float = 5.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._store = store
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._outages: dict[str, float] = {}  # "broker" / "database" -> since (monotonic)
        self._running = False
        self.published = 0  # rows published and deleted by this relay: for metrics and tests

    @property
    def publishing(self) -> bool:
        """Running, not stopping, and neither the broker nor the database known to be down: a `wake()` publishes."""
        return self._running and not self._stopping.is_set() and not self._outages

    def wake(self) -> None:
        """Drain now (call after committing outbox rows in this process; saves the NOTIFY round trip)."""
        self._wake.set()

    def stop(self) -> None:
        """Make `run()` return after the batch in flight (it is committed or rolled back, never cut in half)."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Drain until `stop()`; never raises because of a broker or database outage. A relay runs once."""
        # After each (re)connect: drain, as notifications sent while not listening are gone.
        listener = self._store.listener
        subscription = await listener.subscribe(OUTBOX_CHANNEL, lambda _payload: self.wake(), on_listening=self.wake)
        backoff = 0.0
        self._running = True
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    await self.drain()
                except Exception as exc:  # the relay must outlive any single failure
                    backoff = min(max(backoff * 2, self._min_backoff), self._max_backoff)
                    self._on_failure(exc, backoff)
                    await self._wait(self._stopping, backoff)  # a NOTIFY does not cut a back-off short
                else:
                    backoff = 0.0
                    await self._wait(self._wake, self._poll_interval)
        finally:
            self._running = False
            await listener.unsubscribe(subscription)

    async def drain(self) -> int:
        """Publish and delete batches until one is not full; return how many rows were published."""
        total = 0
        while True:
            count = await self._drain_batch()
            total += count
            if count < self._batch_size or self._stopping.is_set():
                return total

    async def _drain_batch(self) -> int:
        async with self._store.outbox_batch(self._batch_size) as rows:
            if not rows:
                self._on_database_ok()
                return 0
            messages = []
            for row in rows:
                try:
                    body = encode_message(row.queue, row.actor, row.args)
                except ValueError as exc:  # an invalid queue name can never be consumed: drop it, loudly
                    log.error("outbox.row_dropped", id=row.id, queue=row.queue, pid=str(row.pid), error=str(exc))
                    continue
                messages.append((row.queue, body))
            await self._publisher.publish_batch(messages)
        self._on_database_ok()
        self._on_broker_ok(len(messages))
        return len(rows)

    def _on_failure(self, exc: Exception, retry_in: float) -> None:
        if isinstance(exc, BrokerUnavailableError):
            self._outage_started("broker", exc, retry_in)
        elif isinstance(exc, DatabaseUnavailableError):
            self._outage_started("database", exc, retry_in)
        elif isinstance(exc, BrokerRejectedError):
            log.error("outbox.publish_rejected", error=str(exc), retry_in=retry_in)
        else:
            log.exception("outbox.drain_failed", retry_in=retry_in)

    def _outage_started(self, kind: str, exc: Exception, retry_in: float) -> None:
        if kind in self._outages:
            log.debug("outbox.still_unavailable", kind=kind, error=str(exc), retry_in=retry_in)
            return
        self._outages[kind] = time.monotonic()
        log.warning("outbox.unavailable", kind=kind, error=str(exc), detail="rows are kept and retried")

    def _on_broker_ok(self, published: int) -> None:
        self.published += published
        since = self._outages.pop("broker", None)
        if since is not None:
            log.info("outbox.available", kind="broker", outage_seconds=round(time.monotonic() - since, 3))

    def _on_database_ok(self) -> None:
        since = self._outages.pop("database", None)
        if since is not None:
            log.info("outbox.available", kind="database", outage_seconds=round(time.monotonic() - since, 3))

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
