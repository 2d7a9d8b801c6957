"""End to end: a real Celery 5.7 client set up like orchestrator-core's API, processes written the way its API
writes them, the shim, and a real `dramatiq orchestrator.actors` worker; every process must reach the status it
would reach under orchestrator-core.

One database and one worker serve the whole module (a worker is bound to its database at start-up); each test
runs its own shim. orchestrator-core's producer routes CREATE-target workflows to a Celery queue `create`
(CELERY_TARGET_QUEUES), our side to its own `<prefix>_create` Dramatiq queue (TARGET_QUEUES).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from shim_support import (
    CORE_SCHEMA,
    LAYOUTS,
    CoreClient,
    ShimFactory,
    create_process,
    dramatiq_worker,
    make_settings,
    our_queues,
    producer_pool,
    resume_process,
    status_of,
    wait_status,
    worker_environment,
)
from support.amqp import delete_queues
from support.database import scratch_database
from support.processes import REPO_DIR
from support.urls import BROKER_URL, unique

from orchestrator.settings import AppSettings

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    settings: AppSettings
    pool: asyncpg.Pool
    worker_log: Path

    def layout(self, layout: str) -> AppSettings:
        """The shim's settings for one of orchestrator-core's layouts, plus its target queue."""
        queues = [*dict.fromkeys(LAYOUTS[layout].values()), "create"]
        return self.settings.model_copy(update={"CELERY_QUEUES": queues})


@pytest.fixture(scope="module")
async def stack(template_db: str, celery_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    prefix = unique("t_shim")
    log = tmp_path_factory.mktemp("celery_shim") / "worker.log"
    try:
        async with scratch_database("orch_shim", template_db) as dsn:
            settings = make_settings(dsn, celery_url, prefix, TARGET_QUEUES={"CREATE": f"{prefix}_create"})
            async with producer_pool(settings) as pool, dramatiq_worker(settings, log):
                yield Stack(settings, pool, log)
    finally:
        await delete_queues(BROKER_URL, our_queues(prefix))


async def ended(
    stack: Stack, client: CoreClient, results: Sequence[Any], pids: Sequence[UUID], expected: Sequence[str]
) -> None:
    """With results, `.get()` is the process id and the run has ended by then; without, wait for the status."""
    for result, pid, status in zip(results, pids, expected, strict=True):
        if client.testing:
            assert await client.get(result, timeout=20) == str(pid)
            assert await status_of(stack.pool, pid) == status, stack.worker_log.read_text()[-3000:]
        else:
            assert await wait_status(stack.pool, pid, status, timeout=20) == status, stack.worker_log.read_text()[
                -3000:
            ]


@pytest.mark.parametrize("testing", [True, False], ids=["results", "ignore_result"])
@pytest.mark.parametrize("protocol", [2, 1], ids=["p2", "p1"])
@pytest.mark.parametrize("layout", ["4q", "2q"])
async def test_the_four_messages_run_processes_as_orchestrator_core_would(
    stack: Stack,
    shim_factory: ShimFactory,
    core_client: Callable[..., CoreClient],
    layout: str,
    protocol: int,
    testing: bool,
) -> None:
    client = core_client(layout=layout, protocol=protocol, testing=testing)
    pool = stack.pool
    simple = await create_process(pool, "tf_simple")
    task = await create_process(pool, "tf_slow_task")
    asks = await create_process(pool, "tf_input", {"size": 3})
    failing = await create_process(pool, "tf_task_api")
    async with shim_factory(stack.layout(layout)):
        results = [
            await client.apply("tasks.new_workflow", (simple, "alice"), queue="create"),
            await client.apply("tasks.new_task", (task, "alice")),
            await client.apply("tasks.new_workflow", (asks, "alice")),
            await client.apply("tasks.new_task", (failing, "alice")),
        ]
        await ended(
            stack,
            client,
            results,
            [simple, task, asks, failing],
            ["completed", "completed", "suspended", "api_unavailable"],
        )

        await resume_process(pool, asks, {"name": "Ada", "count": 2})
        await resume_process(pool, failing)
        results = [
            await client.apply("tasks.resume_workflow", (asks, "bob")),
            await client.apply("tasks.resume_task", (failing, "bob")),
        ]
        await ended(stack, client, results, [asks, failing], ["completed", "api_unavailable"])

    assert await steps_of(pool, asks) == [
        ("Start", "alice"),
        ("Sync step", "alice"),
        ("Ask name", "alice", "suspend"),
        ("Ask name", "bob"),
        ("Use name", "bob"),
        ("Done", "bob"),
    ]
    # The resume ran the failed step again (a new row: another user), as orchestrator-core's retry does.
    assert await steps_of(pool, failing) == [
        ("Start", "alice"),
        ("Api down", "alice", "failed"),
        ("Api down", "bob", "failed"),
    ]
    greeting = await pool.fetchval(
        "SELECT state->>'greeting' FROM process_steps WHERE pid = $1 AND name = 'Use name'", asks
    )
    assert greeting == "hello Ada x2 size 3"


async def steps_of(pool: asyncpg.Pool, pid: UUID) -> list[tuple[str, ...]]:
    """(name, created_by) of each step row, plus its status unless it succeeded."""
    rows = await pool.fetch("SELECT name, created_by, status FROM process_steps WHERE pid = $1 ORDER BY seq", pid)
    return [
        (r["name"], r["created_by"]) + (() if r["status"] in ("success", "complete") else (r["status"],)) for r in rows
    ]


async def test_many_waiting_clients_each_get_their_process_id(
    stack: Stack, shim_factory: ShimFactory, core_client: Callable[..., CoreClient]
) -> None:
    """Replies and new messages interleave: each reply must wait for its own process's run."""
    pids = [await create_process(stack.pool, "tf_simple") for _ in range(40)]
    client = core_client(testing=True)
    async with shim_factory(stack.layout("4q"), recheck_interval=0.2):
        results = [await client.apply("tasks.new_workflow", (pid, "u"), queue="create") for pid in pids]
        assert [await client.get(result, timeout=30) for result in results] == [str(pid) for pid in pids]


