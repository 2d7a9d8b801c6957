"""The shim against real RabbitMQ, PostgreSQL and a real Celery 5.7 client, with no workers: the test reads the
Dramatiq messages the shim publishes and plays the worker's part in the database where replies need it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractConnection
from celery.exceptions import NotRegistered
from shim_support import (
    CoreClient,
    ShimFactory,
    create_process,
    replay,
    wait_messages,
)
from support.urls import BROKER_URL
from support.waiting import wait_for

from orchestrator.dsl.types import Target
from orchestrator.persistence.store import EVENTS_CHANNEL
from orchestrator.settings import AppSettings


@pytest.fixture
async def ours() -> AsyncIterator[AbstractConnection]:
    """A connection to our (Dramatiq) side's broker."""
    connection = await aio_pika.connect(BROKER_URL)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def theirs(celery_url: str) -> AsyncIterator[AbstractConnection]:
    """A connection to the Celery side's vhost (publishing raw messages, reading the dead-letter queue)."""
    connection = await aio_pika.connect(celery_url)
    try:
        yield connection
    finally:
        await connection.close()


async def dramatiq_bodies(connection: AbstractConnection, queue: str, count: int) -> list[dict[str, Any]]:
    messages = await wait_messages(connection, queue, count)
    for message in messages:
        assert message.content_type is None and not message.headers  # exactly what Dramatiq sends
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    return [json.loads(message.body) for message in messages]


def sent(body: dict[str, Any]) -> tuple[str, str, list[Any]]:
    return body["queue_name"], body["actor_name"], body["args"]


async def test_dispatch_follows_task_name_and_target(
    shim_factory: ShimFactory,
    shim_settings: AppSettings,
    producer: asyncpg.Pool,
    core_client: Callable[..., CoreClient],
    ours: AbstractConnection,
) -> None:
    create_q = shim_settings.TASKS_QUEUE.removesuffix("_tasks") + "_create"  # among shim_support.our_queues
    settings = shim_settings.model_copy(update={"TARGET_QUEUES": {Target.CREATE: create_q}})
    tasks_q, workflows_q = settings.TASKS_QUEUE, settings.WORKFLOWS_QUEUE
    wf = await create_process(producer, "tf_input", {"size": 1})  # target MODIFY
    task = await create_process(producer, "tf_task_fail")  # a task, target SYSTEM
    simple = await create_process(producer, "tf_simple")  # target CREATE: the TARGET_QUEUES override
    client = core_client(testing=False)
    async with shim_factory(settings):
        await client.apply("tasks.new_workflow", (wf, "alice"))
        await client.apply("tasks.new_task", (task, "bob"))
        await client.apply("tasks.new_workflow", (simple, "carol"), queue="new_workflows")
        await client.apply("tasks.resume_workflow", (wf, "dave"))
        # Dispatch follows the name, not the queue the message came from.
        await client.apply("tasks.resume_task", (task, "erin"), queue="new_workflows")

        assert sorted(map(sent, await dramatiq_bodies(ours, workflows_q, 2))) == sorted(
            [
                (workflows_q, "new_workflow", [str(wf), "alice"]),
                (workflows_q, "resume_workflow", [str(wf), "dave"]),
            ]
        )
        assert sorted(map(sent, await dramatiq_bodies(ours, tasks_q, 2))) == sorted(
            [(tasks_q, "new_task", [str(task), "bob"]), (tasks_q, "resume_task", [str(task), "erin"])]
        )
        assert list(map(sent, await dramatiq_bodies(ours, create_q, 1))) == [
            (create_q, "new_workflow", [str(simple), "carol"])
        ]


async def test_historical_argument_shapes_and_captured_messages(
    shim_factory: ShimFactory,
    shim_settings: AppSettings,
    producer: asyncpg.Pool,
    core_client: Callable[..., CoreClient],
    ours: AbstractConnection,
    theirs: AbstractConnection,
) -> None:
    pids = [await create_process(producer, "tf_simple") for _ in range(9)]
    client = core_client(testing=False)
    channel = await theirs.channel()
    async with shim_factory(shim_settings):
        await client.apply("tasks.new_workflow", (pids[0], "tf_simple", "u0"))  # 3.0.0
        await client.apply("tasks.new_workflow", (pids[1], "tf_simple", {"x": 1}, "u1"))  # <= 2.x
        await client.apply("tasks.resume_workflow", (pids[2], [{"name": "n"}], "u2"))  # <= 2.x resume
        await client.apply("tasks.new_workflow", (), {"process_id": pids[3], "user": "u3"})  # keywords only
        await client.apply("tasks.new_workflow", (pids[4],), {"user": "u4"})  # mixed
        # Raw captures of real Celery 5.7 clients: protocol 1, kombu's json with uuid envelopes, keywords.
        await replay(channel, "celery_p1_2q_send_task_new_workflow", pids[5], queue="new_workflows")
        await replay(channel, "celery_p2_2q_default_json_uuid_object", pids[6], queue="new_workflows")
        await replay(channel, "celery_p2_2q_apply_async_kwargs", pids[7], queue="new_workflows")
        await replay(channel, "celery_p2_4q_orchestrator_style_new_workflow", pids[8])

        bodies = await dramatiq_bodies(ours, shim_settings.WORKFLOWS_QUEUE, 9)
    got = {UUID(body["args"][0]): (body["actor_name"], body["args"][1]) for body in bodies}
    assert got == {
        pids[0]: ("new_workflow", "u0"),
        pids[1]: ("new_workflow", "u1"),
        pids[2]: ("resume_workflow", "u2"),
        pids[3]: ("new_workflow", "u3"),
        pids[4]: ("new_workflow", "u4"),
        pids[5]: ("new_workflow", "user"),
        pids[6]: ("new_workflow", "user"),
        pids[7]: ("new_workflow", "user"),
        pids[8]: ("new_workflow", "user"),
    }


