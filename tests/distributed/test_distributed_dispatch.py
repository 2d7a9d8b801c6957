"""Distributed mode in-process: the outbox dispatch of the API, and a worker runtime's deliveries (claim, refuse,
hand back, drain), with RabbitMQ unreachable so that every dispatch stays visible in the outbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from dq_support import Queues, statuses
from support.urls import BROKER_URL
from support.waiting import wait_until

from orchestrator import services
from orchestrator.persistence.events import EVENTS_CHANNEL, OUTBOX_CHANNEL
from orchestrator.persistence.records import NewProcess
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.services import queue_status
from orchestrator.worker.runtime import WorkerRuntime

Api = Callable[..., Awaitable[Orchestrator]]
DEAD_BROKER = "amqp://guest:guest@127.0.0.1:1/"


async def outbox(orch: Orchestrator) -> list[tuple[str, str, UUID, str]]:
    rows = await orch.store.pool.fetch("SELECT queue, actor, pid, run_by FROM outbox ORDER BY id")
    return [(r["queue"], r["actor"], r["pid"], r["run_by"]) for r in rows]


async def test_start_writes_one_outbox_row_per_dispatch(api: Api, queues: Queues) -> None:
    reconcile = queues.new("r")
    orch = await api(BROKER_URL=DEAD_BROKER, TARGET_QUEUES={"MODIFY": reconcile})
    flow = await services.start_process("tf_simple", user="ada", orchestrator=orch)
    task = await services.start_process("tf_slow_task", user="bob", orchestrator=orch)
    modify = await services.start_process("tf_input", [{"size": 2}], orchestrator=orch)
    assert await outbox(orch) == [
        (queues.workflows, "new_workflow", flow, "ada"),
        (queues.tasks, "new_task", task, "bob"),
        (reconcile, "new_workflow", modify, "SYSTEM"),
    ]
    # The API runs no steps, and is no worker.
    assert (await statuses(orch, [flow, task, modify]))["created"] == 3
    status = await services.worker_status(orchestrator=orch)
    assert (status["number_of_workers_online"], status["number_of_queued_jobs"]) == (0, 3)
    per_queue = await queue_status(orch)
    assert per_queue[queues.workflows]["queued"] == 1
    assert per_queue[queues.tasks]["queued"] == 1
    assert per_queue[reconcile]["queued"] == 1


async def test_dispatch_commits_with_the_status_change_or_not_at_all(api: Api) -> None:
    orch = await api(BROKER_URL=DEAD_BROKER)
    pid = uuid4()

    async def create_then_fail() -> None:
        process = NewProcess(pid, orch.workflow_ids["tf_simple"], "tf_simple", "CREATE", False, "ada", {})
        async with orch.store.transaction() as tx:  # as services.start_process does
            await orch.executor.start(tx, process.ref)
            assert await orch.store.create_process(tx, process) is not None
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError, match="rolled back"):
        await create_then_fail()
    assert await outbox(orch) == []
    assert await orch.store.load(pid) is None


async def test_a_new_process_is_inserted_with_its_dispatch_or_not_at_all(api: Api) -> None:
    """`reserve`: the insert itself writes the outbox row; a paused engine writes neither."""
    orch = await api(BROKER_URL=DEAD_BROKER)
    process = NewProcess(uuid4(), orch.workflow_ids["tf_simple"], "tf_simple", "CREATE", False, "ada", {})
    async with orch.store.transaction() as tx:
        await orch.store.set_engine_lock(tx, True)
    async with orch.store.transaction() as tx:
        assert await orch.store.create_process(tx, process, orch.executor.reserve(tx, process.ref)) is None
    assert await outbox(orch) == []
    async with orch.store.transaction() as tx:
        await orch.store.set_engine_lock(tx, False)
    async with orch.store.transaction() as tx:
        assert await orch.store.create_process(tx, process, orch.executor.reserve(tx, process.ref)) == 0
    assert await outbox(orch) == [(orch.settings.WORKFLOWS_QUEUE, "new_workflow", process.pid, "ada")]
    assert (await statuses(orch, [process.pid]))["created"] == 1


@contextlib.asynccontextmanager
async def _notifications(orch: Orchestrator) -> AsyncIterator[asyncio.Queue[tuple[str, str]]]:
    assert orch.location is not None
    conn = await asyncpg.connect(orch.location.dsn)
    received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for channel in (OUTBOX_CHANNEL, EVENTS_CHANNEL):
        await conn.add_listener(channel, lambda _c, _p, channel, payload: received.put_nowait((channel, payload)))
    try:
        yield received
    finally:
        await conn.close()


async def _channels_until_created(received: asyncio.Queue[tuple[str, str]], pid: UUID) -> set[str]:
    """The channels notified up to the batch that announces `pid` created (its outbox NOTIFY would be in it)."""
    channels: set[str] = set()
    async with asyncio.timeout(10):
        while True:
            channel, payload = await received.get()
            channels.add(channel)
            if channel == EVENTS_CHANNEL and json.loads(payload) == {"pid": str(pid), "status": "created"}:
                return channels


async def test_other_relays_are_notified_only_when_the_local_relay_is_not_publishing(api: Api) -> None:
    """A publishing relay is woken in-process: a NOTIFY would make every other relay run an empty drain."""
    orch = await api(BROKER_URL=BROKER_URL)
    relay = orch.executor.relay  # type: ignore[attr-defined]
    await wait_until(lambda: _async(relay.publishing), 10, "the relay to run")
    async with _notifications(orch) as received:
        pid = await services.start_process("tf_simple", orchestrator=orch)
        assert await _channels_until_created(received, pid) == {EVENTS_CHANNEL}
        await wait_until(lambda: _empty_outbox(orch), 10, "the local relay to publish the dispatch")

    down = await api(BROKER_URL=DEAD_BROKER)
    relay = down.executor.relay  # type: ignore[attr-defined]
    await wait_until(lambda: _async(relay.publishing), 10, "the relay to run")
    await services.start_process("tf_simple", orchestrator=down)  # its relay finds the broker down
    await wait_until(lambda: _async(not relay.publishing), 10, "the relay to find the broker down")
    async with _notifications(down) as received:
        pid = await services.start_process("tf_simple", orchestrator=down)
        assert await _channels_until_created(received, pid) == {EVENTS_CHANNEL, OUTBOX_CHANNEL}


async def _async(value: bool) -> bool:
    return value


async def _empty_outbox(orch: Orchestrator) -> bool:
    return await outbox(orch) == []


async def test_a_waiting_dispatch_is_not_written_twice(api: Api) -> None:
    """While RabbitMQ is down the sweeper dispatches stuck processes again and again: one row each is enough."""
    orch = await api(BROKER_URL=DEAD_BROKER)
    pids = [await services.start_process("tf_simple", orchestrator=orch) for _ in range(3)]
    assert orch.sweeper is not None
    for _ in range(3):
        assert await orch.sweeper.dispatch_undispatched(older_than=0) == 3
    assert sorted(row[2] for row in await outbox(orch)) == sorted(pids)


@pytest.fixture
async def runtime(api: Api, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Awaitable[WorkerRuntime]]]:
    """`await runtime(threads=..., delivery_wait=...)`: a worker process's runtime, in this process."""
    monkeypatch.setenv("TF_SLOW_SECONDS", "2")
    started: list[WorkerRuntime] = []

    async def make(**kwargs: Any) -> WorkerRuntime:
        settings = (await api(BROKER_URL=DEAD_BROKER)).settings
        rt = WorkerRuntime(settings, queues=[settings.WORKFLOWS_QUEUE], **kwargs)
        rt.start()
        started.append(rt)
        await wait_until(lambda: _ready(rt), 10, "the runtime to open")
        return rt

    yield make
    for rt in started:
        await rt.close()


