"""The shared LISTEN connection (`persistence/listener.py`) against a real PostgreSQL: one connection for every
channel of a program, each notification to its own channel's subscribers, and all of them back after the
connection is killed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from support.database import scratch_pool
from support.waiting import wait_until

from orchestrator.persistence.listener import Listener


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with scratch_pool("listener_test") as pool:
        yield pool


async def listening_backends(pool: asyncpg.Pool) -> list[int]:
    """The backends of this database that LISTEN on anything."""
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    return [row["pid"] for row in rows]


class Inbox:
    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.listening = 0

    def on_notify(self, payload: str) -> None:
        self.payloads.append(payload)

    def on_listening(self) -> None:
        self.listening += 1


async def notify(pool: asyncpg.Pool, channel: str, payload: str) -> None:
    await pool.execute("SELECT pg_notify($1, $2)", channel, payload)


async def test_channels_share_one_connection_and_come_back_after_it_is_killed(pool: asyncpg.Pool) -> None:
    listener = Listener(pool, min_backoff=0.05, check_interval=60)  # no liveness query replaces the LISTEN
    a, b = Inbox(), Inbox()
    first = await listener.subscribe("chan_a", a.on_notify, on_listening=a.on_listening)
    await wait_until(lambda: _true(a.listening == 1), 10, "the first LISTEN")
    await listener.subscribe("chan_b", b.on_notify, on_listening=b.on_listening)
    assert b.listening == 1  # the connection was up: LISTENed at once
    [backend] = await listening_backends(pool)

    await notify(pool, "chan_a", "1")
    await notify(pool, "chan_b", "2")
    await wait_until(lambda: _true(a.payloads == ["1"] and b.payloads == ["2"]), 10, "one notification each")

    assert await pool.fetchval("SELECT pg_terminate_backend($1)", backend)
    await wait_until(lambda: _true(a.listening == 2 and b.listening == 2), 10, "both told of the new LISTEN")
    assert len(await listening_backends(pool)) == 1
    await notify(pool, "chan_b", "3")
    await wait_until(lambda: _true(b.payloads == ["2", "3"]), 10, "a notification after the reconnect")

    await listener.unsubscribe(first)
    await notify(pool, "chan_a", "4")
    await notify(pool, "chan_b", "5")
    await wait_until(lambda: _true(b.payloads == ["2", "3", "5"]), 10, "the remaining subscriber's notification")
    assert a.payloads == ["1"]
    await listener.stop()
    assert await listening_backends(pool) == []
    assert pool.get_idle_size() == pool.get_size()  # the lent connection is back


async def test_a_required_connection_that_fails_raises_and_leaves_nothing_listening() -> None:
    listener = Listener("postgresql://postgres@127.0.0.1:1/nothing_here")
    with pytest.raises(OSError):
        await listener.subscribe("chan", lambda _payload: None, require_connection=True)
    await listener.stop()


async def _true(value: bool) -> bool:
    return value
