"""The Dramatiq transport against the real RabbitMQ and a real Dramatiq 2.2.1 worker.

Other engineers use the same RabbitMQ: every test works on its own uuid-suffixed queues and deletes them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.errors import ConnectionClosed
from support.amqp import delete_queues, dramatiq_queues
from support.tcpproxy import TcpProxy
from support.urls import BROKER_URL, unique

from brokers.dramatiq import (
    DEAD_MESSAGE_TTL_MS,
    declare_dramatiq_queues,
    encode_message,
    queue_declarations,
)
from brokers.rabbitmq import BrokerRejectedError, BrokerUnavailableError, Publisher, QueueDeclaration

VECTORS = Path(__file__).resolve().parents[1] / "wire_vectors"  # vendored from the captures
MESSAGE_VECTORS = sorted(VECTORS.glob("dramatiq_*.json"))


@pytest.fixture
async def queue_name() -> AsyncIterator[str]:
    name = unique("dqtest")
    yield name
    await delete_queues(BROKER_URL, dramatiq_queues(name))


@pytest.fixture
def dramatiq_broker() -> Iterator[RabbitmqBroker]:
    broker = RabbitmqBroker(url=BROKER_URL)
    try:
        yield broker
    finally:
        broker.close()


# --- wire format ------------------------------------------------------------------------------------------------


def test_vectors_present() -> None:
    assert len(MESSAGE_VECTORS) >= 8


@pytest.mark.parametrize("path", MESSAGE_VECTORS, ids=lambda p: p.stem)
def test_encode_matches_captured_bytes(path: Path) -> None:
    vector = json.loads(path.read_text())
    fields = vector["body_json"]
    encoded = encode_message(
        fields["queue_name"],
        fields["actor_name"],
        fields["args"],
        fields["kwargs"],
        fields["options"],
        message_id=fields["message_id"],
        message_timestamp=fields["message_timestamp"],
    )
    assert encoded == base64.b64decode(vector["body_b64"])


@pytest.mark.parametrize("path", MESSAGE_VECTORS, ids=lambda p: p.stem)
def test_captured_messages_carry_only_delivery_mode(path: Path) -> None:
    """What the Publisher mimics: Dramatiq sets delivery_mode (and priority only with broker_priority)."""
    vector = json.loads(path.read_text())
    present = set(vector["properties_present_on_wire"]) - {"headers"}  # headers: x-death, added by dead-lettering
    assert present <= {"delivery_mode", "priority"}
    assert vector["properties"]["content_type"] is None


def test_encode_defaults_are_uuid4_and_epoch_ms() -> None:
    before = int(time.time() * 1000)
    data = json.loads(encode_message("workflows", "new_workflow", ["a", "user"]))
    after = int(time.time() * 1000)
    assert list(data) == [
        "queue_name",
        "actor_name",
        "args",
        "kwargs",
        "options",
        "message_id",
        "message_timestamp",
    ]
    assert uuid.UUID(data["message_id"]).version == 4
    assert before <= data["message_timestamp"] <= after
    assert data["kwargs"] == {}
    assert data["options"] == {}


def test_encode_equals_dramatiq_message_encode() -> None:
    """Non-ASCII and nested values: Dramatiq's stdlib json escapes to ASCII; we must too."""
    args = ["22220000-0000-4000-8000-000000000001", "Ünïcødé ✓ 𝄞", 1.5, None, True, {"k": [1, 2]}]
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name="workflows",
        actor_name="new_workflow",
        args=tuple(args),
        kwargs={"user": "é"},
        options={"max_retries": 3},
    )
    ours = encode_message(
        "workflows",
        "new_workflow",
        args,
        {"user": "é"},
        {"max_retries": 3},
        message_id=message.message_id,
        message_timestamp=message.message_timestamp,
    )
    assert ours == message.encode()
    assert dramatiq.Message.decode(ours) == message


@pytest.mark.parametrize("name", ["", "1abc", "has space", "wf/1", "ünï"])
def test_invalid_queue_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        encode_message(name, "actor", [])
    with pytest.raises(ValueError):
        queue_declarations(name)


