"""The outbox relay against a real PostgreSQL (a throwaway database) and the real RabbitMQ.

Broker outages are simulated with a TCP proxy in front of RabbitMQ (never by stopping RabbitMQ: others use it).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aio_pika
import asyncpg
import dramatiq
import pytest
import structlog
from support.amqp import dramatiq_queues
from support.database import scratch_database
from support.tcpproxy import TcpProxy
from support.urls import BROKER_URL, unique
from support.waiting import wait_until

from brokers.dramatiq import declare_dramatiq_queues, queue_declarations
from brokers.rabbitmq import Publisher
from orchestrator.persistence import migrations
from orchestrator.persistence.events import OUTBOX_CHANNEL
from orchestrator.persistence.store import Store
from orchestrator.runtime.outbox_relay import OutboxRelay


@pytest.fixture(scope="module")
async def database() -> AsyncIterator[str]:
    async with scratch_database("outbox_test") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await migrations.upgrade(conn)
        finally:
            await conn.close()
        yield dsn


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database, min_size=1, max_size=8)
    try:
        await pool.execute("DELETE FROM outbox")
        yield pool
    finally:
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except TimeoutError:
            pool.terminate()
            raise


@pytest.fixture
async def queue_name(amqp: aio_pika.abc.AbstractChannel) -> AsyncIterator[str]:
    name = unique("outbox")
    await declare_dramatiq_queues(amqp, name)
    yield name
    for queue in dramatiq_queues(name):
        await amqp.queue_delete(queue)


async def insert_rows(
    pool: asyncpg.Pool, queue: str, count: int, *, notify: bool = True, actor: str = "new_workflow"
) -> list[str]:
    """What the engine does: outbox rows and a NOTIFY in one transaction."""
    pids = [str(uuid.uuid4()) for _ in range(count)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO outbox (queue, actor, pid, run_by) SELECT $1, $2, p, 'SYSTEM' FROM unnest($3::uuid[]) p",
            queue,
            actor,
            pids,
        )
        if notify:
            await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return pids


async def outbox_count(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM outbox")
    return count


async def receive(
    amqp: aio_pika.abc.AbstractChannel, queue_name: str, expected: int, timeout: float = 15.0
) -> list[dict[str, Any]]:
    """Get `expected` messages, then check that no more (duplicates) follow."""
    queue = await amqp.get_queue(queue_name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    got: list[dict[str, Any]] = []
    while len(got) < expected and loop.time() < deadline:
        message = await queue.get(no_ack=True, fail=False)
        if message is None:
            await asyncio.sleep(0.02)
            continue
        dramatiq.Message.decode(message.body)  # a real Dramatiq worker can decode it
        got.append(json.loads(message.body))
    await asyncio.sleep(0.3)
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        got.append(json.loads(message.body))
    return got


async def listener_pids(pool: asyncpg.Pool) -> list[int]:
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = $1",
        f'LISTEN "{OUTBOX_CHANNEL}"',
    )
    return [row["pid"] for row in rows]


class Running:
    """Runs relays in tasks; stops them and closes their publishers on exit."""

    def __init__(self, *relays: OutboxRelay, publishers: Sequence[Publisher] = ()) -> None:
        self.relays = relays
        self.publishers = publishers
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Running:
        self.tasks = [asyncio.create_task(relay.run()) for relay in self.relays]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for relay in self.relays:
            relay.stop()
        await asyncio.wait_for(asyncio.gather(*self.tasks), timeout=15)
        for publisher in self.publishers:
            await publisher.close()


def relay_for(pool: asyncpg.Pool, publisher: Publisher, **kwargs: Any) -> OutboxRelay:
    options: dict[str, Any] = {"poll_interval": 60.0, "min_backoff": 0.05, "max_backoff": 0.3} | kwargs
    return OutboxRelay(Store(pool), publisher, **options)


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# --- the happy path ---------------------------------------------------------------------------------------------


async def test_notified_rows_are_published_and_deleted(
    pool: asyncpg.Pool, amqp: aio_pika.abc.AbstractChannel, queue_name: str
) -> None:
    publisher = Publisher(BROKER_URL, declarations=queue_declarations)
    relay = relay_for(pool, publisher)  # polls only every 60 s: the NOTIFY must do it
    async with Running(relay, publishers=[publisher]):
        await wait_until(lambda: _has_listener(pool))
        pids = await insert_rows(pool, queue_name, 3)
        got = await receive(amqp, queue_name, 3, timeout=5)
        assert await outbox_count(pool) == 0
    assert [message["args"] for message in got] == [[pid, "SYSTEM"] for pid in pids]
    assert {(message["queue_name"], message["actor_name"]) for message in got} == {(queue_name, "new_workflow")}
    assert all(message["kwargs"] == {} and message["options"] == {} for message in got)
    assert relay.published == 3


async def _has_listener(pool: asyncpg.Pool) -> bool:
    return bool(await listener_pids(pool))


async def test_wake_drains_without_notify(
    pool: asyncpg.Pool, amqp: aio_pika.abc.AbstractChannel, queue_name: str
) -> None:
    publisher = Publisher(BROKER_URL, declarations=queue_declarations)
    relay = relay_for(pool, publisher)
    async with Running(relay, publishers=[publisher]):
        await wait_until(lambda: _has_listener(pool))
        pids = await insert_rows(pool, queue_name, 2, notify=False)
        relay.wake()
        got = await receive(amqp, queue_name, 2, timeout=5)
    assert sorted(message["args"][0] for message in got) == sorted(pids)


async def test_large_backlog_is_drained_in_batches(
    pool: asyncpg.Pool, amqp: aio_pika.abc.AbstractChannel, queue_name: str
) -> None:
    pids = await insert_rows(pool, queue_name, 1234, notify=False)  # before the relay starts
    publisher = Publisher(BROKER_URL, declarations=queue_declarations)
    relay = relay_for(pool, publisher, batch_size=100)
    async with Running(relay, publishers=[publisher]):
        got = await receive(amqp, queue_name, len(pids))
    assert [message["args"][0] for message in got] == pids  # in id order
    assert await outbox_count(pool) == 0


async def test_invalid_queue_row_is_dropped_not_blocking(
    pool: asyncpg.Pool, amqp: aio_pika.abc.AbstractChannel, queue_name: str
) -> None:
    await insert_rows(pool, "not a queue", 1, notify=False)
    pids = await insert_rows(pool, queue_name, 2, notify=False)
    publisher = Publisher(BROKER_URL, declarations=queue_declarations)
    relay = relay_for(pool, publisher)
    with structlog.testing.capture_logs() as logs:
        async with Running(relay, publishers=[publisher]):
            got = await receive(amqp, queue_name, 2)
            await wait_until(lambda: _outbox_empty(pool))
    assert [message["args"][0] for message in got] == pids
    assert [entry["queue"] for entry in events(logs, "outbox.row_dropped")] == ["not a queue"]


async def _outbox_empty(pool: asyncpg.Pool) -> bool:
    return await outbox_count(pool) == 0


# --- adversity --------------------------------------------------------------------------------------------------


async def test_unreachable_broker_keeps_rows_and_warns_once(
    pool: asyncpg.Pool, amqp: aio_pika.abc.AbstractChannel, queue_name: str
) -> None:
    pids = await insert_rows(pool, queue_name, 5)
    down = Publisher("amqp://guest:guest@127.0.0.1:1/", declarations=queue_declarations, connect_timeout=1.0)
    relay = relay_for(pool, down, poll_interval=0.05)
    with structlog.testing.capture_logs() as logs:
        async with Running(relay, publishers=[down]):
            await asyncio.sleep(1.5)  # several attempts, backing off up to 0.3 s
            assert await outbox_count(pool) == 5
    assert len(events(logs, "outbox.unavailable")) == 1
    assert len(events(logs, "outbox.still_unavailable")) >= 3
    assert relay.published == 0

    up = Publisher(BROKER_URL, declarations=queue_declarations)
    async with Running(relay_for(pool, up), publishers=[up]):
        got = await receive(amqp, queue_name, 5)
    assert [message["args"][0] for message in got] == pids
    assert await outbox_count(pool) == 0


async def test_broker_outage_then_recovery(
    pool: asyncpg.Pool, amqp: aio_pika.abc.AbstractChannel, queue_name: str
) -> None:
    proxy = TcpProxy()
    await proxy.start()
    publisher = Publisher(proxy.url, declarations=queue_declarations, connect_timeout=1.0, publish_timeout=2.0)
    relay = relay_for(pool, publisher, poll_interval=0.1)
    try:
        with structlog.testing.capture_logs() as logs:
            async with Running(relay, publishers=[publisher]):
                before = await insert_rows(pool, queue_name, 3)
                assert [m["args"][0] for m in await receive(amqp, queue_name, 3)] == before

                await proxy.cut()  # outage: established connections die, new ones are refused
                during = await insert_rows(pool, queue_name, 4)
                await asyncio.sleep(1.5)
                assert await outbox_count(pool) == 4  # kept, not lost

                await proxy.start()  # recovery, same port
                assert [m["args"][0] for m in await receive(amqp, queue_name, 4)] == during
                await wait_until(lambda: _outbox_empty(pool))
    finally:
        await proxy.close()
    assert len(events(logs, "outbox.unavailable")) == 1
    assert len(events(logs, "outbox.available")) == 1
    assert relay.published == 7


class SlowPublisher:
    """Holds each batch's row locks a little longer, so two relays surely interleave."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner

    async def publish_batch(self, messages: Sequence[tuple[str, bytes]]) -> None:
        await asyncio.sleep(0.02)
        await self.inner.publish_batch(messages)


