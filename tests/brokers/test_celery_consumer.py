"""CeleryConsumer against the real RabbitMQ, driven by a real Celery 5.7 client (rpc:// results).

Every test uses its own uuid-suffixed queues (the RabbitMQ is shared) and deletes them afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from celery.exceptions import NotRegistered, TaskRevokedError
from support.celery_thread import CeleryClient
from support.urls import CELERY_TEST_BROKER_URL, unique
from support.waiting import wait_for

from brokers.celery import CeleryConsumer, CeleryTask, declare_celery_queue

NAMES = frozenset({"tasks.new_task", "tasks.new_workflow", "tasks.resume_task", "tasks.resume_workflow"})
VECTORS = Path("/work/shared/wire-vectors")

Reply = Callable[[CeleryConsumer, CeleryTask], Awaitable[None]]
MakeClient = Callable[..., CeleryClient]


async def echo(consumer: CeleryConsumer, task: CeleryTask) -> None:
    await consumer.reply_success(task, {"args": task.args, "kwargs": task.kwargs})


@dataclass
class Rig:
    consumer: CeleryConsumer
    queue: str
    dead: str
    received: list[CeleryTask] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)

    async def wait_received(self, count: int = 1, timeout: float = 5.0) -> list[CeleryTask]:
        async def enough() -> bool:
            return len(self.received) >= count

        assert await wait_for(enough, timeout), f"handler got {len(self.received)} of {count} tasks"
        return self.received


@pytest.fixture
async def rig(celery_cleanup: Callable[..., None]) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """Factory for a started consumer on a fresh queue and dead-letter queue; `reply` runs inside the handler."""
    consumers: list[CeleryConsumer] = []

    async def make(reply: Reply | None = echo, *, queue: str | None = None, **options: Any) -> Rig:
        name = queue or unique("t_celery")
        dead = unique("t_dead_celery")
        celery_cleanup(name, dead, exchanges=[name])
        holder: list[Rig] = []

        async def handler(task: CeleryTask) -> None:
            holder[0].received.append(task)
            holder[0].received_at.append(time.monotonic())
            if reply is not None:
                await reply(holder[0].consumer, task)

        options.setdefault("shutdown_timeout", 2.0)
        consumer = CeleryConsumer(CELERY_TEST_BROKER_URL, [name], NAMES, handler, dead_letter_queue=dead, **options)
        holder.append(Rig(consumer, name, dead))
        consumers.append(consumer)
        await consumer.start()
        return holder[0]

    yield make
    for consumer in consumers:
        await consumer.stop()


async def drain(channel: AbstractChannel, queue: str) -> list[AbstractIncomingMessage]:
    found: list[AbstractIncomingMessage] = []
    declared = await channel.declare_queue(queue, passive=True)
    while (message := await declared.get(no_ack=True, fail=False)) is not None:
        found.append(message)
    return found


async def wait_dead(
    channel: AbstractChannel, rig: Rig, count: int, timeout: float = 5.0
) -> list[AbstractIncomingMessage]:
    found: list[AbstractIncomingMessage] = []

    async def enough() -> bool:
        found.extend(await drain(channel, rig.dead))
        return len(found) >= count

    assert await wait_for(enough, timeout), f"{len(found)} of {count} dead letters"
    return found


async def message_count(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    assert declared.declaration_result.message_count is not None
    return declared.declaration_result.message_count


async def publish_task(
    channel: AbstractChannel,
    queue: str,
    *,
    name: str = "tasks.new_task",
    reply_to: str | None = None,
    **headers: Any,
) -> str:
    """A protocol 2 message as Celery would publish it, for the cases a Celery client cannot produce."""
    task_id = str(uuid.uuid4())
    message = aio_pika.Message(
        json.dumps(
            [[task_id, "user"], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
        ).encode(),
        content_type="application/json",
        content_encoding="utf-8",
        headers={"lang": "py", "task": name, "id": task_id, "retries": 0, **headers},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=0,
        correlation_id=task_id,
        reply_to=reply_to,
    )
    await channel.default_exchange.publish(message, routing_key=queue)
    return task_id


@pytest.fixture
async def reply_queue(
    celery_channel: AbstractChannel, celery_cleanup: Callable[..., None]
) -> aio_pika.abc.AbstractQueue:
    name = unique("t_reply_celery")
    celery_cleanup(name)
    return await celery_channel.declare_queue(name, auto_delete=False)


async def get_reply(queue: aio_pika.abc.AbstractQueue, timeout: float = 5.0) -> AbstractIncomingMessage:
    async def one() -> AbstractIncomingMessage | None:
        return await queue.get(no_ack=True, fail=False)

    message = await wait_for(one, timeout)
    assert message is not None, "no reply"
    return message


# --- happy paths ------------------------------------------------------------------------------------------------


async def test_protocol_2_send_task_reaches_handler_and_get_returns_reply(
    rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient
) -> None:
    consumer = await rig()
    client = celery_client()
    pid = str(uuid.uuid4())
    result = await client.call("tasks.new_workflow", pid, "user", queue=consumer.queue)
    assert result == {"args": [pid, "user"], "kwargs": {}}
    [task] = consumer.received
    assert (task.protocol, task.name, task.args) == (2, "tasks.new_workflow", [pid, "user"])
    assert task.correlation_id == task.id
    assert task.wants_reply


async def test_protocol_1_send_task_and_kwargs(rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient) -> None:
    consumer = await rig()
    client = celery_client(protocol=1)
    pid = str(uuid.uuid4())
    assert await client.call("tasks.resume_task", pid, "user", queue=consumer.queue) == {
        "args": [pid, "user"],
        "kwargs": {},
    }
    result = await client.call("tasks.resume_workflow", queue=consumer.queue, kwargs={"process_id": pid, "user": "u"})
    assert result == {"args": [], "kwargs": {"process_id": pid, "user": "u"}}
    assert [task.protocol for task in consumer.received] == [1, 1]


async def test_uuid_arguments_in_kombu_envelopes(rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient) -> None:
    consumer = await rig()
    pid = uuid.uuid4()
    result = await celery_client().call("tasks.new_task", pid, "user", queue=consumer.queue)
    assert result == {"args": [str(pid), "user"], "kwargs": {}}


async def test_queue_declared_by_the_client_first(
    rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient, celery_cleanup: Callable[..., None]
) -> None:
    """kombu declares the queue before we do: our declaration must be equivalent (no 406) and we get the task."""
    name = unique("t_celery")
    celery_cleanup(name, exchanges=[name])
    client = celery_client()
    await client.send("tasks.new_task", "early", "user", queue=name, ignore_result=True)
    consumer = await rig(queue=name)
    [task] = await consumer.wait_received()
    assert task.args == ["early", "user"]


async def test_failure_reply_is_raised_by_get(rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient) -> None:
    async def fail(consumer: CeleryConsumer, task: CeleryTask) -> None:
        try:
            raise ValueError(f"cannot resume {task.args[0]}")
        except ValueError as exc:
            await consumer.reply_exception(task, exc)

    consumer = await rig(fail)
    with pytest.raises(ValueError, match="cannot resume p1"):
        await celery_client().call("tasks.resume_task", "p1", "user", queue=consumer.queue)


async def test_reply_failure_with_unknown_exception_class(
    rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient
) -> None:
    async def fail(consumer: CeleryConsumer, task: CeleryTask) -> None:
        await consumer.reply_failure(task, "WorkflowNotFound", ["no such workflow", 42], "orchestrator.nowhere", "tb")

    consumer = await rig(fail)
    with pytest.raises(Exception, match="no such workflow") as info:
        await celery_client().call("tasks.new_workflow", "p", "user", queue=consumer.queue)
    assert type(info.value).__name__ == "WorkflowNotFound"
    assert info.value.args == ("no such workflow", 42)


# --- refusals ---------------------------------------------------------------------------------------------------


async def test_unknown_task_not_registered_and_dead_lettered(
    rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient, celery_channel: AbstractChannel
) -> None:
    consumer = await rig()
    with pytest.raises(NotRegistered, match=r"tasks\.unknown_task"):
        await celery_client().call("tasks.unknown_task", "p", "user", queue=consumer.queue)
    [dead] = await wait_dead(celery_channel, consumer, 1)
    assert dead.headers["x-rejected-reason"] == "unregistered task 'tasks.unknown_task'"
    assert dead.headers["task"] == "tasks.unknown_task"
    assert dead.headers["x-original-routing-key"] == consumer.queue
    assert dead.content_type == "application/json"
    assert json.loads(dead.body)[0] == ["p", "user"]
    assert consumer.received == []
    assert await message_count(celery_channel, consumer.queue) == 0


async def test_garbage_is_dead_lettered_and_consuming_goes_on(
    rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient, celery_channel: AbstractChannel
) -> None:
    consumer = await rig()
    dramatiq = json.loads((VECTORS / "dramatiq_send_new_task.json").read_text())
    bad = [
        aio_pika.Message(b'{"task": broken', content_type="application/json", correlation_id="bad-json"),
        aio_pika.Message(b"\x80\x04K\x01.", content_type="application/x-python-serialize", correlation_id="pickle"),
        aio_pika.Message(base64.b64decode(dramatiq["body_b64"]), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        aio_pika.Message(b"[[], {}, {}]", content_type="application/json", headers={"task": "tasks.new_task"}),
    ]
    for message in bad:
        await celery_channel.default_exchange.publish(message, routing_key=consumer.queue)
    pid = str(uuid.uuid4())
    assert await celery_client().call("tasks.new_task", pid, "user", queue=consumer.queue) == {
        "args": [pid, "user"],
        "kwargs": {},
    }
    dead = await wait_dead(celery_channel, consumer, len(bad))
    by_body = {message.body: message for message in dead}
    assert set(by_body) == {message.body for message in bad}  # the original bytes, untouched
    reasons = [by_body[message.body].headers["x-rejected-reason"] for message in bad]
    assert "not valid JSON" in str(reasons[0])
    assert "pickle" in str(reasons[1])
    assert "Dramatiq" in str(reasons[2])
    assert "headers.id" in str(reasons[3])
    assert by_body[bad[1].body].content_type == "application/x-python-serialize"
    assert by_body[bad[1].body].correlation_id == "pickle"
    assert by_body[bad[2].body].content_type is None
    assert all(message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for message in dead)
    assert [task.args[0] for task in consumer.received] == [pid]
    assert await message_count(celery_channel, consumer.queue) == 0


# --- expiry, eta, ignore_result ---------------------------------------------------------------------------------


async def test_expired_at_eta_is_revoked(rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient) -> None:
    consumer = await rig()
    started = time.monotonic()
    with pytest.raises(TaskRevokedError, match="expired"):
        await celery_client().call("tasks.new_task", "p", "user", queue=consumer.queue, countdown=0.6, expires=0.3)
    assert time.monotonic() - started >= 0.5  # held until the eta, then found expired
    assert consumer.received == []


async def test_expired_on_arrival_is_revoked(
    rig: Callable[..., Awaitable[Rig]], celery_channel: AbstractChannel, reply_queue: aio_pika.abc.AbstractQueue
) -> None:
    consumer = await rig()
    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    task_id = await publish_task(celery_channel, consumer.queue, reply_to=reply_queue.name, expires=past)
    reply = await get_reply(reply_queue)
    body = json.loads(reply.body)
    assert list(body) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    assert body["status"] == "REVOKED"
    assert body["result"] == {
        "exc_type": "TaskRevokedError",
        "exc_message": ["expired"],
        "exc_module": "celery.exceptions",
    }
    assert body["task_id"] == task_id
    assert reply.correlation_id == task_id
    assert reply.content_type == "application/json"
    assert reply.content_encoding == "utf-8"
    assert reply.delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT
    assert reply.priority == 0
    assert consumer.received == []


async def test_ignore_result_sends_no_reply(
    rig: Callable[..., Awaitable[Rig]],
    celery_client: MakeClient,
    celery_channel: AbstractChannel,
    reply_queue: aio_pika.abc.AbstractQueue,
) -> None:
    published: list[bool] = []

    async def reply(consumer: CeleryConsumer, task: CeleryTask) -> None:
        published.append(await consumer.reply_success(task, "ignored"))

    consumer = await rig(reply)
    await celery_client().send("tasks.new_task", "p", "user", queue=consumer.queue, ignore_result=True)
    await publish_task(celery_channel, consumer.queue, reply_to=reply_queue.name, ignore_result=True)
    await consumer.wait_received(2)
    assert published == [False, False]
    assert all(task.ignore_result and task.reply_to for task in consumer.received)
    await asyncio.sleep(0.1)
    assert await reply_queue.get(no_ack=True, fail=False) is None


async def test_countdown_is_honoured_without_blocking_other_tasks(
    rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient, celery_channel: AbstractChannel
) -> None:
    """With prefetch 1, a held eta raises the prefetch, so a task sent after it runs first."""
    consumer = await rig(None, prefetch=1)
    client = celery_client()
    sent = time.monotonic()
    await client.send("tasks.new_task", "later", "user", queue=consumer.queue, countdown=0.8, ignore_result=True)
    await client.send("tasks.new_task", "now", "user", queue=consumer.queue, ignore_result=True)
    await consumer.wait_received(1)
    assert [task.args[0] for task in consumer.received] == ["now"]
    assert consumer.consumer.held == 1
    await consumer.wait_received(2)
    assert [task.args[0] for task in consumer.received] == ["now", "later"]
    assert consumer.received_at[1] - sent >= 0.75
    assert consumer.received[1].eta is not None
    assert consumer.consumer.held == 0
    await asyncio.sleep(0.05)
    assert await message_count(celery_channel, consumer.queue) == 0


async def test_long_eta_is_republished_instead_of_held_forever(
    rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient
) -> None:
    """Holds are capped (RabbitMQ's consumer_timeout would close the channel); the task still runs once at its eta."""
    consumer = await rig(max_hold_seconds=0.3)
    sent = time.monotonic()
    result = await celery_client().call("tasks.new_task", "p", "user", queue=consumer.queue, countdown=1.0)
    assert result == {"args": ["p", "user"], "kwargs": {}}
    assert len(consumer.received) == 1
    assert consumer.received_at[0] - sent >= 0.95


# --- handler failures and shutdown ------------------------------------------------------------------------------


async def test_failing_handler_is_retried_then_succeeds(
    rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient
) -> None:
    async def flaky(consumer: CeleryConsumer, task: CeleryTask) -> None:
        if len(consumer_rig.received) == 1:
            raise ConnectionError("dramatiq broker unavailable")
        await consumer.reply_success(task, "second time lucky")

    consumer_rig = await rig(flaky, retry_delay=0.05)
    assert await celery_client().call("tasks.new_task", "p", "user", queue=consumer_rig.queue) == "second time lucky"
    assert len(consumer_rig.received) == 2
    assert consumer_rig.received[0].id == consumer_rig.received[1].id


async def test_handler_failing_every_time_is_dead_lettered(
    rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient, celery_channel: AbstractChannel
) -> None:
    async def broken(consumer: CeleryConsumer, task: CeleryTask) -> None:
        raise RuntimeError("always broken")

    consumer = await rig(broken, retry_delay=0.05, max_attempts=3)
    with pytest.raises(RuntimeError, match="always broken"):
        await celery_client().call("tasks.new_task", "p", "user", queue=consumer.queue)
    assert len(consumer.received) == 3
    [dead] = await wait_dead(celery_channel, consumer, 1)
    assert dead.headers["x-rejected-reason"] == "handler failed 3 times: RuntimeError: always broken"
    assert await message_count(celery_channel, consumer.queue) == 0


async def test_stop_waits_for_running_handlers(
    rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient, celery_channel: AbstractChannel
) -> None:
    finished: list[str] = []

    async def slow(consumer: CeleryConsumer, task: CeleryTask) -> None:
        await asyncio.sleep(0.3)
        finished.append(task.id)

    consumer = await rig(slow)
    task_id = await celery_client().send("tasks.new_task", "p", "user", queue=consumer.queue, ignore_result=True)
    await consumer.wait_received()
    await consumer.consumer.stop()
    assert finished == [task_id]
    assert await message_count(celery_channel, consumer.queue) == 0  # acked before the connection closed


async def test_stop_requeues_held_and_cut_short_deliveries(
    rig: Callable[..., Awaitable[Rig]], celery_client: MakeClient, celery_channel: AbstractChannel
) -> None:
    async def hang(consumer: CeleryConsumer, task: CeleryTask) -> None:
        await asyncio.sleep(30)

    consumer = await rig(hang, shutdown_timeout=0.2)
    client = celery_client()
    await client.send("tasks.new_task", "held", "user", queue=consumer.queue, countdown=30, ignore_result=True)
    await client.send("tasks.new_task", "hung", "user", queue=consumer.queue, ignore_result=True)
    await consumer.wait_received()
    started = time.monotonic()
    await consumer.consumer.stop()
    assert time.monotonic() - started < 2
    assert await wait_for(lambda: message_count(celery_channel, consumer.queue), 2.0) == 2


async def test_declare_celery_queue_is_idempotent_and_bound_like_kombu(
    celery_channel: AbstractChannel, celery_cleanup: Callable[..., None]
) -> None:
    name = unique("t_celery")
    celery_cleanup(name, exchanges=[name])
    first = await declare_celery_queue(celery_channel, name)
    again = await declare_celery_queue(celery_channel, name)
    assert first.name == again.name == name
    # Celery clients with an explicit exchange publish through the same-named direct exchange.
    exchange = await celery_channel.get_exchange(name)
    await exchange.publish(aio_pika.Message(b"via exchange"), routing_key=name)
    message = await wait_for(lambda: again.get(no_ack=True, fail=False))
    assert message is not None
    assert message.body == b"via exchange"


async def test_start_fails_cleanly_on_a_dramatiq_declared_queue(
    celery_channel: AbstractChannel, celery_cleanup: Callable[..., None]
) -> None:
    """A Dramatiq queue of the same name has dead-letter arguments: RabbitMQ refuses our declaration (406)."""
    name = unique("t_celery")
    dead = unique("t_dead_celery")
    celery_cleanup(name, dead, exchanges=[name])
    arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{name}.XQ"}
    await celery_channel.declare_queue(name, durable=True, arguments=arguments)

    async def handler(task: CeleryTask) -> None:
        raise AssertionError("not reached")

    consumer = CeleryConsumer(CELERY_TEST_BROKER_URL, [name], NAMES, handler, dead_letter_queue=dead)
    with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed, match="x-dead-letter-exchange"):
        await consumer.start()
    await consumer.stop()  # a no-op: start() closed its connection