def test_queue_declarations_match_dramatiq() -> None:
    canonical, delay, dead = queue_declarations("workflows.DQ")
    arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "workflows.XQ"}
    assert canonical == QueueDeclaration("workflows", durable=True, arguments=arguments)
    assert delay == QueueDeclaration("workflows.DQ", durable=True, arguments=arguments)
    assert dead == QueueDeclaration("workflows.XQ", durable=True, arguments={"x-message-ttl": 604_800_000})
    assert DEAD_MESSAGE_TTL_MS == 604_800_000
    with_priority = queue_declarations("workflows", max_priority=10, dead_message_ttl_ms=1000)
    assert with_priority[0].arguments["x-max-priority"] == 10
    assert with_priority[1].arguments["x-max-priority"] == 10
    assert with_priority[2].arguments == {"x-message-ttl": 1000}
    with pytest.raises(ValueError):
        queue_declarations("workflows", max_priority=256)


# --- declarations against RabbitMQ and a real RabbitmqBroker ----------------------------------------------------


@pytest.mark.parametrize("max_priority", [None, 10])
async def test_redeclare_dramatiq_first_then_ours(
    amqp: aio_pika.abc.AbstractChannel, queue_name: str, max_priority: int | None
) -> None:
    broker = RabbitmqBroker(url=BROKER_URL, max_priority=max_priority)
    try:
        await asyncio.to_thread(broker.declare_queue, queue_name, ensure=True)
    finally:
        broker.close()
    await declare_dramatiq_queues(amqp, queue_name, max_priority=max_priority)  # no 406
    for name in (queue_name, queue_name + ".DQ", queue_name + ".XQ"):
        await amqp.get_queue(name, ensure=True)  # passive: they exist


@pytest.mark.parametrize("max_priority", [None, 10])
async def test_redeclare_ours_first_then_dramatiq(
    amqp: aio_pika.abc.AbstractChannel, queue_name: str, max_priority: int | None
) -> None:
    await declare_dramatiq_queues(amqp, queue_name, max_priority=max_priority)
    broker = RabbitmqBroker(url=BROKER_URL, max_priority=max_priority)
    try:
        await asyncio.to_thread(broker.declare_queue, queue_name, ensure=True)  # raises ConnectionClosed on 406
    finally:
        broker.close()


async def test_mismatched_declaration_is_detected(queue_name: str) -> None:
    """Control for the two tests above: a real mismatch does give a 406, on either side."""
    connection = await aio_pika.connect(BROKER_URL)
    try:
        await declare_dramatiq_queues(await connection.channel(), queue_name, dead_message_ttl_ms=1000)
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await declare_dramatiq_queues(await connection.channel(), queue_name)  # new channel, same connection
    finally:
        await connection.close()
    broker = RabbitmqBroker(url=BROKER_URL)
    try:
        with pytest.raises(ConnectionClosed):
            await asyncio.to_thread(broker.declare_queue, queue_name, ensure=True)
    finally:
        broker.close()


async def test_declarations_are_cached_per_connection(queue_name: str) -> None:
    connection = await aio_pika.connect(BROKER_URL)
    try:
        channel = await connection.channel()
        await declare_dramatiq_queues(channel, queue_name)
        await channel.queue_delete(queue_name + ".XQ")
        await declare_dramatiq_queues(channel, queue_name)  # cached: not declared again
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await (await connection.channel()).get_queue(queue_name + ".XQ", ensure=True)
    finally:
        await connection.close()
    connection = await aio_pika.connect(BROKER_URL)
    try:
        await declare_dramatiq_queues(await connection.channel(), queue_name)  # new connection: declared again
        await (await connection.channel()).get_queue(queue_name + ".XQ", ensure=True)
    finally:
        await connection.close()


# --- Publisher --------------------------------------------------------------------------------------------------