async def test_process_a_killed_celery_worker_left_running_is_continued(stack: Stack) -> None:
    """docs/celery-shim.md: orchestrator-core leaves such a process `running` without a lease; one UPDATE hands
    it to our sweepers, and a worker continues it from its last logged step."""
    pid = await create_process(stack.pool, "tf_simple")
    state = dict(await stack.pool.fetchval("SELECT input_state FROM input_states WHERE pid = $1", pid))
    async with stack.pool.acquire() as conn, conn.transaction():
        for name, step_state in (("Start", state), ("Sync step", {**state, "sync": True})):
            await conn.execute(
                "INSERT INTO process_steps (pid, name, status, state, created_by) VALUES ($1, $2, 'success', $3, 'u')",
                pid,
                name,
                step_state,
            )
        await conn.execute("UPDATE processes SET last_status = 'running', last_step = 'Sync step' WHERE pid = $1", pid)

    await stack.pool.execute(
        "UPDATE processes SET lease_expires_at = now() WHERE last_status = 'running' AND lease_owner IS NULL"
    )
    assert await wait_status(stack.pool, pid, "completed") == "completed"
    assert await steps_of(stack.pool, pid) == [
        ("Start", "u"),
        ("Sync step", "u"),
        ("Async step", "producer"),
        ("Done", "producer"),
    ]


async def test_unknown_workflow_key_fails_the_process_not_the_shim(
    stack: Stack, shim_factory: ShimFactory, core_client: Callable[..., CoreClient]
) -> None:
    await stack.pool.execute(
        "INSERT INTO workflows (name, target, description) VALUES ('core_only', 'SYSTEM', '') ON CONFLICT DO NOTHING"
    )
    pid = await create_process(stack.pool, "core_only")
    client = core_client(testing=True)
    async with shim_factory(stack.layout("4q")) as shim:
        assert await client.get(await client.apply("tasks.new_workflow", (pid, "u")), timeout=20) == str(pid)
        assert shim.dispatched == 1
    row = await stack.pool.fetchrow("SELECT last_status, failed_reason FROM processes WHERE pid = $1", pid)
    assert row["last_status"] == "failed"
    assert "'core_only' is not registered" in row["failed_reason"]


async def test_orchestrator_celery_shim_command(
    stack: Stack, celery_url: str, core_client: Callable[..., CoreClient], tmp_path: Path
) -> None:
    """The real command: uvloop, settings from the environment, a reply, and a clean exit on SIGTERM."""
    settings = stack.layout("2q")
    env = {
        **worker_environment(settings),
        "CELERY_BROKER_URL": celery_url,
        "CELERY_QUEUES": ",".join(settings.CELERY_QUEUES),
        "LOG_FORMAT": "console",
    }
    log = tmp_path / "shim.log"
    with log.open("wb") as out:
        shim = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "celery-shim"],
            env=env,
            cwd=REPO_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        pid = await create_process(stack.pool, "tf_simple")
        client = core_client(layout="2q", protocol=2, testing=True)
        result = await client.apply("tasks.new_workflow", (pid, "u"), queue="create")
        assert await client.get(result, timeout=30) == str(pid), log.read_text()
        assert await status_of(stack.pool, pid) == "completed"
        shim.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(shim.wait, 15) == 0, log.read_text()
    finally:
        if shim.poll() is None:
            shim.kill()
            shim.wait()
    assert "celery shim stopped" in log.read_text()


async def test_switch_on_a_database_orchestrator_core_created(
    celery_url: str, shim_factory: ShimFactory, core_client: Callable[..., CoreClient], tmp_path: Path
) -> None:
    """The migration step of docs/celery-shim.md: `orchestrator db upgrade` on orchestrator-core's tables, with
    rows it wrote, then our worker runs what its producer sends."""
    prefix = unique("t_shim")
    async with scratch_database("orch_shim") as dsn, asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
        await pool.execute(CORE_SCHEMA)
        await pool.execute("INSERT INTO workflows (name, target, description) VALUES ('tf_simple', 'CREATE', 'Simple')")
        before = await create_process(pool, "tf_simple")  # ran under orchestrator-core before the switch
        await pool.execute("UPDATE processes SET last_status = 'completed' WHERE pid = $1", before)
        await pool.execute(
            "INSERT INTO process_steps (pid, name, status, state) VALUES ($1, 'Done', 'complete', '{}')", before
        )

        settings = make_settings(dsn, celery_url, prefix)
        upgrade = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "orchestrator.cli", "db", "upgrade"),
            env=worker_environment(settings),
            cwd=REPO_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output, _ = await upgrade.communicate()
        assert upgrade.returncode == 0, output.decode()

        pid = await create_process(pool, "tf_simple")
        client = core_client(testing=True)
        try:
            async with dramatiq_worker(settings, tmp_path / "worker.log"), shim_factory(settings):
                result = await client.apply("tasks.new_workflow", (pid, "u"))
                assert await client.get(result, timeout=20) == str(pid)
        finally:
            await delete_queues(BROKER_URL, our_queues(prefix))
        assert await status_of(pool, pid) == "completed"
        assert await steps_of(pool, before) == [("Done", None)]