async def test_two_relays_publish_each_row_exactly_once(
    pool: asyncpg.Pool, amqp: aio_pika.abc.AbstractChannel, queue_name: str
) -> None:
    pids = await insert_rows(pool, queue_name, 1500, notify=False)
    publishers = [Publisher(BROKER_URL, declarations=queue_declarations) for _ in range(2)]
    relays = [
        OutboxRelay(Store(pool), SlowPublisher(publisher), batch_size=50, poll_interval=0.05)
        for publisher in publishers
    ]
    async with Running(*relays, publishers=publishers):
        got = await receive(amqp, queue_name, len(pids))
    received = [message["args"][0] for message in got]
    assert len(received) == len(pids)
    assert set(received) == set(pids)
    assert relays[0].published + relays[1].published == len(pids)
    assert relays[0].published > 0
    assert relays[1].published > 0
    assert await outbox_count(pool) == 0


async def test_listen_is_restored_after_the_connection_is_killed(
    pool: asyncpg.Pool, amqp: aio_pika.abc.AbstractChannel, queue_name: str
) -> None:
    publisher = Publisher(BROKER_URL, declarations=queue_declarations)
    relay = relay_for(pool, publisher)  # no polling to speak of: only a working LISTEN delivers in time
    async with Running(relay, publishers=[publisher]):
        await wait_until(lambda: _has_listener(pool))
        [old] = await listener_pids(pool)
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", old)

        async def relistened() -> bool:
            return (await listener_pids(pool)) not in ([], [old])

        await wait_until(relistened)
        pids = await insert_rows(pool, queue_name, 2)
        got = await receive(amqp, queue_name, 2, timeout=5)
    assert [message["args"][0] for message in got] == pids


