"""Transactional-outbox relay: publishes `outbox` rows to RabbitMQ as Dramatiq messages, then deletes them.

The engine inserts an outbox row in the same transaction as the status change that needs a dispatch, followed by
`NOTIFY orchestrator_outbox` (delivered on commit). So a dispatch exists if and only if the change committed, and
publishing is not on the request path: the relay LISTENs for the notification, and also polls, because a
notification is lost while its LISTEN connection is down.

One drain, in one transaction: `SELECT ... FOR UPDATE SKIP LOCKED` a batch, publish it with publisher confirms,
`DELETE` it, commit.

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
from typing import Any, Protocol

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import structlog

from brokers.dramatiq import encode_message
from brokers.rabbitmq import BrokerRejectedError, BrokerUnavailableError

log = structlog.get_logger(__name__)

#: The channel the engine NOTIFYs after inserting outbox rows (the same name as `store.OUTBOX_CHANNEL`).
OUTBOX_CHANNEL = "orchestrator_outbox"

_SELECT = "SELECT id, queue, actor, pid, run_by FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
_DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"

#: Errors that mean "the database is unreachable right now", as opposed to a bug.
_DB_DOWN = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)


class BatchPublisher(Protocol):
    async def publish_batch(self, messages: Sequence[tuple[str, bytes]]) -> None: ...


class OutboxRelay:
    """Drains the outbox on NOTIFY, on `wake()` and every `poll_interval` seconds, until `stop()`.

    The LISTEN connection is taken from `pool` for the relay's lifetime (so the pool needs a second connection for
    the drains), or opened with `asyncpg.connect(listen_dsn)` when given.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: BatchPublisher,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        min_backoff: float = 0.5,
        max_backoff: float = 5.0,
        listen_dsn: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._pool = pool
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._listen_dsn = listen_dsn
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._outages: dict[str, float] = {}  # "broker" / "database" -> since (monotonic)
        self.published = 0  # rows published and deleted by this relay: for metrics and tests

    def wake(self) -> None:
        """Drain now (call after committing outbox rows in this process; saves the NOTIFY round trip)."""
        self._wake.set()

    def stop(self) -> None:
        """Make `run()` return after the batch in flight (it is committed or rolled back, never cut in half)."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Drain until `stop()`; never raises because of a broker or database outage. A relay runs once."""
        listener = asyncio.create_task(self._listen(), name="outbox-listen")
        backoff = 0.0
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
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def drain(self) -> int:
        """Publish and delete batches until one is not full; return how many rows were published."""
        total = 0
        while True:
            count = await self._drain_batch()
            total += count
            if count < self._batch_size or self._stopping.is_set():
                return total

    async def _drain_batch(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_SELECT, self._batch_size)
            if not rows:
                self._on_database_ok()
                return 0
            messages = []
            for row in rows:
                try:
                    body = encode_message(row["queue"], row["actor"], [str(row["pid"]), row["run_by"]])
                except ValueError as exc:  # an invalid queue name can never be consumed: drop it, loudly
                    log.error(
                        "outbox.row_dropped", id=row["id"], queue=row["queue"], pid=str(row["pid"]), error=str(exc)
                    )
                    continue
                messages.append((row["queue"], body))
            await self._publisher.publish_batch(messages)
            await conn.execute(_DELETE, [row["id"] for row in rows])
        self._on_database_ok()
        self._on_broker_ok(len(messages))
        return len(rows)

    async def _listen(self) -> None:
        """Hold a LISTEN connection; re-LISTEN (and drain, for what was missed) after it is lost."""
        backoff = self._min_backoff
        while not self._stopping.is_set():
            try:
                conn = await self._connect_listener()
                try:
                    await self._listen_on(conn)
                    backoff = self._min_backoff
                    log.warning("outbox.listen_connection_lost", retry_in=backoff)
                finally:
                    await self._release_listener(conn)
            except Exception as exc:
                self._on_failure(exc, backoff)
            await self._wait(self._stopping, backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _listen_on(self, conn: Any) -> None:
        """Return when `conn` is lost."""
        lost = asyncio.Event()

        def on_lost(_conn: object) -> None:
            lost.set()

        conn.add_termination_listener(on_lost)
        await conn.add_listener(OUTBOX_CHANNEL, self._on_notify)
        try:
            log.debug("outbox.listening", channel=OUTBOX_CHANNEL)
            self.wake()  # notifications sent while we were not listening are gone
            await lost.wait()
        finally:
            conn.remove_termination_listener(on_lost)
            if not conn.is_closed():  # asyncpg warns about a connection returned to its pool still listening
                await asyncio.shield(conn.remove_listener(OUTBOX_CHANNEL, self._on_notify))

    async def _connect_listener(self) -> Any:
        if self._listen_dsn is not None:
            return await asyncpg.connect(self._listen_dsn)
        return await self._pool.acquire()

    async def _release_listener(self, conn: Any) -> None:
        if self._listen_dsn is not None:
            await asyncio.shield(conn.close(timeout=5))
        else:
            await asyncio.shield(self._pool.release(conn))  # the pool's reset does UNLISTEN *

    def _on_notify(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._wake.set()

    def _on_failure(self, exc: Exception, retry_in: float) -> None:
        if isinstance(exc, BrokerUnavailableError):
            self._outage_started("broker", exc, retry_in)
        elif isinstance(exc, _DB_DOWN):
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