async def finish_run(pool: asyncpg.Pool, pid: UUID, status: str, *, notify: bool = True) -> None:
    """What a worker's last write does: the status, and (normally) the event."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE processes SET last_status = $2 WHERE pid = $1", pid, status)
        if notify:
            await conn.execute(
                "SELECT pg_notify($1, $2)", EVENTS_CHANNEL, json.dumps({"pid": str(pid), "status": status})
            )


async def test_reply_is_the_process_id_once_the_run_ends(
    shim_factory: ShimFactory,
    shim_settings: AppSettings,
    producer: asyncpg.Pool,
    core_client: Callable[..., CoreClient],
    ours: AbstractConnection,
) -> None:
    notified, missed, stale = [await create_process(producer, "tf_simple") for _ in range(3)]
    await finish_run(producer, stale, "completed")  # a redelivered message for a run that already ended
    client = core_client(testing=True)
    async with shim_factory(shim_settings, recheck_interval=1.0) as shim:
        first = await client.apply("tasks.new_workflow", (notified, "u"))
        second = await client.apply("tasks.new_workflow", (missed, "u"))
        await dramatiq_bodies(ours, shim_settings.WORKFLOWS_QUEUE, 2)
        assert shim.pending_replies == 2
        await finish_run(producer, notified, "running")
        assert not await client.run(first.ready)  # the run has not ended: no reply yet
        await finish_run(producer, notified, "suspended")
        assert await client.get(first, timeout=15) == str(notified)
        await finish_run(producer, missed, "completed", notify=False)  # the periodic re-check answers
        assert await client.get(second, timeout=15) == str(missed)
        assert await client.get(await client.apply("tasks.new_workflow", (stale, "u")), timeout=15) == str(stale)

        async def answered() -> bool:
            return shim.pending_replies == 0

        assert await wait_for(answered, timeout=10)


async def test_unknown_process_fails_that_message_only(
    shim_factory: ShimFactory,
    shim_settings: AppSettings,
    producer: asyncpg.Pool,
    core_client: Callable[..., CoreClient],
    ours: AbstractConnection,
    theirs: AbstractConnection,
) -> None:
    missing = uuid4()
    client = core_client(testing=True)
    async with shim_factory(shim_settings, dead_letter_queue="t_shim_dead_unknown_" + missing.hex[:8]) as shim:
        with pytest.raises(ValueError, match=f"Process not found: {missing}"):
            await client.get(await client.apply("tasks.new_workflow", (missing, "u")), timeout=15)
        dead = await wait_messages(theirs, shim.consumer.dead_letter_queue, 1)
        assert dead[0].headers["x-rejected-reason"] == f"Process not found: {missing}"

        pid = await create_process(producer, "tf_simple")
        await client.apply("tasks.new_workflow", (pid, "u"))
        assert [body["args"][0] for body in await dramatiq_bodies(ours, shim_settings.WORKFLOWS_QUEUE, 1)] == [str(pid)]


async def test_bad_input_is_dead_lettered_and_consuming_goes_on(
    shim_factory: ShimFactory,
    shim_settings: AppSettings,
    producer: asyncpg.Pool,
    core_client: Callable[..., CoreClient],
    ours: AbstractConnection,
    theirs: AbstractConnection,
) -> None:
    pid = await create_process(producer, "tf_simple")
    client = core_client(testing=True)
    channel = await theirs.channel()
    async with shim_factory(shim_settings) as shim:
        unknown = await client.run(client.app.send_task, "tasks.not_ours", (str(pid), "u"), queue="new_tasks")
        with pytest.raises(NotRegistered):
            await client.get(unknown, timeout=15)
        with pytest.raises(TypeError, match="needs"):
            await client.get(await client.apply("tasks.new_workflow", (pid,)), timeout=15)
        with pytest.raises(ValueError, match="badly formed process id"):
            await client.get(await client.apply("tasks.new_workflow", ("not-a-uuid", "u")), timeout=15)
        await channel.default_exchange.publish(
            aio_pika.Message(b'[["x", "u"], {}', content_type="application/json", headers={"task": "x", "id": "m1"}),
            routing_key="new_tasks",
        )
        await replay(channel, "dramatiq_send_new_workflow", queue="new_workflows")  # a foreign (Dramatiq) message

        dead = await wait_messages(theirs, shim.consumer.dead_letter_queue, 5)
        reasons = sorted(str(message.headers["x-rejected-reason"]) for message in dead)
        assert reasons[0].startswith("badly formed process id")
        assert reasons[1].startswith("body is not valid JSON")
        assert reasons[2].startswith("missing content_type")
        assert reasons[3].startswith("tasks.new_workflow needs (process_id, ..., user)")
        assert reasons[4] == "unregistered task 'tasks.not_ours'"

        await client.apply("tasks.new_workflow", (pid, "u"))
        assert [body["args"] for body in await dramatiq_bodies(ours, shim_settings.WORKFLOWS_QUEUE, 1)] == [
            [str(pid), "u"]
        ]