async def test_stop_returns_promptly(pool: asyncpg.Pool) -> None:
    publisher = Publisher(BROKER_URL, declarations=queue_declarations)
    relay = relay_for(pool, publisher)
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0.2)
    relay.stop()
    await asyncio.wait_for(task, timeout=2)
    await publisher.close()


class CrashAfterConfirm:
    """Publishes (confirmed), then fails before the DELETE commits: what a crash at that point looks like."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.crashes = 1

    async def publish_batch(self, messages: Sequence[tuple[str, bytes]]) -> None:
        await self.inner.publish_batch(messages)
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("simulated crash between confirm and DELETE")


async def test_failure_after_confirm_republishes_at_least_once(
    pool: asyncpg.Pool, amqp: aio_pika.abc.AbstractChannel, queue_name: str
) -> None:
    """The documented duplicate: harmless because workers claim processes by status."""
    [pid] = await insert_rows(pool, queue_name, 1, notify=False)
    publisher = Publisher(BROKER_URL, declarations=queue_declarations)
    relay = relay_for(pool, CrashAfterConfirm(publisher), poll_interval=0.05)
    async with Running(relay, publishers=[publisher]):
        got = await receive(amqp, queue_name, 2)
        await wait_until(lambda: _outbox_empty(pool))
    assert [message["args"][0] for message in got] == [pid, pid]
    assert got[0]["message_id"] != got[1]["message_id"]
