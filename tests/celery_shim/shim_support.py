"""Helpers for the Celery shim tests: an orchestrator-core-style Celery client and producer, RabbitMQ plumbing,
and `dramatiq orchestrator.actors` workers (what every test directory shares is in `support`).

The RabbitMQ on 127.0.0.1 is shared with other engineers' test runs: the Celery side lives in a vhost of its
own (orchestrator-core's fixed queue names stay private to it), our Dramatiq side uses uuid-suffixed queues.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import aio_pika
import aiormq
import asyncpg
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from kombu.serialization import register_json, registry
from support.amqp import dramatiq_queues
from support.celery_thread import CeleryOnOneThread
from support.processes import dramatiq_command, subprocess_env
from support.urls import BROKER_URL
from support.waiting import wait_for

from orchestrator.celery_shim import CeleryShim
from orchestrator.runtime.orchestrator import Orchestrator
from orchestrator.settings import AppSettings, load_settings

VECTORS = Path(__file__).resolve().parents[1] / "wire_vectors"

ShimFactory = Callable[..., AbstractAsyncContextManager[CeleryShim]]

NAMES = ("tasks.new_task", "tasks.new_workflow", "tasks.resume_task", "tasks.resume_workflow")
LAYOUTS: dict[str, dict[str, str]] = {
    # orchestrator-core since 1.0.1 (initialise_celery's task_routes)
    "4q": {
        "tasks.new_task": "new_tasks",
        "tasks.new_workflow": "new_workflows",
        "tasks.resume_task": "resume_tasks",
        "tasks.resume_workflow": "resume_workflows",
    },
    # the two-queue layout of its scaling documentation
    "2q": {
        "tasks.new_task": "tasks",
        "tasks.new_workflow": "workflows",
        "tasks.resume_task": "tasks",
        "tasks.resume_workflow": "workflows",
    },
}


# --------------------------------------------------------------------------------------------------- RabbitMQ


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=30)


async def drain(connection: AbstractConnection, queue: str) -> list[AbstractIncomingMessage]:
    """Take every message waiting in `queue`; none if it does not exist yet (its publisher declares it)."""
    found: list[AbstractIncomingMessage] = []
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        while (message := await declared.get(no_ack=True, fail=False)) is not None:
            found.append(message)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return found
    finally:
        if not channel.is_closed:
            await channel.close()
    return found


async def wait_messages(
    connection: AbstractConnection, queue: str, count: int, timeout: float = 15.0
) -> list[AbstractIncomingMessage]:
    found: list[AbstractIncomingMessage] = []

    async def enough() -> bool:
        found.extend(await drain(connection, queue))
        return len(found) >= count

    assert await wait_for(enough, timeout), f"{len(found)} of {count} messages on {queue}"
    return found


_PLACEHOLDER = re.compile(r"11110000-?0000-?4000-?8000-?00000000000\d")


async def replay(channel: AbstractChannel, name: str, pid: UUID | None = None, *, queue: str | None = None) -> str:
    """Publish a captured message as captured, its placeholder process id replaced by `pid`; return its id."""
    data = json.loads((VECTORS / f"{name}.json").read_text())
    body: str = data["body_text"]
    if pid is not None:
        body = _PLACEHOLDER.sub(lambda m: str(pid) if "-" in m.group() else pid.hex, body)
    props = data["properties"]
    message = aio_pika.Message(
        body.encode(),
        headers=data.get("headers"),
        content_type=props["content_type"],
        content_encoding=props["content_encoding"],
        delivery_mode=props["delivery_mode"],
        priority=props["priority"],
        correlation_id=props["correlation_id"],
        reply_to=props["reply_to"],
    )
    await channel.default_exchange.publish(message, routing_key=queue or data["routing_key"])
    return str(props["correlation_id"] or data["case"])


# --------------------------------------------------------------------------------------------------- producer


async def create_process(
    conn: asyncpg.Pool, workflow_key: str, form: dict[str, Any] | None = None, *, user: str = "producer"
) -> UUID:
    """What orchestrator-core's `create_process` writes: a `created` process and its `initial_state` input.

    The workflow row must exist (our workers upsert it from their code at start-up, so do the test fixtures).
    """
    wf = await conn.fetchrow("SELECT workflow_id, target, is_task FROM workflows WHERE name = $1", workflow_key)
    assert wf is not None, f"no workflow row for {workflow_key}"
    pid = uuid.uuid4()
    initial = {"process_id": str(pid), "reporter": user, "workflow_name": workflow_key, "workflow_target": wf["target"]}
    state = orjson.dumps({**(form or {}), **initial}).decode()
    async with conn.acquire() as c, c.transaction():
        await c.execute(
            """INSERT INTO processes (pid, workflow_id, last_status, created_by, is_task, assignee)
               VALUES ($1, $2, 'created', $3, $4, 'SYSTEM')""",
            pid,
            wf["workflow_id"],
            user,
            wf["is_task"],
        )
        await c.execute(
            "INSERT INTO input_states (pid, input_state, input_type) VALUES ($1, $2::text::jsonb, 'initial_state')",
            pid,
            state,
        )
    return pid


async def resume_process(conn: asyncpg.Pool, pid: UUID, user_input: dict[str, Any] | None = None) -> None:
    """What orchestrator-core's Celery resume writes: the `user_input` row, then `resumed` under a row lock."""
    async with conn.acquire() as c, c.transaction():
        status = await c.fetchval("SELECT last_status FROM processes WHERE pid = $1 FOR UPDATE", pid)
        assert status in ("suspended", "failed", "waiting", "api_unavailable", "inconsistent_data", "resumed")
        await c.execute(
            "INSERT INTO input_states (pid, input_state, input_type) VALUES ($1, $2::text::jsonb, 'user_input')",
            pid,
            orjson.dumps(user_input or {}).decode(),
        )
        await c.execute("UPDATE processes SET last_status = 'resumed', last_modified_at = now() WHERE pid = $1", pid)


