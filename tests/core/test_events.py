"""Live-update events (`persistence/events.py`) against a real PostgreSQL: a few events at a time go out at once,
one NOTIFY after another; after a busy batch the next waits `busy_linger` (here: for ever)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from support.database import scratch_pool
from support.waiting import wait_until

from orchestrator.persistence.events import EVENTS_CHANNEL, EventPublisher


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with scratch_pool("events_test") as pool:
        yield pool


async def _true(value: bool) -> bool:
    return value


async def test_small_batches_follow_each_other_and_a_busy_batch_holds_the_next(pool: asyncpg.Pool) -> None:
    received: list[str] = []

    def on_notify(*args: object) -> None:
        received.append(str(args[-1]))

    listening = await pool.acquire()
    await listening.add_listener(EVENTS_CHANNEL, on_notify)
    publisher = EventPublisher(pool, linger=0.0, busy_linger=3600.0, busy_batch=3)
    try:
        publisher.publish({"n": 1})
        await wait_until(lambda: _true(len(received) == 1), 10, "the first event")
        publisher.publish({"n": 2})  # a batch of one before it: sent without the busy linger
        await wait_until(lambda: _true(len(received) == 2), 10, "the second event")

        for n in (3, 4, 5):
            publisher.publish({"n": n})
        await wait_until(lambda: _true(len(received) == 5), 10, "the busy batch")
        publisher.publish({"n": 6})  # after a batch of busy_batch events: held for busy_linger
        await listening.execute("SELECT 1")  # a round trip on the listening connection: its notifications are in
        assert len(received) == 5
        assert publisher._flusher is not None and not publisher._flusher.done()
    finally:
        if publisher._flusher is not None:
            publisher._flusher.cancel()
        await listening.remove_listener(EVENTS_CHANNEL, on_notify)
        await pool.release(listening)
