"""Fixtures of the Celery shim tests: a private vhost for the Celery side, the shim in-process, Dramatiq workers.

The Celery side gets its own vhost because orchestrator-core's queue names are fixed (`new_tasks`, `tasks`, ...)
and the RabbitMQ is shared; our Dramatiq side uses uuid-suffixed queues on the default vhost. Both are removed
afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import asyncpg
import pytest
from shim_support import (
    CoreClient,
    ShimFactory,
    make_settings,
    our_queues,
    producer_pool,
    rabbitmqctl,
    register_orchestrator_json,
    unregister_orchestrator_json,
)
from support.amqp import delete_queues
from support.urls import BROKER_URL, unique, vhost_url

from orchestrator.celery_shim import CeleryShim
from orchestrator.persistence import database
from orchestrator.settings import AppSettings


@pytest.fixture(scope="session")
def celery_url() -> Iterator[str]:
    """The Celery side's broker URL: a vhost of its own on the test RabbitMQ."""
    name = unique("t_shim_vhost")
    user = (aio_pika.connection.make_url(BROKER_URL).user) or "guest"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield vhost_url(name)
    finally:
        rabbitmqctl("delete_vhost", name)


@pytest.fixture
def orchestrator_json() -> Iterator[None]:
    """orchestrator-core's serializer, in kombu's process-wide registry for this test's clients only."""
    register_orchestrator_json()
    yield
    unregister_orchestrator_json()


@pytest.fixture
async def core_client(celery_url: str, orchestrator_json: None) -> AsyncIterator[Callable[..., CoreClient]]:
    """Factory: `core_client(layout="4q", protocol=2, testing=True)`; closed after the test."""
    clients: list[CoreClient] = []

    def make(*, layout: str = "4q", protocol: int = 2, testing: bool = True) -> CoreClient:
        client = CoreClient(celery_url, layout=layout, protocol=protocol, testing=testing)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def shim_factory(celery_url: str) -> AsyncIterator[ShimFactory]:
    """`async with shim_factory(settings) as shim:` runs a CeleryShim in this event loop, with its own pool and
    dead-letter queue; the Celery-side queues are deleted after the test (our side's belong to the settings)."""
    cleanup: list[str] = []

    @asynccontextmanager
    async def run(settings: AppSettings, **options: Any) -> AsyncIterator[CeleryShim]:
        options.setdefault("dead_letter_queue", unique("t_shim_dead"))
        options.setdefault("recheck_interval", 0.5)
        cleanup.extend([*settings.CELERY_QUEUES, options["dead_letter_queue"]])
        assert settings.DATABASE_URI is not None
        pool = await database.create_pool(settings.DATABASE_URI, size=settings.DB_POOL_SIZE)
        try:
            async with CeleryShim(settings, pool, **options) as shim:
                yield shim
        finally:
            await pool.close()

    yield run
    await delete_queues(celery_url, list(dict.fromkeys(cleanup)))


@pytest.fixture
async def shim_settings(database_uri: str, celery_url: str) -> AsyncIterator[AppSettings]:
    """Settings of a shim on the test's database: 4-queue layout, uuid-suffixed Dramatiq queues (deleted after)."""
    prefix = unique("t_shim")
    yield make_settings(database_uri, celery_url, prefix)
    await delete_queues(BROKER_URL, our_queues(prefix))


@pytest.fixture
async def producer(shim_settings: AppSettings) -> AsyncIterator[asyncpg.Pool]:
    async with producer_pool(shim_settings) as pool:
        yield pool