async def status_of(pool: asyncpg.Pool, pid: UUID) -> str | None:
    value: str | None = await pool.fetchval("SELECT last_status FROM processes WHERE pid = $1", pid)
    return value


async def wait_status(pool: asyncpg.Pool, pid: UUID, wanted: str, timeout: float = 15.0) -> str | None:
    async def reached() -> bool:
        return await status_of(pool, pid) == wanted

    await wait_for(reached, timeout, interval=0.05)
    return await status_of(pool, pid)


# --------------------------------------------------------------------------------------------------- client


def orchestrator_json_dumps(obj: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def orchestrator_json_loads(text: str | bytes) -> Any:
    return orjson.loads(text)


def register_orchestrator_json() -> None:
    """What orchestrator-core's `initialise_celery` registers; it replaces kombu's decoder for application/json."""
    registry.register(
        "orchestrator-json", orchestrator_json_dumps, orchestrator_json_loads, "application/json", "utf-8"
    )


def unregister_orchestrator_json() -> None:
    registry.unregister("orchestrator-json")
    register_json()  # unregistering dropped the application/json decoder; give kombu its own back


class CoreClient(CeleryOnOneThread):
    """A real Celery 5.7 client set up like orchestrator-core's API (`initialise_celery` + the documented conf).

    `testing=True` is orchestrator-core's TESTING mode: results over rpc:// and `AsyncResult.get()`; otherwise
    `task_ignore_result=True` and no backend, as in production. Blocking calls run on ONE dedicated thread.
    """

    def __init__(self, url: str, *, layout: str, protocol: int, testing: bool) -> None:
        from celery import Celery  # tests only: the product never imports celery

        self.testing = testing
        super().__init__(
            Celery(
                f"core-{uuid.uuid4().hex[:8]}", broker=url, backend="rpc://" if testing else None, set_as_current=False
            ),
            "celery-core-client",
        )
        self.app.conf.update(
            task_protocol=protocol,
            task_ignore_result=not testing,
            result_expires=3600,
            worker_prefetch_multiplier=1,
            worker_send_task_event=True,
            task_send_sent_event=True,
            task_routes={name: {"queue": queue} for name, queue in LAYOUTS[layout].items()},
            broker_connection_retry=False,
        )
        for name in NAMES:
            self.app.task(name=name, serializer="orchestrator-json")(_never_run_here)

    async def apply(
        self, name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """`signature(name).apply_async(...)` as orchestrator-core sends; returns the AsyncResult."""
        return await self.run(lambda: self.app.signature(name).apply_async(tuple(args), kwargs or {}, **options))

    async def get(self, result: Any, timeout: float = 15.0) -> Any:
        return await self.run(result.get, timeout=timeout)


def _never_run_here(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the producer only sends; workers run")


# --------------------------------------------------------------------------------------------------- schema

CORE_SCHEMA = """
CREATE TABLE workflows (
    workflow_id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name varchar(255) NOT NULL UNIQUE,
    target varchar(255) NOT NULL, description text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz, is_task boolean NOT NULL DEFAULT false
);
CREATE TABLE processes (
    pid uuid PRIMARY KEY, workflow_id uuid NOT NULL REFERENCES workflows (workflow_id),
    assignee varchar(50) NOT NULL DEFAULT 'SYSTEM', last_status varchar(50) NOT NULL, last_step varchar(255),
    started_at timestamptz NOT NULL DEFAULT now(), last_modified_at timestamptz NOT NULL DEFAULT now(),
    failed_reason text, traceback text, created_by varchar(255), is_task boolean NOT NULL DEFAULT false, note text
);
CREATE TABLE process_steps (
    stepid uuid PRIMARY KEY DEFAULT gen_random_uuid(), pid uuid NOT NULL REFERENCES processes (pid) ON DELETE CASCADE,
    name varchar NOT NULL, status varchar(50) NOT NULL, state jsonb NOT NULL, created_by varchar(255),
    started_at timestamptz NOT NULL DEFAULT now(), completed_at timestamptz NOT NULL DEFAULT now(),
    commit_hash varchar(40)
);
CREATE TYPE inputtype AS ENUM ('initial_state', 'user_input');
CREATE TABLE input_states (
    input_state_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    pid uuid NOT NULL REFERENCES processes (pid) ON DELETE CASCADE, input_state jsonb NOT NULL,
    input_time timestamptz NOT NULL DEFAULT now(), input_type inputtype NOT NULL
);
CREATE TABLE engine_settings (global_lock boolean PRIMARY KEY, running_processes integer NOT NULL DEFAULT 0);
INSERT INTO engine_settings VALUES (false, 0);
"""
"""The execution tables of a database orchestrator-core created (its models, reference section 3.1): ours
without the columns our engine adds."""


# --------------------------------------------------------------------------------------------------- stack


def make_settings(database_uri: str, celery_url: str, prefix: str, **overrides: Any) -> AppSettings:
    values: dict[str, Any] = {
        "DATABASE_URI": database_uri,
        "MIGRATE_ON_START": False,
        "WORKFLOW_MODULES": ["testflows"],
        "DB_POOL_SIZE": 4,
        "BROKER_URL": BROKER_URL,
        "CELERY_BROKER_URL": celery_url,
        "TASKS_QUEUE": f"{prefix}_tasks",
        "WORKFLOWS_QUEUE": f"{prefix}_workflows",
        "CELERY_QUEUES": list(dict.fromkeys(LAYOUTS["4q"].values())),
        "SHUTDOWN_TIMEOUT_SECONDS": 5.0,
        "SWEEP_INTERVAL_SECONDS": 0.5,  # the sweepers in our workers; REDISPATCH_AFTER_SECONDS stays 300
    }
    values.update(overrides)
    return load_settings(**values)


def our_queues(prefix: str) -> list[str]:
    """The Dramatiq queues `make_settings(..., prefix)` may use (with TARGET_QUEUES {"CREATE": prefix_create})."""
    return dramatiq_queues(*(f"{prefix}_{name}" for name in ("tasks", "workflows", "create")))


@asynccontextmanager
async def producer_pool(settings: AppSettings) -> AsyncIterator[asyncpg.Pool]:
    """The database with our workflow rows (our workers upsert them at start-up), for writing processes."""
    async with Orchestrator(settings, run_processes=False) as orch:
        yield orch.store.pool


def worker_environment(settings: AppSettings) -> dict[str, str]:
    """The environment of a worker subprocess with these settings."""
    assert settings.DATABASE_URI is not None
    env = subprocess_env(settings.DATABASE_URI)
    env.update(
        BROKER_URL=settings.BROKER_URL,
        TASKS_QUEUE=settings.TASKS_QUEUE,
        WORKFLOWS_QUEUE=settings.WORKFLOWS_QUEUE,
        TARGET_QUEUES=json.dumps({target.value: queue for target, queue in settings.TARGET_QUEUES.items()}),
        SHUTDOWN_TIMEOUT_SECONDS=str(settings.SHUTDOWN_TIMEOUT_SECONDS),
        SWEEP_INTERVAL_SECONDS=str(settings.SWEEP_INTERVAL_SECONDS),
        DB_POOL_SIZE="4",
    )
    return env


@asynccontextmanager
async def dramatiq_worker(settings: AppSettings, log_path: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`dramatiq orchestrator.actors -p 1 -Q <our queues>`, ready (heartbeat in `workers`) when yielded."""
    queues = [settings.TASKS_QUEUE, settings.WORKFLOWS_QUEUE, *settings.TARGET_QUEUES.values()]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            dramatiq_command(*queues, processes=1, threads=8),
            env=worker_environment(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert settings.DATABASE_URI is not None
        conn = await asyncpg.connect(settings.DATABASE_URI)
        try:

            async def registered() -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"worker exited early:\n{log_path.read_text()[-3000:]}")
                return bool(await conn.fetchval("SELECT count(*) FROM workers WHERE kind = 'dramatiq'"))

            assert await wait_for(registered, timeout=30.0), f"worker not ready:\n{log_path.read_text()[-3000:]}"
        finally:
            await conn.close()
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 20)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