async def test_published_message_is_consumed_by_a_real_dramatiq_worker(
    queue_name: str, dramatiq_broker: RabbitmqBroker
) -> None:
    received: queue.Queue[tuple[Any, ...]] = queue.Queue()
    actor_name = "record_" + uuid.uuid4().hex[:8]

    def record(process_id: str, run_by: str) -> None:
        received.put((process_id, run_by, dramatiq.middleware.CurrentMessage.get_current_message()))

    dramatiq_broker.add_middleware(dramatiq.middleware.CurrentMessage())
    dramatiq.actor(broker=dramatiq_broker, actor_name=actor_name, queue_name=queue_name)(record)
    pids = [str(uuid.uuid4()) for _ in range(3)]
    bodies = [encode_message(queue_name, actor_name, [pid, "SYSTEM"]) for pid in pids]

    async with Publisher(BROKER_URL, declarations=queue_declarations) as publisher:
        await publisher.publish_batch([(queue_name, body) for body in bodies])

    worker = dramatiq.Worker(dramatiq_broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        got = [await asyncio.to_thread(received.get, timeout=20) for _ in pids]
    finally:
        await asyncio.to_thread(worker.stop, 10_000)
    assert [(pid, run_by) for pid, run_by, _ in got] == [(pid, "SYSTEM") for pid in pids]
    assert [message.encode() for _, _, message in got] == bodies


async def test_publisher_wire_properties(amqp: aio_pika.abc.AbstractChannel, queue_name: str) -> None:
    body = encode_message(queue_name, "actor", ["x", "SYSTEM"])
    async with Publisher(BROKER_URL, declarations=queue_declarations) as publisher:
        await publisher.publish_batch([(queue_name, body)])
    underlay = await amqp.get_underlay_channel()
    delivered = await underlay.basic_get(queue_name, no_ack=True)
    assert delivered.body == body
    assert delivered.routing_key == queue_name
    assert delivered.exchange == ""
    properties = delivered.header.properties
    assert properties.delivery_mode == 2
    assert properties.content_type is None
    assert properties.content_encoding is None
    assert properties.headers is None
    assert properties.priority is None
    assert properties.message_id  # aiormq's own, needed to match returned messages


async def test_publish_batch_confirms_many(amqp: aio_pika.abc.AbstractChannel, queue_name: str) -> None:
    messages = [(queue_name, encode_message(queue_name, "actor", [str(i), "SYSTEM"])) for i in range(1000)]
    async with Publisher(BROKER_URL, declarations=queue_declarations) as publisher:
        await publisher.publish_batch(messages)
        await publisher.publish_batch([])
    declared = await amqp.declare_queue(queue_name, passive=True)
    assert declared.declaration_result.message_count == 1000


async def test_unroutable_is_rejected() -> None:
    async with Publisher(BROKER_URL) as publisher:  # no declarations: the queue does not exist
        with pytest.raises(BrokerRejectedError, match="unroutable"):
            await publisher.publish_batch([(unique("missing"), b"{}")])


async def test_queue_deleted_behind_our_back_is_declared_again(
    amqp: aio_pika.abc.AbstractChannel, queue_name: str
) -> None:
    async with Publisher(BROKER_URL, declarations=queue_declarations) as publisher:
        await publisher.publish_batch([(queue_name, b"1")])
        await amqp.queue_delete(queue_name)  # the declaration cache is now stale
        await publisher.publish_batch([(queue_name, b"2")])  # returned, declared again, published again
    declared = await amqp.declare_queue(queue_name, passive=True)
    assert declared.declaration_result.message_count == 1


async def test_broker_down_fails_fast() -> None:
    publisher = Publisher("amqp://guest:guest@127.0.0.1:1/", connect_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError):
        await publisher.publish_batch([("workflows", b"{}")])
    assert time.monotonic() - started < 2.0
    await publisher.close()


async def test_silent_broker_times_out() -> None:
    """A peer that accepts TCP and never answers (a hung broker, a black-holing proxy) must not hang us."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    publisher = Publisher(f"amqp://guest:guest@127.0.0.1:{port}/", connect_timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError):
            await publisher.publish_batch([("workflows", b"{}")])
        assert time.monotonic() - started < 2.0
    finally:
        await publisher.close()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_publisher_reconnects_after_an_outage(amqp: aio_pika.abc.AbstractChannel, queue_name: str) -> None:
    proxy = TcpProxy()
    await proxy.start()
    publisher = Publisher(proxy.url, declarations=queue_declarations, connect_timeout=1.0, publish_timeout=2.0)
    try:
        await publisher.publish_batch([(queue_name, b"before")])
        await proxy.close()
        started = time.monotonic()
        for _ in range(3):  # every call during the outage fails quickly, none hangs
            with pytest.raises(BrokerUnavailableError):
                await publisher.publish_batch([(queue_name, b"during")])
        assert time.monotonic() - started < 6.0
        await proxy.start()  # same port
        await publisher.publish_batch([(queue_name, b"after")])
    finally:
        await publisher.close()
        await proxy.close()
    queue = await amqp.get_queue(queue_name)
    bodies = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        bodies.append(message.body)
    assert bodies == [b"before", b"after"]