async def _ready(rt: WorkerRuntime) -> bool:
    return rt.orch is not None and rt.runner is not None and rt._ready.is_set()


async def test_deliveries_claim_refuse_hand_back_and_drain(api: Api, runtime: Any) -> None:
    orch = await api(BROKER_URL=DEAD_BROKER)
    rt: WorkerRuntime = await runtime(threads=1, delivery_wait=0.5)
    first, second = [await services.start_process("tf_slow", user="ada", orchestrator=orch) for _ in range(2)]
    await orch.store.pool.execute("DELETE FROM outbox")

    await rt.deliver("new", str(first), "ada")  # claims, starts the run, returns (→ ack)
    assert (await statuses(orch, [first]))["running"] == 1
    await rt.deliver("new", str(first), "ada")  # a duplicate: refused
    await rt.deliver("resume", str(first), "ada")  # stale: refused
    await rt.deliver("new", "not-a-uuid", "ada")  # dropped
    assert rt.running == 1

    # The only slot is busy: after the delivery wait the dispatch goes back through the outbox.
    await rt.deliver("new", str(second), "ada")
    assert await outbox(orch) == [(orch.settings.WORKFLOWS_QUEUE, "new_workflow", second, "ada")]
    assert (await statuses(orch, [second]))["created"] == 1

    # SIGTERM: the run finishes its current step, then yields `resumed` with a resume dispatch.
    assert await rt.drain(timeout=10)
    assert (await statuses(orch, [first]))["resumed"] == 1
    assert (orch.settings.WORKFLOWS_QUEUE, "resume_workflow", first, "ada") in await outbox(orch)
    steps = await orch.store.pool.fetch("SELECT name FROM process_steps WHERE pid = $1 ORDER BY seq", first)
    assert [r["name"] for r in steps] == ["Start", "Slow"]
    # Deliveries while draining are handed back, not run.
    await orch.store.pool.execute("DELETE FROM outbox")
    await rt.deliver("resume", str(first), "ada")
    assert await outbox(orch) == [(orch.settings.WORKFLOWS_QUEUE, "resume_workflow", first, "ada")]
    assert (await statuses(orch, [first]))["resumed"] == 1


async def test_runtime_waits_for_a_slot_then_runs(api: Api, runtime: Any) -> None:
    orch = await api(BROKER_URL=DEAD_BROKER)
    rt: WorkerRuntime = await runtime(threads=1, delivery_wait=30)
    pids = [await services.start_process("tf_slow", orchestrator=orch) for _ in range(2)]
    # Both deliveries at once: the second waits for the first run's slot (its message stays unacked meanwhile).
    await asyncio.gather(*(rt.deliver("new", str(pid), "SYSTEM") for pid in pids))

    async def both_completed() -> bool:
        return (await statuses(orch, pids))["completed"] == 2

    await wait_until(both_completed, 15, "both processes to complete one after the other")
    tokens = await orch.store.pool.fetch("SELECT fencing_token FROM processes WHERE pid = ANY($1::uuid[])", pids)
    assert [r["fencing_token"] for r in tokens] == [1, 1]
