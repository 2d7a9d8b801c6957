"""Live-update events, published with PostgreSQL NOTIFY after the change they announce has committed.

Why not NOTIFY inside the data transaction: PostgreSQL serialises every transaction that notifies on one global
lock held until its commit is flushed, so each start, claim and step would queue behind the previous one's fsync.
Here the events a program produces are collected and sent together, in one statement, off the data path. An event
is a hint to refresh (websocket cache invalidation, SSE, Celery replies), never the record: it is sent only after
the commit, and a consumer that must not miss one re-reads the database.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any

import asyncpg
import structlog

from orchestrator.dsl import jsonutil

logger = structlog.get_logger(__name__)

EVENTS_CHANNEL = "orchestrator_events"
"""NOTIFY channel of process changes: feeds the websocket/SSE streams and Celery replies in every instance."""

OUTBOX_CHANNEL = "orchestrator_outbox"
"""NOTIFY channel of new outbox rows: wakes the outbox relays of every instance (`outbox.py`)."""

# A NOTIFY gives its transaction an id, hence a commit record: committed asynchronously (not waiting for its WAL
# flush), as a hint is worth no flush, and the notifying commits of all programs queue on one lock meanwhile.
_NOTIFY = """
SELECT count(pg_notify(channel, payload)) FROM unnest($1::text[], $2::text[]) AS t(channel, payload)
 WHERE set_config('synchronous_commit', 'off', true) = 'off'
"""


class EventPublisher:
    def __init__(
        self, pool: asyncpg.Pool, *, linger: float = 0.01, busy_linger: float = 0.05, busy_batch: int = 8
    ) -> None:
        """`linger`: how long the first event of a batch waits for others. Each NOTIFY is a transaction, and wakes
        every listening connection of the database; 10 ms of delay on a cache-invalidation hint saves one per step.

        What was queued while a batch was being sent goes right after it, unless that batch had at least
        `busy_batch` events: under load, the next then waits `busy_linger` (a NOTIFY every 50 ms or so per program
        rather than one per round trip). A lone process's events come a few at a time and are not held longer
        (`wait_for_process`, the Celery shim's replies)."""
        self.pool = pool
        self.linger = linger
        self.busy_linger = busy_linger
        self.busy_batch = busy_batch
        self._pending: list[tuple[str, str]] = []
        self._flusher: asyncio.Task[None] | None = None

    def publish(self, event: dict[str, Any], channel: str = EVENTS_CHANNEL) -> None:
        """Queue an event; it is sent with the others queued meanwhile, without waiting for it here."""
        self._pending.append((channel, jsonutil.dumps_str(event)))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        wait = self.linger
        while True:
            await asyncio.sleep(wait)
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            wait = self.busy_linger if len(batch) >= self.busy_batch else 0.0
            try:
                await self.pool.fetchval(_NOTIFY, [c for c, _ in batch], [p for _, p in batch])
            except Exception as exc:  # an event is a hint: losing some during a database outage is acceptable
                logger.warning("live-update events not sent", count=len(batch), error=str(exc))

    async def close(self) -> None:
        """Send what is queued (on shutdown)."""
        if self._flusher is not None:
            with suppress(Exception):
                await self._flusher