def test_constructor_refuses_bad_configuration() -> None:
    async def handler(task: CeleryTask) -> None:
        return None

    with pytest.raises(ValueError, match="at least one queue"):
        CeleryConsumer(CELERY_TEST_BROKER_URL, [], NAMES, handler)
    with pytest.raises(ValueError, match="dead-letter queue"):
        CeleryConsumer(CELERY_TEST_BROKER_URL, ["q", "dead"], NAMES, handler, dead_letter_queue="dead")
    with pytest.raises(ValueError, match="prefetch"):
        CeleryConsumer(CELERY_TEST_BROKER_URL, ["q"], NAMES, handler, prefetch=0)


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to force-close a connection")
async def test_held_eta_survives_a_reconnect(
    celery_channel: AbstractChannel, celery_cleanup: Callable[..., None]
) -> None:
    """The broker requeues a held delivery when the connection drops; it runs once, after the eta, not twice."""
    name, dead, connection_name = unique("t_celery"), unique("t_dead_celery"), unique("t-celery-conn")
    celery_cleanup(name, dead, exchanges=[name])
    received: list[CeleryTask] = []

    async def handler(task: CeleryTask) -> None:
        received.append(task)

    url = CELERY_TEST_BROKER_URL + "?reconnect_interval=0.1"
    consumer = CeleryConsumer(url, [name], NAMES, handler, dead_letter_queue=dead, connection_name=connection_name)
    await consumer.start()
    try:
        eta = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        await publish_task(celery_channel, name, eta=eta)
        assert await wait_for(lambda: _async(consumer.held == 1))

        listing = await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
            capture_output=True,
            text=True,
            check=True,
        )
        pids = [line.split("\t")[0] for line in listing.stdout.splitlines() if connection_name in line]
        assert len(pids) == 1
        await asyncio.to_thread(
            subprocess.run, ["rabbitmqctl", "-q", "close_connection", pids[0], "test: forced reconnect"], check=True
        )

        assert await wait_for(lambda: _async(len(received) == 1), timeout=5.0)
        await asyncio.sleep(0.3)
        assert len(received) == 1
        assert consumer.held == 0
        assert await message_count(celery_channel, name) == 0
    finally:
        await consumer.stop()


async def _async(value: bool) -> bool:
    return value
