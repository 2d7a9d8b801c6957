"""PostgreSQL faults under load, in both modes, through a TCP proxy between the programs and the server: the
connection cut for 2 s and for 30 s, and a server that refuses new connections, while processes run.

During the fault the API answers 503 problems with Retry-After (never a 500, never a hanging request); afterwards
every process completes with each step logged once, nothing is left `running` without a lease, the LISTEN
connections are back (a new process is seen completing through the event stream) and the pool has no connection
left checked out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID

import asyncpg
import httpx
import pytest
from dq_support import Queues, Worker, assert_each_step_once
from support.http import asgi_client
from support.tcpproxy import TcpProxy
from support.waiting import wait_until

from orchestrator import services
from orchestrator.http import create_app
from orchestrator.runtime.orchestrator import Orchestrator

PROCESSES = 12
SLOW_STEP_SECONDS = "0.3"
FAULTS = {"cut 2 s": ("cut", 2.0), "cut 30 s": ("cut", 30.0), "refuse new connections": ("refuse", 3.0)}


@pytest.fixture
async def db_proxy(database_uri: str) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(database_uri)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def direct(database_uri: str) -> AsyncIterator[asyncpg.Connection]:
    """The test's own connection, around the proxy: it sees the database through the fault."""
    conn = await asyncpg.connect(database_uri)
    yield conn
    await conn.close()


async def _answers_during_fault(client: httpx.AsyncClient, kind: str) -> None:
    """Reads and a start get an answer within their timeout: a 503 problem with Retry-After, or (when only new
    connections are refused, and a pooled one serves it) a success; never a 500."""
    for method, path, body in (("GET", "/api/processes", None), ("POST", "/api/processes/tf_simple", [{}])):
        response = await asyncio.wait_for(client.request(method, path, json=body), timeout=15)
        if kind == "cut" or response.status_code >= 500:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert int(response.headers["retry-after"]) > 0
        else:
            assert response.status_code in (200, 201), response.text


async def _ride_out(
    orch: Orchestrator, proxy: TcpProxy, direct: asyncpg.Connection, fault: str, pids: list[UUID], baseline: int
) -> None:
    kind, seconds = FAULTS[fault]

    async def running() -> bool:
        return bool(await direct.fetchval("SELECT count(*) FROM processes WHERE last_status = 'running'"))

    await wait_until(running, 20, "processes to be running")
    app = create_app(orchestrator=orch)
    async with asgi_client(app) as client:
        await (proxy.cut() if kind == "cut" else proxy.refuse_new())
        await _answers_during_fault(client, kind)
        await asyncio.sleep(seconds)  # the outage itself: its length is what the test is about
        await _answers_during_fault(client, kind)
        await proxy.reopen()

    async def all_ended() -> bool:
        rows = await direct.fetch("SELECT last_status FROM processes WHERE pid = ANY($1::uuid[])", pids)
        return all(r["last_status"] == "completed" for r in rows)

    await wait_until(all_ended, 90, "every process to complete after the fault")
    await assert_each_step_once(orch, pids)
    unleased = await direct.fetchval(
        "SELECT count(*) FROM processes WHERE last_status = 'running' AND lease_expires_at IS NULL"
    )
    assert unleased == 0
    # The event stream is back: a new process is seen completing through LISTEN, not by polling.
    after = await services.start_process("tf_simple", orchestrator=orch)
    process = await services.wait_for_process(after, until="completed", timeout=30, orchestrator=orch)
    assert process["last_status"] == "completed"

    async def no_more_checked_out() -> bool:
        return _checked_out(orch) <= baseline

    await wait_until(no_more_checked_out, 15, f"the pool to have every connection back (baseline {baseline})")


def _checked_out(orch: Orchestrator) -> int:
    """Connections out of the pool: the LISTEN connections hold one each for good, anything else is in use."""
    pool = orch.store.pool
    return pool.get_size() - pool.get_idle_size()


async def _quiet_checked_out(orch: Orchestrator) -> int:
    """The pool's checked-out count of an idle program (its listeners): the same three reads in a row."""
    reads: list[int] = []

    async def steady() -> bool:
        reads.append(_checked_out(orch))
        return len(reads) >= 3 and len(set(reads[-3:])) == 1

    await wait_until(steady, 15, "the pool to settle", interval=0.2)
    return reads[-1]


@pytest.mark.parametrize("fault", ["cut 2 s", "refuse new connections"])
async def test_threadpool_rides_out_a_database_fault(
    fault: str, db_proxy: TcpProxy, direct: asyncpg.Connection, api: Callable[..., Awaitable[Orchestrator]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("TF_SLOW_SECONDS", SLOW_STEP_SECONDS)
    orch = await api(EXECUTOR="threadpool", DATABASE_URI=db_proxy.url, LEASE_TTL_SECONDS=2.0)
    baseline = await _quiet_checked_out(orch)
    pids = [await services.start_process("tf_slow", orchestrator=orch) for _ in range(PROCESSES)]
    await _ride_out(orch, db_proxy, direct, fault, pids, baseline)


@pytest.mark.parametrize("fault", ["cut 2 s", "cut 30 s", "refuse new connections"])
async def test_distributed_rides_out_a_database_fault(
    fault: str, db_proxy: TcpProxy, direct: asyncpg.Connection, api: Callable[..., Awaitable[Orchestrator]],
    spawn: Callable[..., Worker], queues: Queues,
) -> None:  # fmt: skip
    orch = await api(DATABASE_URI=db_proxy.url)
    worker = spawn(queues.workflows, queues.tasks, processes=2, DATABASE_URI=db_proxy.url,
                   TF_SLOW_SECONDS=SLOW_STEP_SECONDS)  # fmt: skip
    await worker.wait_ready(orch, processes=2)
    baseline = await _quiet_checked_out(orch)
    pids = [await services.start_process("tf_slow", orchestrator=orch) for _ in range(PROCESSES)]
    await _ride_out(orch, db_proxy, direct, fault, pids, baseline)
    assert worker.proc.poll() is None, "the workers survive the fault"
